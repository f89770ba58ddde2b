"""The tables the sync keeps for itself: source mirrors (`_src_<table>`), checkpoint, partial position, rejects.

The `_src_<table>` mirrors hold the current state of the source tables, only the columns the
transforms read, plus the `(_lsn, _seq)` of the event that made each row what it is. They
serve the joins (a renamed department rebuilds its staff's rows), fill columns the WAL did
not carry (unchanged TOAST) and know which rows a truncate removes. `_sync_checkpoint`: one
row, the LSN up to which the change logs have been applied; `_sync_partial`: beside it, how
far inside the next LSN a bulk load has gone, if it has.

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
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from warehouse_sync.table_model import Column, Table, define_table, logical_type, parse_column

if TYPE_CHECKING:
    import polars as pl

SOURCE_META = (parse_column("_lsn bigint"), parse_column("_seq bigint"))


def _source(table: str, *specs: str) -> Table:
    columns = tuple(Column(c.name, c.type, nullable=True) for c in map(parse_column, specs)) + SOURCE_META
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


CHECKPOINT = Table("_sync_checkpoint", (parse_column("id int"), parse_column("lsn bigint")), "id")
PARTIAL = define_table("_sync_partial", "id", "id int", "lsn bigint", "source varchar", "seq bigint")
"""No row, or one: how far inside LSN `lsn` of snapshot reads a sync has gone (`slices`)."""
REJECTED = define_table(
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


def _holds(mirror: pl.DataType, lake: pl.DataType) -> bool:
    import polars as pl

    digits = {pl.Int8(): 3, pl.Int16(): 5, pl.Int32(): 10, pl.Int64(): 19}
    if mirror == lake:
        return True
    if mirror.is_integer() and lake.is_integer():
        return digits.get(mirror, 19) >= digits.get(lake, 19)
    if isinstance(mirror, pl.Decimal) and isinstance(lake, pl.Decimal):
        return mirror.scale >= lake.scale and mirror.precision - mirror.scale >= lake.precision - lake.scale
    if isinstance(mirror, pl.Decimal) and lake.is_integer():
        return (mirror.precision or 38) - mirror.scale >= digits.get(lake, 19)
    return mirror == pl.String()


def _wider_logical(lake: pl.DataType) -> str | None:
    import polars as pl

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
