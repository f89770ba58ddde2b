"""The transformation rules of `totesys-schema.md` §4: source rows in, warehouse rows out.

Pure functions over polars frames; no database, no lake.

Dimensions hold the latest values:
- dim_staff = staff ⟕ department. department.location is nullable in the source but NOT
  NULL in §3: a missing location becomes '' (so does a department that no longer exists);
- dim_counterparty = counterparty ⟕ address on legal_address_id ('' where the address is
  unknown, NULL where the source allows NULL: address_line_2, district);
- dim_location = address; dim_design, dim_payment_type, dim_transaction = their table;
- a column the personal-data policy drops is null in the lake's mirror: in a dimension's NOT
  NULL text column it becomes '' (dim_staff.email_address, dim_location.phone, ...), as a
  missing department location does; masked and hashed values are values like any other;
- dim_currency names come from ISO 4217 (an unknown code is its own name);
- dim_date is a calendar: ISO day_of_week (1 = Monday), English names, quarter 1-4.

Facts (`fact_rows`) split timestamps into date and time (microseconds kept, so the source's
milliseconds are), cast text dates to DATE and rename per §3. A version of a source row
becomes a fact row only when its projection (or its deletedness) differs from the version
before it (`new_fact_rows`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from warehouse_sync import star_schema as star
from warehouse_sync.sync_tables import REJECTED
from warehouse_sync.table_model import Table, conform

ISO_4217_NAMES = {
    "GBP": "Pound Sterling",
    "USD": "US Dollar",
    "EUR": "Euro",
    "JPY": "Yen",
    "CHF": "Swiss Franc",
    "CAD": "Canadian Dollar",
    "AUD": "Australian Dollar",
    "NZD": "New Zealand Dollar",
    "CNY": "Yuan Renminbi",
    "SEK": "Swedish Krona",
    "NOK": "Norwegian Krone",
    "DKK": "Danish Krone",
    "PLN": "Zloty",
    "INR": "Indian Rupee",
}
CALENDAR_START = date(2022, 11, 1)
"""dim_date always covers this day (before the first totesys record) to a year after today."""
CALENDAR_AHEAD = timedelta(days=366)


# -- dimensions ------------------------------------------------------------------------------


def _required_text(frame: pl.DataFrame, table) -> pl.DataFrame:
    """NOT NULL text columns of `table` with '' for null (a column dropped by policy)."""
    names = [c.name for c in table.columns if not c.nullable and c.type == "varchar" and c.name in frame.columns]
    return frame.with_columns(pl.col(n).fill_null("") for n in names) if names else frame


def dim_location(address: pl.DataFrame) -> pl.DataFrame:
    return conform(
        _required_text(address.rename({"address_id": "location_id"}), star.DIM_LOCATION),
        star.DIM_LOCATION.polars_schema,
    )


def dim_design(design: pl.DataFrame) -> pl.DataFrame:
    return conform(design, star.DIM_DESIGN.polars_schema)


def dim_payment_type(payment_type: pl.DataFrame) -> pl.DataFrame:
    return conform(payment_type, star.DIM_PAYMENT_TYPE.polars_schema)


def dim_transaction(transaction: pl.DataFrame) -> pl.DataFrame:
    return conform(transaction, star.DIM_TRANSACTION.polars_schema)


def dim_currency(currency: pl.DataFrame) -> pl.DataFrame:
    code = pl.col("currency_code")
    name = code.replace_strict(ISO_4217_NAMES, default=code, return_dtype=pl.String)
    return conform(currency.with_columns(currency_name=name), star.DIM_CURRENCY.polars_schema)


def dim_staff(staff: pl.DataFrame, department: pl.DataFrame) -> pl.DataFrame:
    departments = department.select("department_id", "department_name", "location")
    joined = staff.join(departments, on="department_id", how="left")
    return conform(_required_text(joined, star.DIM_STAFF), star.DIM_STAFF.polars_schema)


def dim_counterparty(counterparty: pl.DataFrame, address: pl.DataFrame) -> pl.DataFrame:
    legal = address.select(
        pl.col("address_id").alias("legal_address_id"),
        pl.col("address_line_1").alias("counterparty_legal_address_line_1"),
        pl.col("address_line_2").alias("counterparty_legal_address_line_2"),
        pl.col("district").alias("counterparty_legal_district"),
        pl.col("city").alias("counterparty_legal_city"),
        pl.col("postal_code").alias("counterparty_legal_postal_code"),
        pl.col("country").alias("counterparty_legal_country"),
        pl.col("phone").alias("counterparty_legal_phone_number"),
    )
    required = [c.name for c in star.DIM_COUNTERPARTY.columns if not c.nullable]
    joined = counterparty.join(legal, on="legal_address_id", how="left")
    return conform(
        joined.with_columns(pl.col(c).fill_null("") for c in required[2:]), star.DIM_COUNTERPARTY.polars_schema
    )


def dim_date(days: pl.Series) -> pl.DataFrame:
    """Calendar rows for `days` (deduplicated, sorted)."""
    day = pl.col("date_id")
    frame = pl.DataFrame({"date_id": days.cast(pl.Date)}).drop_nulls().unique().sort("date_id")
    return conform(
        frame.with_columns(
            year=day.dt.year(),
            month=day.dt.month(),
            day=day.dt.day(),
            day_of_week=day.dt.weekday(),
            day_name=day.dt.strftime("%A"),
            month_name=day.dt.strftime("%B"),
            quarter=day.dt.quarter(),
        ),
        star.DIM_DATE.polars_schema,
    )


def calendar_days(referenced: pl.Series, today: date) -> pl.Series:
    """Every day from CALENDAR_START to a year after `today` (further if a fact needs it),
    plus any earlier day a fact references."""
    referenced = referenced.cast(pl.Date).drop_nulls()
    end = max(today + CALENDAR_AHEAD, referenced.max() or today)  # type: ignore[type-var]
    days = pl.date_range(CALENDAR_START, end, interval="1d", eager=True)
    return pl.concat([days, referenced.filter(referenced < CALENDAR_START)]).unique().sort()


@dataclass(frozen=True)
class DimensionSpec:
    """A dimension and the source rows it is built from: the rows of `sources[0]` are its rows
    (its keys, its deletions); a second source is joined in on `joined_on`, a column of the
    first, so a change there rebuilds every row that uses it."""

    table: Table
    sources: tuple[str, ...]
    build: Callable[..., pl.DataFrame]
    """The transform, given one frame per source in `sources` order."""
    joined_on: str | None = None

    @property
    def source(self) -> str:
        return self.sources[0]


DIMENSION_SPECS = (
    DimensionSpec(star.DIM_LOCATION, ("address",), dim_location),
    DimensionSpec(star.DIM_DESIGN, ("design",), dim_design),
    DimensionSpec(star.DIM_CURRENCY, ("currency",), dim_currency),
    DimensionSpec(star.DIM_PAYMENT_TYPE, ("payment_type",), dim_payment_type),
    DimensionSpec(star.DIM_TRANSACTION, ("transaction",), dim_transaction),
    DimensionSpec(star.DIM_STAFF, ("staff", "department"), dim_staff, joined_on="department_id"),
    DimensionSpec(star.DIM_COUNTERPARTY, ("counterparty", "address"), dim_counterparty, joined_on="legal_address_id"),
)
"""Every dimension but dim_date (a calendar, built from the days the facts reference)."""
DIMENSION_BY_NAME = {spec.table.name: spec for spec in DIMENSION_SPECS}

# -- facts -----------------------------------------------------------------------------------


def _date(column: str) -> pl.Expr:
    return pl.col(column).dt.date()


def _time(column: str) -> pl.Expr:
    return pl.col(column).dt.time()


def _text_date(column: str) -> pl.Expr:
    return pl.col(column).str.to_date("%Y-%m-%d")


def _timestamps() -> list[pl.Expr]:
    return [
        _date("created_at").alias("created_date"),
        _time("created_at").alias("created_time"),
        _date("last_updated").alias("last_updated_date"),
        _time("last_updated").alias("last_updated_time"),
    ]


@dataclass(frozen=True)
class FactSpec:
    table: Table
    source: str
    projection: Callable[[], list[pl.Expr]]

    @property
    def business_key(self) -> str:
        if not self.table.business_key:
            raise ValueError(f"{self.table.name} has no business key")
        return self.table.business_key


SOURCE_NAMES = {"sales_staff_id": "staff_id"}
"""Fact columns whose source column has another name (§3 renames sales_order.staff_id)."""


def projection_of(fact: Table) -> Callable[[], list[pl.Expr]]:
    """A fact's projection, read from its §3 columns after the record id: created_at and
    last_updated split into date and time, every other date cast from the source's text, the
    rest copied (under their SOURCE_NAMES)."""

    def projection() -> list[pl.Expr]:
        stamps = {expression.meta.output_name(): expression for expression in _timestamps()}
        expressions = []
        for name in star.projected_columns(fact):
            if name in stamps:
                expressions.append(stamps[name])
            elif fact.column(name).type == "date":
                expressions.append(_text_date(name).alias(name))
            elif name in SOURCE_NAMES:
                expressions.append(pl.col(SOURCE_NAMES[name]).alias(name))
            else:
                expressions.append(pl.col(name))
        return expressions

    return projection


FACT_SPECS = (
    FactSpec(star.FACT_SALES_ORDER, "sales_order", projection_of(star.FACT_SALES_ORDER)),
    FactSpec(star.FACT_PURCHASE_ORDER, "purchase_order", projection_of(star.FACT_PURCHASE_ORDER)),
    FactSpec(star.FACT_PAYMENT, "payment", projection_of(star.FACT_PAYMENT)),
)
FACT_BY_SOURCE = {spec.source: spec for spec in FACT_SPECS}


def fact_schema(spec: FactSpec) -> dict[str, pl.DataType]:
    """A fact's columns without its record id."""
    schema = spec.table.polars_schema
    return {name: schema[name] for name in spec.table.names[1:]}


