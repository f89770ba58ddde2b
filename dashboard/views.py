"""The business views: what each chart shows, as SQL over the star schema, with its filters.

Pure: a `Filters` value in, SQL text out. The SQL is the common subset of DuckDB and
PostgreSQL, so the same view reads either warehouse; the dashboard, `totes report` and the
tests all run exactly this SQL (a chart's numbers are this query's rows).

Which fact versions count: "now" is the current version of each business key that is not a
deletion; "as of T" is the version valid at T (`valid_from <= T < valid_to`; a snapshot-read
version, whose commit time is unknown, counts as valid from the start), unless it is a deletion.
Dimensions hold their latest values either way (DESIGN.md: dimensions hold the latest values).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

from warehouse_sync.schema import quote_literal
from change_events.errors import Kind, TotesError


@dataclass(frozen=True)
class Filters:
    start: date | None = None
    """First day included (the order's creation day; a payment's due day)."""
    end: date | None = None
    """Last day included."""
    currency: str | None = None
    """A currency code (GBP, EUR, ...), or every currency."""
    as_of: datetime | None = None
    """Read the warehouse as it was then (fact versions valid at that moment); None: now."""


class FilterError(TotesError, ValueError):
    """A filter value that cannot be read (said to the user in one sentence)."""

    kind = Kind.CONFIGURATION


def parse_filters(
    start: str | None = None, end: str | None = None, currency: str | None = None, as_of: str | None = None
) -> Filters:
    """Filters from text (a form, a command line); empty strings mean "no filter"."""

    def day(text: str | None, what: str) -> date | None:
        if not text:
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise FilterError(f"{what} {text!r} is not a date like 2024-11-15.") from None

    moment = None
    if as_of:
        try:
            moment = datetime.fromisoformat(as_of)
        except ValueError:
            raise FilterError(f"as of {as_of!r} is not a time like 2024-11-15T14:00:00.") from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    code = (currency or "").strip().upper() or None
    if code is not None and not (code.isalpha() and len(code) <= 8):
        raise FilterError(f"currency {currency!r} is not a currency code like GBP.")
    filters = Filters(day(start, "from"), day(end, "to"), code, moment)
    if filters.start and filters.end and filters.start > filters.end:
        raise FilterError("The first day of the range comes after its last day.")
    return filters


def version_predicate(alias: str, as_of: datetime | None) -> str:
    """The fact versions that count (see the module docstring)."""
    if as_of is None:
        return f"{alias}.is_current AND NOT {alias}.is_deleted"
    moment = f"CAST({quote_literal(as_of.astimezone(timezone.utc).isoformat())} AS TIMESTAMPTZ)"
    return (
        f"({alias}.valid_from IS NULL OR {alias}.valid_from <= {moment}) "
        f"AND ({alias}.valid_to IS NULL OR {alias}.valid_to > {moment}) AND NOT {alias}.is_deleted"
    )


def fact_where(alias: str, filters: Filters, day_column: str, currency_alias: str = "c") -> str:
    parts = [version_predicate(alias, filters.as_of)]
    if filters.start:
        parts.append(f"{alias}.{day_column} >= CAST({quote_literal(filters.start.isoformat())} AS DATE)")
    if filters.end:
        parts.append(f"{alias}.{day_column} <= CAST({quote_literal(filters.end.isoformat())} AS DATE)")
    if filters.currency:
        parts.append(f"{currency_alias}.currency_code = {quote_literal(filters.currency)}")
    return " AND ".join(parts)


def today_sql(filters: Filters) -> str:
    """The day payments are aged against: today, or the as-of day."""
    if filters.as_of is None:
        return "CURRENT_DATE"
    return f"CAST({quote_literal(filters.as_of.astimezone(timezone.utc).date().isoformat())} AS DATE)"


@dataclass(frozen=True)
class View:
    name: str
    title: str
    description: str
    sql: str
    """A template: `{where}` (and `{today}`) are filled in by `View.query`."""
    day_column: str = "created_date"

    def query(self, filters: Filters) -> str:
        return self.sql.format(where=fact_where("f", filters, self.day_column), today=today_sql(filters))


def _per_month_and_currency(fact: str, measures: str) -> str:
    """A view's SQL: `measures` over the `fact` rows of each month of their creation and currency."""
    return f"""
         SELECT d.year, d.month, c.currency_code, {measures}
         FROM {fact} f
         JOIN dim_date d ON d.date_id = f.created_date
         JOIN dim_currency c ON c.currency_id = f.currency_id
         WHERE {{where}}
         GROUP BY d.year, d.month, c.currency_code
         ORDER BY d.year, d.month, c.currency_code
         """  # nosec B608 # a template of the views' own names, its filters filled in by View.query


def _top_by_units(
    dimension: str,
    shown: tuple[str, ...],
    *,
    group: tuple[str, ...] | None = None,
    order: tuple[str, ...] | None = None,
    limit: int,
) -> str:
    """A view's SQL: the `limit` groups of sales orders by one `dimension` (a join) that sold the
    most units; grouped by `group` (the `shown` columns by default), ties ordered by `order`
    (the same)."""
    return f"""
         SELECT {", ".join(shown)}, count(*) AS orders, sum(f.units_sold) AS units
         FROM fact_sales_order f
         JOIN {dimension}
         JOIN dim_currency c ON c.currency_id = f.currency_id
         WHERE {{where}}
         GROUP BY {", ".join(group or shown)}
         ORDER BY units DESC, {", ".join(order or group or shown)}
         LIMIT {int(limit)}
         """  # nosec B608 # a template of the views' own names, its filters filled in by View.query


