"""Replays one source table's change events over its mirrored state: every version of every
row, complete.

Pure: polars in, polars out. Given the mirror's rows for the keys the events touch (`prior`)
and the events (sorted by `(_lsn, _seq)`, deduplicated), `replay` returns

- `versions`: one row per event and key, with every mirrored column filled in:
  * a column the WAL did not carry (named in `_unchanged`: an unchanged TOASTed value) takes
    the previous version's value, never NULL;
  * a delete carries the row's last known values (the log has only its key) and `_known`
    says whether there were any;
  * a truncate becomes one `t` version per row alive at that point;
  * an update that changed the primary key first deletes the old key (same position);
- `upserts`: the final mirror row of every touched key still alive;
- `deleted`: the touched keys no longer alive;
- `gone`: the last known values of the deleted keys (dimensions keep rows facts reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from warehouse_sync.schema import SOURCES, source_columns

POSITION = ["_lsn", "_seq"]
VERSION_META: dict[str, pl.DataType] = {
    "_op": pl.String(),
    "_lsn": pl.Int64(),
    "_seq": pl.Int64(),
    "_commit_ts": pl.Datetime("us", "UTC"),
    "_known": pl.Boolean(),
}
DELETES = ("d", "t")


@dataclass
class Replay:
    source: str
    versions: pl.DataFrame
    upserts: pl.DataFrame
    deleted: pl.Series
    gone: pl.DataFrame

    @property
    def touched(self) -> pl.Series:
        return self.versions[SOURCES[self.source].key].unique().sort()


def version_schema(source: str) -> dict[str, pl.DataType]:
    schema = SOURCES[source].polars_schema
    return {n: schema[n] for n in source_columns(source)} | VERSION_META


def _before(lsn: int, seq: int) -> pl.Expr:
    return (pl.col("_lsn") < lsn) | ((pl.col("_lsn") == lsn) & (pl.col("_seq") < seq))


def _after(lsn: int, seq: int) -> pl.Expr:
    return (pl.col("_lsn") > lsn) | ((pl.col("_lsn") == lsn) & (pl.col("_seq") > seq))


def _with_key_changes(events: pl.DataFrame, key: str) -> pl.DataFrame:
    """Add a delete of the old key before every update that changed the primary key."""
    old_key = pl.col("_before").str.json_path_match(f"$.{key}").cast(events.schema[key], strict=False)
    moved = events.filter((pl.col("_op") == "u") & old_key.is_not_null() & (old_key != pl.col(key)))
    if moved.height == 0:
        return events
    deletes = moved.select(
        [old_key.alias(key)]
        + [
            pl.lit(None, dtype=dtype).alias(name)
            for name, dtype in events.schema.items()
            if name != key and not name.startswith("_")
        ]
        + [
            pl.lit("d").alias("_op"),
            "_lsn",
            "_seq",
            "_commit_ts",
            pl.lit(None, dtype=pl.List(pl.String())).alias("_unchanged"),
            pl.lit(None, dtype=pl.String()).alias("_before"),
        ]
    ).select(events.columns)
    return pl.concat([events, deletes])


def _segment(
    state: pl.DataFrame, events: pl.DataFrame, key: str, columns: list[str], schema: dict[str, pl.DataType]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Replay truncate-free `events` over `state` (alive rows); return (new state, versions).

    Only the keys with a delete or an unchanged-TOAST column need values carried forward from
    the version before (a window per column); every other event is its own complete version,
    so a snapshot or a backlog of plain updates costs a sort, not a fill per column."""
    if events.height == 0:
        return state, pl.DataFrame(schema=schema)
    carries = (pl.col("_op") == "d") | (pl.col("_unchanged").list.len() > 0).fill_null(False)
    carrying = events.filter(carries)[key].unique()
    if carrying.len() == 0:
        return _plain_segment(state, events, key, schema)
    in_carrying = pl.col(key).is_in(carrying.implode())
    if events.filter(~in_carrying).height == 0:
        return _filled_segment(state, events, key, columns, schema)
    state, plain = _plain_segment(state, events.filter(~in_carrying), key, schema)
    state, filled = _filled_segment(state, events.filter(in_carrying), key, columns, schema)
    return state, pl.concat([plain, filled])


