"""Fold change log rows into one row per primary key: the key's state after them.

Both the state merge (a batch's rows) and time travel by LSN (a table's whole log up to an
LSN) use it. The rules are those of `tests.reader_harness.apply_events`:

- rows apply in `(lsn, seq)` order; the last one decides the row's `_op`, position and
  `_deleted` (its op is a delete);
- a column the WAL did not carry (`_unchanged`) keeps the value it had: the latest earlier
  row that carried it, where a delete counts as carrying NULL for every column;
- a column no row carried is reported in the output's `_unchanged`: the merge then keeps
  the target's value. With `complete=True` (the rows are the key's whole history) there is
  no earlier value, so it is NULL and `_unchanged` is empty.

Truncate rows are not handled here: callers drop the rows a truncate wiped first.
Vectorised with polars; rows of tables without `_unchanged` entries take a faster path.
"""

from __future__ import annotations

import polars as pl

STATE_ORDER = ["_op", "_lsn", "_seq", "_commit_ts", "_deleted", "_unchanged"]


def collapse(rows: pl.DataFrame, keys: list[str], columns: list[str], *, complete: bool = False) -> pl.DataFrame:
    """One row per key of `rows` (change log rows, no truncates): `keys`, `columns`, then
    `_op`, `_lsn`, `_seq`, `_commit_ts`, `_deleted`, `_unchanged` (list of column names)."""
    values = [c for c in columns if c not in keys]
    rows = rows.sort(["_lsn", "_seq"])
    is_delete = pl.col("_op") == "d"
    has_unchanged = rows.height > 0 and rows.select(pl.col("_unchanged").list.len().sum()).item() > 0
    if not has_unchanged:
        last = rows.unique(subset=keys, keep="last", maintain_order=True)
        return last.select(
            *columns,
            "_op",
            "_lsn",
            "_seq",
            "_commit_ts",
            is_delete.alias("_deleted"),
            pl.lit([], dtype=pl.List(pl.String)).alias("_unchanged"),
        )

    def carried(column: str) -> pl.Expr:
        return is_delete | ~pl.col("_unchanged").list.contains(pl.lit(column))

    folded = rows.group_by(keys, maintain_order=True).agg(
        *[pl.col(c).filter(carried(c)).last().alias(c) for c in values],
        *[carried(c).any().alias(f"__known_{c}") for c in values],
        pl.col("_op").last(),
        pl.col("_lsn").last(),
        pl.col("_seq").last(),
        pl.col("_commit_ts").last(),
    )
    if complete:
        unchanged = pl.lit([], dtype=pl.List(pl.String))
    else:
        unchanged = (
            pl.concat_list(
                [pl.when(~pl.col(f"__known_{c}")).then(pl.lit(c)).otherwise(pl.lit(None, pl.String)) for c in values]
            ).list.drop_nulls()
            if values
            else pl.lit([], dtype=pl.List(pl.String))
        )
    return folded.select(
        *columns,
        "_op",
        "_lsn",
        "_seq",
        "_commit_ts",
        (pl.col("_op") == "d").alias("_deleted"),
        unchanged.alias("_unchanged"),
    )