VIEWS: tuple[View, ...] = (
    View(
        "sales-by-month",
        "Sales by month and currency",
        "Orders, units and revenue per month of order creation, in each currency.",
        _per_month_and_currency(
            "fact_sales_order",
            "count(*) AS orders, sum(f.units_sold) AS units, sum(f.units_sold * f.unit_price) AS revenue",
        ),
    ),
    View(
        "top-designs",
        "Top designs",
        "The ten designs that sold the most units.",
        _top_by_units(
            "dim_design ds ON ds.design_id = f.design_id",
            ("ds.design_id", "ds.design_name"),
            order=("ds.design_name", "ds.design_id"),
            limit=10,
        ),
    ),
    View(
        "top-counterparties",
        "Top counterparties",
        "The ten counterparties that bought the most units.",
        _top_by_units(
            "dim_counterparty cp ON cp.counterparty_id = f.counterparty_id",
            ("cp.counterparty_legal_name",),
            group=("cp.counterparty_id", "cp.counterparty_legal_name"),
            order=("cp.counterparty_legal_name", "cp.counterparty_id"),
            limit=10,
        ),
    ),
    View(
        "purchase-volumes",
        "Purchase volumes by month",
        "Purchase orders, items and their cost per month of order creation, in each currency.",
        _per_month_and_currency(
            "fact_purchase_order",
            "count(*) AS purchase_orders, sum(f.item_quantity) AS items, sum(f.item_quantity * f.item_unit_price) AS cost",
        ),
    ),
    View(
        "payments-due",
        "Payments due and overdue",
        "Unpaid payments per counterparty and how long past their due day they are.",
        """
         SELECT cp.counterparty_legal_name, c.currency_code,
                CASE WHEN f.payment_date >= {today} THEN 'not due yet'
                     WHEN {today} - f.payment_date <= 30 THEN '1-30 days overdue'
                     WHEN {today} - f.payment_date <= 90 THEN '31-90 days overdue'
                     ELSE 'over 90 days overdue' END AS age,
                count(*) AS payments, sum(f.payment_amount) AS amount
         FROM fact_payment f
         JOIN dim_counterparty cp ON cp.counterparty_id = f.counterparty_id
         JOIN dim_currency c ON c.currency_id = f.currency_id
         WHERE {where} AND NOT f.paid
         GROUP BY cp.counterparty_legal_name, c.currency_code, 3
         ORDER BY amount DESC, cp.counterparty_legal_name, c.currency_code, age
         """,
        day_column="payment_date",
    ),
    View(
        "sales-by-location",
        "Sales by delivery location",
        "Units and orders per agreed delivery country and city.",
        _top_by_units(
            "dim_location l ON l.location_id = f.agreed_delivery_location_id", ("l.country", "l.city"), limit=15
        ),
    ),
)
BY_NAME = {view.name: view for view in VIEWS}

CURRENCIES_SQL = "SELECT currency_code FROM dim_currency ORDER BY currency_code"

ORDER_HISTORY_SQL = """
SELECT f.sales_record_id, f.sales_order_id, f.created_date, f.last_updated_date, f.last_updated_time,
       f.sales_staff_id, f.counterparty_id, f.units_sold, f.unit_price, f.currency_id, f.design_id,
       f.agreed_payment_date, f.agreed_delivery_date, f.agreed_delivery_location_id,
       f.is_current, f.is_deleted, f.source_op, f.source_lsn, f.valid_from, f.valid_to
FROM fact_sales_order f
WHERE f.sales_order_id = {order}
ORDER BY f.sales_record_id
"""

BUSIEST_ORDER_SQL = """
SELECT sales_order_id FROM fact_sales_order
GROUP BY sales_order_id ORDER BY count(*) DESC, sales_order_id LIMIT 1
"""

PROJECTED = (
    "sales_staff_id",
    "counterparty_id",
    "units_sold",
    "unit_price",
    "currency_id",
    "design_id",
    "agreed_payment_date",
    "agreed_delivery_date",
    "agreed_delivery_location_id",
)


def order_history_sql(order: int) -> str:
    return ORDER_HISTORY_SQL.format(order=int(order))


def mark_versions(rows: list[dict]) -> list[dict]:
    """Each version of one order with what changed against the one before, and `silent`:
    values changed while `last_updated` stayed the same (totesys does that; see
    ../shared/reference/totesys-schema.md §5.3)."""
    marked, previous = [], None
    for row in rows:
        changed = [] if previous is None else [c for c in PROJECTED if row.get(c) != previous.get(c)]
        silent = bool(
            previous is not None
            and changed
            and not row.get("is_deleted")
            and (row.get("last_updated_date"), row.get("last_updated_time"))
            == (previous.get("last_updated_date"), previous.get("last_updated_time"))
        )
        marked.append({**row, "changed": ", ".join(changed), "silent": silent})
        previous = row
    return marked
