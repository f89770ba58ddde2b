"""The SQL the sync's steps share, for both engines (every name quoted: `quote_identifier`)."""

from __future__ import annotations

import polars as pl
from warehouse_sync.schema import DUCKDB, SOURCES, Table, column_list, quote_identifier as q
from warehouse_sync.targets import Target


def stage_keys(target: Target, name: str, keys: pl.Series) -> str:
    return target.stage(name, pl.DataFrame({"k": keys}))


def select(target: Target, table: Table, where: str = "") -> pl.DataFrame:
    return target.select(
        f"SELECT {column_list(table.names)} FROM {q(table.name)}{where}",  # nosec B608 # names quoted by q(), values int()
        table.polars_schema,
    )


def mirror_rows(target: Target, source: str, keys: pl.Series | None, column: str | None = None) -> pl.DataFrame:
    """Mirror rows of `source` whose `column` (default: the key) is in `keys` (None: all)."""
    mirror = SOURCES[source]
    if keys is None:
        return select(target, mirror)
    if keys.len() == 0:
        return pl.DataFrame(schema=mirror.polars_schema)
    staged = stage_keys(target, "_wh_lookup", keys.unique())
    return select(target, mirror, f" WHERE {q(column or mirror.key)} IN (SELECT k FROM {q(staged)})")  # nosec B608 # names quoted by q(), values int()


def upsert(target: Target, table: Table, rows: pl.DataFrame) -> int:
    if rows.height == 0:
        return 0
    staged = q(target.stage("_wh_upsert", rows.select(table.names)))
    name, key, columns = q(table.name), q(table.key), column_list(table.names)
    if target.dialect != DUCKDB:
        updates = ", ".join(f"{q(n)} = excluded.{q(n)}" for n in table.names if n != table.key)
        target.execute(
            f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {staged} "  # nosec B608 # names quoted by q()
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
        )
        return rows.height
    # DuckDB: its ON CONFLICT, or an UPDATE joined on the key, updates the rows in the order
    # the staged rows come, and rows out of the table's own order cost it ~50 us each (a
    # backlog's 100k updates took seconds). Updated by rowid, in rowid order, they cost
    # ~1 us; the join that finds the rowids reads only the key column.
    updates = ", ".join(f"{q(n)} = s.{q(n)}" for n in table.names if n != table.key)
    target.execute(
        f"UPDATE {name} SET {updates} FROM (SELECT u.*, t.rowid AS _wh_row FROM {staged} AS u "  # nosec B608 # names quoted by q()
        f"JOIN {name} AS t ON t.{key} = u.{key} ORDER BY _wh_row) AS s WHERE {name}.rowid = s._wh_row"
    )
    target.execute(
        f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {staged} AS s "  # nosec B608 # names quoted by q()
        f"WHERE NOT EXISTS (SELECT 1 FROM {name} AS t WHERE t.{key} = s.{key})"
    )
    return rows.height


def replace_mirror_rows(target: Target, mirror: Table, deleted: pl.Series, rows: pl.DataFrame) -> None:
    """Write a mirror's replayed state: the rows of `deleted` gone, `rows` in place of theirs.

    DuckDB: the rows are deleted and appended again, not updated in place. An UPDATE keeps
    an undo version of every column of each vector it touches (~16 KB a column), and a
    slice's updates spread over the keys touch a vector each: ~200 MB of undo for 1,000
    sales orders on a warehouse of 2M, past the sync's memory limit (spilled, read back at
    commit) and past DuckDB's checkpoint threshold, whose estimate it is (so every commit
    rewrote the tables it touched: a cost of the warehouse's size, not the slice's). A
    delete keeps a row id, an append the new row. PostgreSQL upserts in place."""
    if target.dialect != DUCKDB:
        delete_keys(target, mirror, deleted)
        upsert(target, mirror, rows)
        return
    delete_keys(target, mirror, pl.concat([deleted, rows[mirror.key].cast(deleted.dtype)]))
    if rows.height:
        staged = q(target.stage("_wh_replaced", rows.select(mirror.names)))
        columns = column_list(mirror.names)
        target.execute(f"INSERT INTO {q(mirror.name)} ({columns}) SELECT {columns} FROM {staged}")  # nosec B608 # names quoted by q()


def delete_keys(target: Target, table: Table, keys: pl.Series, condition: str = "") -> None:
    if keys.len():
        staged = stage_keys(target, "_wh_delete", keys)
        target.execute(f"DELETE FROM {q(table.name)} WHERE {q(table.key)} IN (SELECT k FROM {q(staged)}){condition}")  # nosec B608 # names quoted by q(), values int()
