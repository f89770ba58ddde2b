"""The warehouse's tables, defined once and rendered as DDL for DuckDB and for PostgreSQL.

Why one file (~620 lines): every warehouse table and its DDL for both dialects are defined
once here, and the tables are most of its length.

Three kinds of table:

- the 11 star-schema tables of `shared/reference/totesys-schema.md` §3, same names, same
  column order, same types; each fact ends with lineage columns (below);
- `_src_<table>`: mirrors of the current state of the source tables, holding only the
  columns the transforms read, plus the `(_lsn, _seq)` of the event that made each row what
  it is. They serve the joins (a renamed department rebuilds its staff's rows), fill columns
  the WAL did not carry (unchanged TOAST) and know which rows a truncate removes;
- `_sync_checkpoint`: one row, the LSN up to which the change logs have been applied;
  `_sync_partial`: beside it, how far inside the next LSN a bulk load has gone, if it has.

Type choices:

| §3 type             | PostgreSQL    | DuckDB                                          |
|---------------------|---------------|-------------------------------------------------|
| int                 | integer       | INTEGER                                         |
| varchar             | varchar       | VARCHAR                                         |
| numeric(10,2)       | numeric(10,2) | DECIMAL(10,2)                                   |
| numeric             | numeric       | DECIMAL(18,2) (*)                               |
| SERIAL              | SERIAL        | INTEGER DEFAULT nextval('<table>_<column>_seq') |
| date, time, boolean | same          | same                                            |

(*) DuckDB has no unconstrained exact numeric (a bare DECIMAL is DECIMAL(18,3)). The source
columns behind `item_unit_price` and `payment_amount` are numeric(10,2), so DECIMAL(18,2)
holds every value exactly, with room for sums. `time` keeps microseconds on both engines
(the source's milliseconds survive).

Mirror columns follow the source: when the lake widens a column (the source's units_sold
became bigint, its unit_price numeric(14,4); see `lake.schemas`), `widened_mirror` gives the
mirror the lake's type and `alter_column_type` the ALTER for either engine, so the sync keeps
reading every value exactly. The star schema's types do not move: they are §3's. A value
that does not fit its §3 column (a units_sold of 5,000,000,000 in an `int`) is not
truncated, rounded or nulled; that version of the fact row is set aside in `_sync_rejected`
(source table, key, position, column, value, reason; see `transforms.unfit_versions`), the
row's previous version stays current, and the rest of the sync goes on. That is what a
warehouse loader does with a row its table cannot hold (Snowflake's and BigQuery's load
errors, Redshift's `stl_load_errors`): refuse the row visibly rather than change the
contract or the value.

Lineage columns of every fact, in this order:

| column       | type          | meaning                                                      |
|--------------|---------------|--------------------------------------------------------------|
| is_current   | boolean       | the latest version of its business key                       |
| is_deleted   | boolean       | this version is the row's deletion (delete or truncate)      |
| source_op    | varchar       | the change event's op: r, c, u, d, t                         |
| source_lsn   | bigint        | the event's commit LSN                                       |
| source_seq   | bigint        | its ordinal in the source transaction                        |
| valid_from   | timestamptz NULL | the event's commit time (NULL for snapshot reads: unknown) |
| valid_to     | timestamptz NULL | when the next version took over (NULL while current)      |

Every fact date column references dim_date, every id column its dimension. Both engines
enforce these foreign keys (DuckDB 2.0 accepts updates and upserts of referenced dimension
rows; it refuses only deleting them, as PostgreSQL does). PostgreSQL additionally gets a
partial unique index: at most one `is_current` row per business key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import polars as pl

POSTGRES = "postgresql"
DUCKDB = "duckdb"

# Logical type → (PostgreSQL, DuckDB, polars).
TYPES: dict[str, tuple[str, str, pl.DataType]] = {
    "int": ("integer", "INTEGER", pl.Int32()),
    "bigint": ("bigint", "BIGINT", pl.Int64()),
    "varchar": ("varchar", "VARCHAR", pl.String()),
    "date": ("date", "DATE", pl.Date()),
    "time": ("time", "TIME", pl.Time()),
    "boolean": ("boolean", "BOOLEAN", pl.Boolean()),
    "money": ("numeric(10,2)", "DECIMAL(10,2)", pl.Decimal(10, 2)),
    "numeric": ("numeric", "DECIMAL(18,2)", pl.Decimal(18, 2)),
    "timestamp": ("timestamp", "TIMESTAMP", pl.Datetime("us")),
    "timestamptz": ("timestamptz", "TIMESTAMPTZ", pl.Datetime("us", "UTC")),
    "serial": ("SERIAL", "INTEGER", pl.Int32()),
}
_DECIMAL = re.compile(r"decimal\((\d+),(\d+)\)")


def logical_type(name: str) -> tuple[str, str, pl.DataType]:
    """(PostgreSQL, DuckDB, polars) of a logical type: one of TYPES, or 'decimal(p,s)'
    (a mirror column widened to the lake's decimal)."""
    if name in TYPES:
        return TYPES[name]
    match = _DECIMAL.fullmatch(name)
    if match is None:
        raise KeyError(name)
    precision, scale = int(match[1]), int(match[2])
    return f"numeric({precision},{scale})", f"DECIMAL({precision},{scale})", pl.Decimal(precision, scale)


def quote_identifier(name: str) -> str:
    """`name` as an SQL identifier: double quotes, inner ones doubled. DuckDB and PostgreSQL
    share the rule, so the statements both engines run quote every name with this (and
    `totes query` its DuckDB session's), whatever the name holds."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """`value` as an SQL string literal (single quotes, inner ones doubled), in both engines."""
    return "'" + value.replace("'", "''") + "'"


def column_list(names) -> str:
    """`"a", "b", ...`: quoted names, comma-separated."""
    return ", ".join(map(quote_identifier, names))


@dataclass(frozen=True)
class Index:
    """A PostgreSQL-only index `<table>_<suffix>` on `column`; `unique_current`: unique
    among the rows that are `is_current` (a partial index)."""

    suffix: str
    column: str
    unique_current: bool = False


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = False
    references: str | None = None
    """The dimension table this column points at (its primary key)."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: str
    """Primary key column (a surrogate `*_record_id` for facts)."""
    business_key: str | None = None
    """Facts: the source row's id, repeated across its versions."""
    indexes: tuple[Index, ...] = field(default=())
    """PostgreSQL-only extra indexes."""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def polars_schema(self) -> dict[str, pl.DataType]:
        return {c.name: logical_type(c.type)[2] for c in self.columns}

    @property
    def foreign_keys(self) -> list[Column]:
        return [c for c in self.columns if c.references]

    @property
    def is_fact(self) -> bool:
        return self.business_key is not None

    @property
    def sequence(self) -> str:
        return f"{self.name}_{self.key}_seq"


def _c(spec: str, references: str | None = None) -> Column:
    """'name type' or 'name type null'."""
    parts = spec.split()
    return Column(parts[0], parts[1], nullable=len(parts) > 2 and parts[2] == "null", references=references)


def _table(
    name: str, key: str, *specs: str | Column, business_key: str | None = None, indexes: tuple[Index, ...] = ()
) -> Table:
    columns = tuple(s if isinstance(s, Column) else _c(s) for s in specs)
    return Table(name, columns, key, business_key, indexes)


# -- the star schema (§3) ----------------------------------------------------------------------

DIM_DATE = _table(
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
DIM_STAFF = _table(
    "dim_staff",
    "staff_id",
    "staff_id int",
    "first_name varchar",
    "last_name varchar",
    "department_name varchar",
    "location varchar",
    "email_address varchar",
)
DIM_LOCATION = _table(
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
DIM_DESIGN = _table(
    "dim_design", "design_id", "design_id int", "design_name varchar", "file_location varchar", "file_name varchar"
)
DIM_CURRENCY = _table(
    "dim_currency", "currency_id", "currency_id int", "currency_code varchar", "currency_name varchar"
)
DIM_COUNTERPARTY = _table(
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
DIM_PAYMENT_TYPE = _table("dim_payment_type", "payment_type_id", "payment_type_id int", "payment_type_name varchar")
DIM_TRANSACTION = _table(
    "dim_transaction",
    "transaction_id",
    "transaction_id int",
    "transaction_type varchar",
    "sales_order_id int null",
    "purchase_order_id int null",
)

LINEAGE = (
    _c("is_current boolean"),
    _c("is_deleted boolean"),
    _c("source_op varchar"),
    _c("source_lsn bigint"),
    _c("source_seq bigint"),
    _c("valid_from timestamptz null"),
    _c("valid_to timestamptz null"),
)
LINEAGE_NAMES = [c.name for c in LINEAGE]


def _date(name: str) -> Column:
    return Column(name, "date", references="dim_date")


def _ref(name: str, dim: str) -> Column:
    return Column(name, "int", references=dim)


def _fact_indexes(business_key: str) -> tuple[Index, ...]:
    return (Index("current_key", business_key, unique_current=True), Index(f"{business_key}_idx", business_key))


FACT_SALES_ORDER = _table(
    "fact_sales_order",
    "sales_record_id",
    "sales_record_id serial",
    "sales_order_id int",
    _date("created_date"),
    "created_time time",
    _date("last_updated_date"),
    "last_updated_time time",
    _ref("sales_staff_id", "dim_staff"),
    _ref("counterparty_id", "dim_counterparty"),
    "units_sold int",
    "unit_price money",
    _ref("currency_id", "dim_currency"),
    _ref("design_id", "dim_design"),
    _date("agreed_payment_date"),
    _date("agreed_delivery_date"),
    _ref("agreed_delivery_location_id", "dim_location"),
    *LINEAGE,
    business_key="sales_order_id",
    indexes=_fact_indexes("sales_order_id"),
)

FACT_PURCHASE_ORDER = _table(
    "fact_purchase_order",
    "purchase_record_id",
    "purchase_record_id serial",
    "purchase_order_id int",
    _date("created_date"),
    "created_time time",
    _date("last_updated_date"),
    "last_updated_time time",
    _ref("staff_id", "dim_staff"),
    _ref("counterparty_id", "dim_counterparty"),
    "item_code varchar",
    "item_quantity int",
    "item_unit_price numeric",
    _ref("currency_id", "dim_currency"),
    _date("agreed_delivery_date"),
    _date("agreed_payment_date"),
    _ref("agreed_delivery_location_id", "dim_location"),
    *LINEAGE,
    business_key="purchase_order_id",
    indexes=_fact_indexes("purchase_order_id"),
)

FACT_PAYMENT = _table(
    "fact_payment",
    "payment_record_id",
    "payment_record_id serial",
    "payment_id int",
    _date("created_date"),
    "created_time time",
    _date("last_updated_date"),
    "last_updated_time time",
    _ref("transaction_id", "dim_transaction"),
    _ref("counterparty_id", "dim_counterparty"),
    "payment_amount numeric",
    _ref("currency_id", "dim_currency"),
    _ref("payment_type_id", "dim_payment_type"),
    "paid boolean",
    _date("payment_date"),
    *LINEAGE,
    business_key="payment_id",
    indexes=_fact_indexes("payment_id"),
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


# -- the source mirrors -------------------------------------------------------------------------

SOURCE_META = (_c("_lsn bigint"), _c("_seq bigint"))


def _source(table: str, *specs: str) -> Table:
    columns = tuple(Column(c.name, c.type, nullable=True) for c in map(_c, specs)) + SOURCE_META
    return Table(f"_src_{table}", columns, columns[0].name)


SOURCES: dict[str, Table] = {
    t.name.removeprefix("_src_"): t
    for t in (
        _source(
            "address",
            "address_id int",
            "address_line_1 varchar",
            "address_line_2 varchar",
            "district varchar",
            "city varchar",
            "postal_code varchar",
            "country varchar",
            "phone varchar",
        ),
        _source("counterparty", "counterparty_id int", "counterparty_legal_name varchar", "legal_address_id int"),
        _source("currency", "currency_id int", "currency_code varchar"),
        _source("department", "department_id int", "department_name varchar", "location varchar"),
        _source("design", "design_id int", "design_name varchar", "file_location varchar", "file_name varchar"),
        _source(
            "staff",
            "staff_id int",
            "first_name varchar",
            "last_name varchar",
            "department_id int",
            "email_address varchar",
        ),
        _source("payment_type", "payment_type_id int", "payment_type_name varchar"),
        _source(
            "transaction",
            "transaction_id int",
            "transaction_type varchar",
            "sales_order_id int",
            "purchase_order_id int",
        ),
        _source(
            "sales_order",
            "sales_order_id int",
            "created_at timestamp",
            "last_updated timestamp",
            "design_id int",
            "staff_id int",
            "counterparty_id int",
            "units_sold int",
            "unit_price money",
            "currency_id int",
            "agreed_delivery_date varchar",
            "agreed_payment_date varchar",
            "agreed_delivery_location_id int",
        ),
        _source(
            "purchase_order",
            "purchase_order_id int",
            "created_at timestamp",
            "last_updated timestamp",
            "staff_id int",
            "counterparty_id int",
            "item_code varchar",
            "item_quantity int",
            "item_unit_price money",
            "currency_id int",
            "agreed_delivery_date varchar",
            "agreed_payment_date varchar",
            "agreed_delivery_location_id int",
        ),
        _source(
            "payment",
            "payment_id int",
            "created_at timestamp",
            "last_updated timestamp",
            "transaction_id int",
            "counterparty_id int",
            "payment_amount money",
            "currency_id int",
            "payment_type_id int",
            "paid boolean",
            "payment_date varchar",
        ),
    )
}
"""Source table (without schema) → its mirror; columns are the ones the transforms read."""


BASE_SOURCES: dict[str, Table] = dict(SOURCES)
"""The mirrors as defined here; SOURCES holds them as the lake's widened columns made them."""


def source_columns(source: str) -> list[str]:
    """The source columns a mirror keeps (without `_lsn`, `_seq`)."""
    return [n for n in SOURCES[source].names if n not in ("_lsn", "_seq")]


CHECKPOINT = Table("_sync_checkpoint", (_c("id int"), _c("lsn bigint")), "id")
PARTIAL = _table("_sync_partial", "id", "id int", "lsn bigint", "source varchar", "seq bigint")
"""No row, or one: how far inside LSN `lsn` of snapshot reads a sync has gone (`slices`)."""
REJECTED = _table(
    "_sync_rejected",
    "id",
    "id varchar",
    "source_table varchar",
    "business_key varchar",
    "source_lsn bigint",
    "source_seq bigint",
    "source_column varchar",
    "source_value varchar",
    "reason varchar",
)
"""Fact versions set aside because a value does not fit its §3 column (one row per value)."""
INTERNAL_TABLES = tuple(SOURCES.values()) + (CHECKPOINT, PARTIAL, REJECTED)


# -- rendering ---------------------------------------------------------------------------------


def sql_type(logical: str, dialect: str) -> str:
    postgres, duckdb, _ = logical_type(logical)
    return postgres if dialect == POSTGRES else duckdb


_INTEGER_DIGITS = {pl.Int8(): 3, pl.Int16(): 5, pl.Int32(): 10, pl.Int64(): 19}


def _holds(mirror: pl.DataType, lake: pl.DataType) -> bool:
    if mirror == lake:
        return True
    if mirror.is_integer() and lake.is_integer():
        return _INTEGER_DIGITS.get(mirror, 19) >= _INTEGER_DIGITS.get(lake, 19)
    if isinstance(mirror, pl.Decimal) and isinstance(lake, pl.Decimal):
        return mirror.scale >= lake.scale and mirror.precision - mirror.scale >= lake.precision - lake.scale
    if isinstance(mirror, pl.Decimal) and lake.is_integer():
        return (mirror.precision or 38) - mirror.scale >= _INTEGER_DIGITS.get(lake, 19)
    return mirror == pl.String()


def _wider_logical(lake: pl.DataType) -> str | None:
    if lake == pl.Int64():
        return "bigint"
    if isinstance(lake, pl.Decimal):
        return f"decimal({lake.precision},{lake.scale})"
    if lake == pl.String():
        return "varchar"
    return None


def widened_mirror(mirror: Table, lake_types: dict[str, pl.DataType]) -> tuple[Table, list[Column]]:
    """`mirror` with every column whose type cannot hold the lake column's values (of type
    `lake_types[name]`) widened to it, and the columns so widened."""
    changed: list[Column] = []
    columns = []
    for column in mirror.columns:
        lake = lake_types.get(column.name)
        wider = None if lake is None or _holds(logical_type(column.type)[2], lake) else _wider_logical(lake)
        if wider is not None:
            column = replace(column, type=wider)
            changed.append(column)
        columns.append(column)
    return (replace(mirror, columns=tuple(columns)), changed) if changed else (mirror, [])


def logical_of(data_type: str, precision: int | None, scale: int | None) -> str:
    """The logical type of an information_schema.columns row (either engine)."""
    name = data_type.lower()
    if name.startswith(("numeric", "decimal")):
        return f"decimal({precision},{scale})"
    if name.startswith(("character varying", "varchar", "text")):
        return "varchar"
    return {"integer": "int", "int": "int", "int4": "int", "bigint": "bigint", "int8": "bigint"}.get(name, name)


def alter_column_type(table: Table, column: Column, dialect: str) -> str:
    """The statement that gives `table`'s `column` its (widened) type, in `dialect`."""
    return (
        f"ALTER TABLE {quote_identifier(table.name)} ALTER COLUMN {quote_identifier(column.name)} "
        f"TYPE {sql_type(column.type, dialect)}"
    )


def create_table(table: Table, dialect: str) -> list[str]:
    """CREATE statements (IF NOT EXISTS) for `table` in `dialect`, sequences and indexes included."""
    q = quote_identifier
    statements = []
    lines = []
    for column in table.columns:
        line = f"{q(column.name)} {sql_type(column.type, dialect)}"
        if column.type == "serial" and dialect == DUCKDB:
            statements.append(f"CREATE SEQUENCE IF NOT EXISTS {q(table.sequence)}")
            line += f" DEFAULT {next_value(table)}"
        if not column.nullable:
            line += " NOT NULL"
        lines.append(line)
    lines.append(f"CONSTRAINT {q(f'{table.name}_pkey')} PRIMARY KEY ({q(table.key)})")
    for column in table.foreign_keys:
        target = BY_NAME[column.references]
        lines.append(
            f"CONSTRAINT {q(f'{table.name}_{column.name}_fkey')} FOREIGN KEY ({q(column.name)}) "
            f"REFERENCES {q(target.name)} ({q(target.key)})"
        )
    body = ",\n    ".join(lines)
    statements.append(f"CREATE TABLE IF NOT EXISTS {q(table.name)} (\n    {body}\n)")
    if dialect == POSTGRES:
        for index in table.indexes:
            unique, where = ("UNIQUE ", " WHERE is_current") if index.unique_current else ("", "")
            statements.append(
                f"CREATE {unique}INDEX IF NOT EXISTS {q(f'{table.name}_{index.suffix}')} "
                f"ON {q(table.name)} ({q(index.column)}){where}"
            )
    return statements


def next_value(table: Table) -> str:
    """`nextval(...)` of the sequence behind `table`'s serial key (the sequence is named by
    a string that is itself parsed as an identifier: quoted, then a literal)."""
    return f"nextval({quote_literal(quote_identifier(table.sequence))})"


def schema_ddl(dialect: str) -> list[str]:
    """Every statement that creates the warehouse (idempotent), dimensions before facts."""
    statements = []
    for table in WAREHOUSE_TABLES + INTERNAL_TABLES:
        statements.extend(create_table(table, dialect))
    first_checkpoint = (
        f"INSERT INTO {quote_identifier(CHECKPOINT.name)} (id, lsn) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"  # nosec B608 # name quoted, constant values
    )
    statements.append(first_checkpoint)
    return statements


def row_counts_sql(names) -> str:
    """One query over both engines: each table of `names` as `t` and its row count as `n`."""
    return " UNION ALL ".join(
        f"SELECT {quote_literal(name)} AS t, count(*) AS n FROM {quote_identifier(name)}"  # nosec B608 # names quoted as identifiers and literals
        for name in names
    )


def conform(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """`frame` with exactly the columns of `schema`, in its order and types."""
    if frame.width == 0 or frame.height == 0:
        return pl.DataFrame(schema=schema)
    return frame.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])