_EXACT = pl.Decimal(38, 18)
"""Wide enough to compare a number kept as text with what its fact column would make of it."""


def unfit_versions(spec: FactSpec, versions: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`versions` whose fact row fits §3's types, and one REJECTED row per number that does
    not (out of range, or more decimals than its column keeps): those versions are set
    aside, never truncated or rounded (see `schema`)."""
    schema, key = fact_schema(spec), spec.business_key
    projected = versions.select(spec.projection())
    unfit = []
    for name in projected.columns:
        value, dtype, source_type = pl.col(name), schema[name], projected.schema[name]
        if not dtype.is_numeric() or source_type == dtype:
            continue
        if source_type == pl.String():  # a column the lake now keeps as text (lake.arrow_types)
            exact, back = value.cast(_EXACT, strict=False), value.cast(dtype, strict=False).cast(_EXACT)
        elif source_type.is_numeric():
            exact, back = value, value.cast(dtype, strict=False).cast(source_type)
        else:
            continue
        bad = value.is_not_null() & (back.is_null() | (back != exact))
        rows = versions.with_columns(projected[name].alias("_value")).filter(projected.select(bad).to_series())
        if rows.height:
            unfit.append(
                rows.select(
                    pl.lit(spec.source).alias("source_table"),
                    pl.col(key).cast(pl.String).alias("business_key"),
                    pl.col("_lsn").alias("source_lsn"),
                    pl.col("_seq").alias("source_seq"),
                    pl.lit(name).alias("source_column"),
                    pl.col("_value").cast(pl.String).alias("source_value"),
                    pl.lit(f"does not fit {spec.table.name}.{name} ({spec.table.column(name).type})").alias("reason"),
                )
            )
    if not unfit:
        return versions, pl.DataFrame(schema=REJECTED.polars_schema)
    rejected = pl.concat(unfit).with_columns(
        id=pl.concat_str("source_table", "source_lsn", "source_seq", "source_column", separator="/")
    )
    positions = rejected.select(_lsn="source_lsn", _seq="source_seq").unique()
    return versions.join(positions, on=["_lsn", "_seq"], how="anti"), conform(rejected, REJECTED.polars_schema)


def fact_rows(spec: FactSpec, versions: pl.DataFrame) -> pl.DataFrame:
    """Every version (see `replay`) projected to a fact row, lineage included; `is_current`
    and `valid_to` are placeholders that `new_fact_rows` decides."""
    lineage = [
        pl.lit(False).alias("is_current"),
        pl.col("_op").is_in(["d", "t"]).alias("is_deleted"),
        pl.col("_op").alias("source_op"),
        pl.col("_lsn").alias("source_lsn"),
        pl.col("_seq").alias("source_seq"),
        pl.col("_commit_ts").alias("valid_from"),
        pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("valid_to"),
    ]
    return conform(versions.select(spec.projection() + lineage), fact_schema(spec))


@dataclass
class FactChanges:
    inserts: pl.DataFrame
    """New fact rows (no record id), in (source_lsn, source_seq, business key) order."""
    closes: pl.DataFrame
    """record id + valid_to of current rows that stop being current."""


def new_fact_rows(spec: FactSpec, current: pl.DataFrame, versions: pl.DataFrame) -> FactChanges:
    """The rows to append for `versions` (fact rows of new events), given the warehouse's
    `current` rows of the same business keys (record id + fact columns).

    A version is appended when its projected columns or its `is_deleted` differ from the
    version just before it, and when it is the first version of its key and not a deletion;
    a delete or truncate of a row never seen appends nothing. The newest appended version of
    a key is current; every other one gets `valid_to` = the `valid_from` of the next one."""
    key, record_id = spec.business_key, spec.table.key
    compared = star.projected_columns(spec.table)[1:] + ["is_deleted"]
    rows = pl.concat(
        [
            current.select([record_id, *fact_schema(spec)]).with_columns(_origin=pl.lit(True)),
            versions.with_columns(pl.lit(None, dtype=pl.Int32).alias(record_id), _origin=pl.lit(False)).select(
                [record_id, *fact_schema(spec), "_origin"]
            ),
        ]
    ).sort([key, "source_lsn", "source_seq"])
    # Sorted by key, "the version before" is the row before when its key is the same: plain
    # shifts compared with the key's, no window per column (which cost a sort per column).
    first = pl.col(key).ne_missing(pl.col(key).shift(1)).fill_null(True)
    differs = pl.any_horizontal([~pl.col(c).eq_missing(pl.col(c).shift(1)) for c in compared])
    appended = ~pl.col("_origin") & pl.when(first).then(~pl.col("is_deleted")).otherwise(differs)
    last = pl.col(key).ne_missing(pl.col(key).shift(-1)).fill_null(True)
    timeline = rows.filter(pl.col("_origin") | appended).with_columns(
        is_current=last, valid_to=pl.when(last).then(None).otherwise(pl.col("valid_from").shift(-1))
    )
    inserts = (
        timeline.filter(~pl.col("_origin")).sort(["source_lsn", "source_seq", key]).select(list(fact_schema(spec)))
    )
    closes = timeline.filter(pl.col("_origin") & ~pl.col("is_current")).select(record_id, "valid_to")
    return FactChanges(inserts, closes)


def referenced_days(spec: FactSpec, rows: pl.DataFrame) -> pl.Series:
    """Every date the fact rows reference (their dim_date foreign keys)."""
    columns = [c.name for c in spec.table.foreign_keys if c.references == star.DIM_DATE.name]
    if rows.height == 0:
        return pl.Series("date_id", [], dtype=pl.Date)
    return pl.concat([rows[c] for c in columns]).alias("date_id")
