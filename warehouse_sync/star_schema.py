"""The 11 star-schema tables of `shared/reference/totesys-schema.md` §3, each fact ending with lineage columns.

Same names, same column order, same types as §3. Lineage columns of every fact, in this order:

| column       | type          | meaning                                                      |
|--------------|---------------|--------------------------------------------------------------|
| is_current   | boolean       | the latest version of its business key                       |
| is_deleted   | boolean       | this version is the row's deletion (delete or truncate)      |
| source_op    | varchar       | the change event's op: r, c, u, d, t                         |
| source_lsn   | bigint        | the event's commit LSN                                       |
| source_seq   | bigint        | its ordinal in the source transaction                        |
| valid_from   | timestamptz NULL | the event's commit time (NULL for snapshot reads: unknown) |
| valid_to     | timestamptz NULL | when the next version took over (NULL while current)      |
"""

from __future__ import annotations

from warehouse_sync.table_model import Column, Index, Table, define_table, parse_column

DIM_DATE = define_table(
    "dim_date",
    "date_id",
    "date_id date",
    "year int",
    "month int",
    "day int",
    "day_of_week int",
    "day_name varchar",
    "month_name varchar",
    "quarter int",
)
DIM_STAFF = define_table(
    "dim_staff",
    "staff_id",
    "staff_id int",
    "first_name varchar",
    "last_name varchar",
    "department_name varchar",
    "location varchar",
    "email_address varchar",
)
DIM_LOCATION = define_table(
    "dim_location",
    "location_id",
    "location_id int",
    "address_line_1 varchar",
    "address_line_2 varchar null",
    "district varchar null",
    "city varchar",
    "postal_code varchar",
    "country varchar",
    "phone varchar",
)
DIM_DESIGN = define_table(
    "dim_design", "design_id", "design_id int", "design_name varchar", "file_location varchar", "file_name varchar"
)
DIM_CURRENCY = define_table(
    "dim_currency", "currency_id", "currency_id int", "currency_code varchar", "currency_name varchar"
)
DIM_COUNTERPARTY = define_table(
    "dim_counterparty",
    "counterparty_id",
    "counterparty_id int",
    "counterparty_legal_name varchar",
    "counterparty_legal_address_line_1 varchar",
    "counterparty_legal_address_line_2 varchar null",
    "counterparty_legal_district varchar null",
    "counterparty_legal_city varchar",
    "counterparty_legal_postal_code varchar",
    "counterparty_legal_country varchar",
    "counterparty_legal_phone_number varchar",
)
DIM_PAYMENT_TYPE = define_table(
    "dim_payment_type", "payment_type_id", "payment_type_id int", "payment_type_name varchar"
)
DIM_TRANSACTION = define_table(
    "dim_transaction",
    "transaction_id",
    "transaction_id int",
    "transaction_type varchar",
    "sales_order_id int null",
    "purchase_order_id int null",
)

LINEAGE = (
    parse_column("is_current boolean"),
    parse_column("is_deleted boolean"),
    parse_column("source_op varchar"),
    parse_column("source_lsn bigint"),
    parse_column("source_seq bigint"),
    parse_column("valid_from timestamptz null"),
    parse_column("valid_to timestamptz null"),
)
LINEAGE_NAMES = [c.name for c in LINEAGE]


def _date(name: str) -> Column:
    return Column(name, "date", references="dim_date")


def _ref(name: str, dim: str) -> Column:
    return Column(name, "int", references=dim)


def _fact_indexes(business_key: str) -> tuple[Index, ...]:
    return (Index("current_key", business_key, unique_current=True), Index(f"{business_key}_idx", business_key))


_STAMPS = (
    _date("created_date"),
    parse_column("created_time time"),
    _date("last_updated_date"),
    parse_column("last_updated_time time"),
)
"""When the source row was created and last updated: every fact's columns after its business key."""


def _fact(name: str, record_id: str, business_key: str, *columns: str | Column) -> Table:
    """A §3 fact: its record id, its business key, _STAMPS, `columns`, then LINEAGE."""
    return define_table(
        name,
        record_id,
        f"{record_id} serial",
        f"{business_key} int",
        *_STAMPS,
        *columns,
        *LINEAGE,
        business_key=business_key,
        indexes=_fact_indexes(business_key),
    )


FACT_SALES_ORDER = _fact(
    "fact_sales_order",
    "sales_record_id",
    "sales_order_id",
    _ref("sales_staff_id", "dim_staff"),
    _ref("counterparty_id", "dim_counterparty"),
    "units_sold int",
    "unit_price money",
    _ref("currency_id", "dim_currency"),
    _ref("design_id", "dim_design"),
    _date("agreed_payment_date"),
    _date("agreed_delivery_date"),
    _ref("agreed_delivery_location_id", "dim_location"),
)

FACT_PURCHASE_ORDER = _fact(
    "fact_purchase_order",
    "purchase_record_id",
    "purchase_order_id",
    _ref("staff_id", "dim_staff"),
    _ref("counterparty_id", "dim_counterparty"),
    "item_code varchar",
    "item_quantity int",
    "item_unit_price numeric",
    _ref("currency_id", "dim_currency"),
    _date("agreed_delivery_date"),
    _date("agreed_payment_date"),
    _ref("agreed_delivery_location_id", "dim_location"),
)

FACT_PAYMENT = _fact(
    "fact_payment",
    "payment_record_id",
    "payment_id",
    _ref("transaction_id", "dim_transaction"),
    _ref("counterparty_id", "dim_counterparty"),
    "payment_amount numeric",
    _ref("currency_id", "dim_currency"),
    _ref("payment_type_id", "dim_payment_type"),
    "paid boolean",
    _date("payment_date"),
)

DIMENSIONS = (
    DIM_DATE,
    DIM_STAFF,
    DIM_LOCATION,
    DIM_DESIGN,
    DIM_CURRENCY,
    DIM_COUNTERPARTY,
    DIM_PAYMENT_TYPE,
    DIM_TRANSACTION,
)
FACTS = (FACT_SALES_ORDER, FACT_PURCHASE_ORDER, FACT_PAYMENT)
WAREHOUSE_TABLES = DIMENSIONS + FACTS
BY_NAME = {t.name: t for t in WAREHOUSE_TABLES}


def projected_columns(fact: Table) -> list[str]:
    """A fact's §3 columns after its record id: what a new version must change to count."""
    return [n for n in fact.names[1:] if n not in LINEAGE_NAMES]


def references_to(dimension: str) -> list[tuple[Table, Column]]:
    """Every fact column that points at `dimension`."""
    return [(fact, column) for fact in FACTS for column in fact.foreign_keys if column.references == dimension]