def _plain_segment(
    state: pl.DataFrame, events: pl.DataFrame, key: str, schema: dict[str, pl.DataType]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`_segment` for events that are all complete rows (no delete, nothing unchanged)."""
    touched = events[key].unique().implode()
    known = state.filter(pl.col(key).is_in(touched))[key].implode()
    rows = events.sort([key, *POSITION])
    versions = rows.with_columns(
        _known=pl.col(key).is_in(known) | pl.col(key).eq_missing(pl.col(key).shift(1)).fill_null(False)
    ).select(list(schema))
    alive = rows.group_by(key, maintain_order=True).last().select(state.columns).cast(state.schema)
    return pl.concat([state.filter(~pl.col(key).is_in(touched)), alive]), versions


def _filled_segment(
    state: pl.DataFrame, events: pl.DataFrame, key: str, columns: list[str], schema: dict[str, pl.DataType]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`_segment` for keys whose events carry values forward (deletes, unchanged TOAST)."""
    touched = events[key].unique()
    origin = state.filter(pl.col(key).is_in(touched.implode())).with_columns(_origin=pl.lit(True))
    rows = (
        pl.concat([origin, events.with_columns(_origin=pl.lit(False))], how="diagonal_relaxed")
        .sort([key, *POSITION, "_origin"], descending=[False, False, False, True])
        .with_row_index("_i")
    )
    fills = []
    for column in columns:
        if column == key:
            continue
        carried = ~pl.col("_origin") & (
            (pl.col("_op") == "d") | pl.col("_unchanged").list.contains(column).fill_null(False)
        )
        source_row = pl.when(carried).then(None).otherwise(pl.col("_i")).forward_fill().over(key)
        fills.append(pl.col(column).gather(source_row).alias(column))
    rows = rows.with_columns(fills).with_columns(_known=pl.int_range(pl.len()).over(key) > 0)
    versions = rows.filter(~pl.col("_origin")).select(list(schema))
    last = rows.group_by(key, maintain_order=True).last()
    alive = last.filter(pl.col("_op").is_null() | ~pl.col("_op").is_in(DELETES)).select(state.columns)
    new_state = pl.concat([state.filter(~pl.col(key).is_in(touched.implode())), alive])
    return new_state, versions


def replay(source: str, prior: pl.DataFrame, events: pl.DataFrame) -> Replay:
    """Replay `events` of `source` over `prior` (its mirror rows for at least every touched
    key; every row when the events hold a truncate)."""
    mirror = SOURCES[source]
    key = mirror.key
    columns = source_columns(source)
    schema = version_schema(source)
    state = prior.select(mirror.names)
    pieces = []
    remaining = _with_key_changes(events, key)
    for truncate in events.filter(pl.col("_op") == "t").select(["_lsn", "_seq", "_commit_ts"]).iter_rows(named=True):
        lsn, seq = truncate["_lsn"], truncate["_seq"]
        state, versions = _segment(
            state, remaining.filter(_before(lsn, seq) & (pl.col("_op") != "t")), key, columns, schema
        )
        pieces.append(versions)
        pieces.append(
            state.select(columns).with_columns(
                _op=pl.lit("t"),
                _lsn=pl.lit(lsn, pl.Int64),
                _seq=pl.lit(seq, pl.Int64),
                _commit_ts=pl.lit(truncate["_commit_ts"], pl.Datetime("us", "UTC")),
                _known=pl.lit(True),
            )
        )
        state = state.clear()
        remaining = remaining.filter(_after(lsn, seq))
    state, versions = _segment(state, remaining.filter(pl.col("_op") != "t"), key, columns, schema)
    pieces.append(versions)
    versions = pl.concat([p.select(list(schema)).cast(schema) for p in pieces]).sort([key, *POSITION])
    touched = versions[key].unique().implode()
    upserts = state.filter(pl.col(key).is_in(touched)).sort(key)
    last = versions.group_by(key, maintain_order=True).last()
    gone_last = last.filter(pl.col("_op").is_in(DELETES) & ~pl.col(key).is_in(upserts[key].implode()))
    return Replay(
        source=source,
        versions=versions,
        upserts=upserts,
        deleted=gone_last[key],
        gone=gone_last.filter(pl.col("_known")).select(columns),
    )
