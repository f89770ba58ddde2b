"""Erasure in the warehouse: what `totes lake forget` removes there.

For the source rows of the given keys of one table:
- their fact rows go, every version (facts are the rows of sales_order, purchase_order and
  payment; nothing references a fact row);
- the dimension row made from each of them keeps its key (facts reference it) and loses every
  other value: '' in a NOT NULL text column, NULL elsewhere; so do the columns other
  dimensions copied from them (an address's in dim_counterparty, a department's in dim_staff);
- their rows go from the sync's source mirrors (`_src_<table>`) and its rejected values.

Then the storage itself forgets: a DuckDB file is copied into a new file (`COPY FROM
DATABASE`: schema, data and sequences; freed blocks of the old file would still hold the old
values) which replaces it, and its published read copy is replaced too; PostgreSQL tables are
rewritten by VACUUM FULL. (PostgreSQL's WAL and its archives keep old values until they are
recycled.)
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from warehouse_sync.schema import BY_NAME, FACTS, POSTGRES, REJECTED, SOURCES, quote_identifier, quote_literal
from warehouse_sync.targets import Target

DIMENSION_OF = {
    "staff": "dim_staff",
    "address": "dim_location",
    "counterparty": "dim_counterparty",
    "design": "dim_design",
    "currency": "dim_currency",
    "payment_type": "dim_payment_type",
    "transaction": "dim_transaction",
}
"""Source table → the dimension whose key is its key."""
COPIED_INTO = {
    "address": ("dim_counterparty", "counterparty", "legal_address_id", "counterparty_legal_"),
    "department": ("dim_staff", "staff", "department_id", ("department_name", "location")),
}
"""Source table → (dimension, the mirror that links them, its column holding our key, the
dimension's columns copied from us: a name prefix or the names)."""


def _blank(table, columns: list[str]) -> str:
    sets = []
    for name in columns:
        column = next(c for c in table.columns if c.name == name)
        value = "''" if not column.nullable and column.type == "varchar" else "NULL"
        sets.append(f"{quote_identifier(name)} = {value}")
    return ", ".join(sets)


def _in(column: str, keys: list[str]) -> str:
    return f"CAST({quote_identifier(column)} AS VARCHAR) IN ({', '.join(quote_literal(k) for k in keys)})"


def erasure_statements(source: str, keys: list[str]) -> list[tuple[str, str]]:
    """(table, statement) that forget `keys` (text, single-column keys) of source table `source`."""
    statements = []
    for fact in FACTS:
        if fact.name == f"fact_{source}":
            statements.append(
                (
                    fact.name,
                    f"DELETE FROM {quote_identifier(fact.name)} "  # nosec B608 # names quoted, keys quoted literals
                    f"WHERE {_in(fact.business_key, keys)}",
                )
            )
    dimension = DIMENSION_OF.get(source)
    if dimension is not None:
        table = BY_NAME[dimension]
        columns = [c.name for c in table.columns if c.name != table.key]
        statements.append(
            (
                dimension,
                f"UPDATE {quote_identifier(dimension)} SET {_blank(table, columns)} "  # nosec B608 # names quoted, values quoted literals
                f"WHERE {_in(table.key, keys)}",
            )
        )
    if source in COPIED_INTO:
        dimension, mirror, link, copied = COPIED_INTO[source]
        table = BY_NAME[dimension]
        names = [
            c.name
            for c in table.columns
            if (c.name.startswith(copied) if isinstance(copied, str) else c.name in copied)
        ]
        mirror_table = SOURCES[mirror]
        linked = (
            f"SELECT {quote_identifier(mirror_table.key)} FROM {quote_identifier(mirror_table.name)} "  # nosec B608 # names quoted, keys quoted literals
            f"WHERE {_in(link, keys)}"
        )
        statements.append(
            (
                dimension,
                f"UPDATE {quote_identifier(dimension)} SET {_blank(table, names)} "  # nosec B608 # names quoted, values quoted literals
                f"WHERE {quote_identifier(table.key)} IN ({linked})",
            )
        )
    if source in SOURCES:
        mirror_table = SOURCES[source]
        statements.append(
            (
                mirror_table.name,
                f"DELETE FROM {quote_identifier(mirror_table.name)} "  # nosec B608 # names quoted, values quoted literals
                f"WHERE {_in(mirror_table.key, keys)}",
            )
        )
    statements.append(
        (
            REJECTED.name,
            f"DELETE FROM {quote_identifier(REJECTED.name)} WHERE source_table = "  # nosec B608 # names quoted, values quoted literals
            f"{quote_literal(source)} AND business_key IN "
            f"({', '.join(quote_literal(k) for k in keys)})",
        )
    )
    return statements


def forget_in_warehouse(target: Target, source: str, keys: list[str]) -> list[str]:
    """Run the erasure in one transaction; return the tables it touched."""
    statements = erasure_statements(source, keys)
    target.begin()
    try:
        for _, statement in statements:
            target.execute(statement)
        target.commit()
    except BaseException:
        target.rollback()
        raise
    touched = sorted({table for table, _ in statements})
    if target.dialect == POSTGRES:
        for table in touched:
            target.execute(f"VACUUM FULL {quote_identifier(table)}")
    return touched


def rewrite_duckdb_file(path: Path) -> None:
    """Replace the (closed) DuckDB file at `path` by a copy of its contents, so no freed block
    of it keeps an erased value; the read copy beside it, if any, by the same copy."""
    from warehouse_sync.read_copy import published_path

    path = Path(path)
    fresh = path.with_name(f".{path.name}.{os.getpid()}.rewrite")
    fresh.unlink(missing_ok=True)
    with duckdb.connect() as connection:
        connection.execute(f"ATTACH {quote_literal(str(path))} AS old_db (READ_ONLY)")
        connection.execute(f"ATTACH {quote_literal(str(fresh))} AS new_db")
        connection.execute("COPY FROM DATABASE old_db TO new_db")
        connection.execute("DETACH old_db")
        connection.execute("DETACH new_db")
    Path(f"{path}.wal").unlink(missing_ok=True)  # everything of it is in the copy
    published = published_path(path)
    if published.exists():
        copy = published.with_name(f".{published.name}.{os.getpid()}.tmp")
        copy.write_bytes(fresh.read_bytes())
        os.replace(copy, published)
    os.replace(fresh, path)
