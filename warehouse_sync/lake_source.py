"""Reads the lake's change logs (`changes/public.<table>`) between two LSNs.

Only the columns the transforms use are read, through `DeltaTable.to_pyarrow_dataset` on a
native pyarrow filesystem (never `to_pyarrow_table()`, whose threaded scans can abort the
process at exit), with the LSN range pushed down twice: as a file-pruning predicate (file
statistics skip files outside the range) and as a row filter.

Each table comes back as a polars frame sorted by `(_lsn, _seq)` with duplicates of an event
(the same position logged twice, e.g. by two overlapping appends) dropped, its source
columns cast to the mirror's types. `_unchanged` stays a list of column names.

A continuous sync passes a cache: the tables stay open between runs, and each run reads only
what the commits since the previous run appended (Delta's change feed, which for appends
needs no table feature), not the whole table again: a run costs the same after a day of
small commits as after a minute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable

from lake.layout import LakeLayout
from warehouse_sync.schema import SOURCES

log = logging.getLogger("totes.sync")

SOURCE_SCHEMA = "public"
EVENT_META = ["_op", "_lsn", "_seq", "_commit_ts", "_unchanged", "_before"]
EVENT_META_SCHEMA: dict[str, pl.DataType] = {
    "_op": pl.String(), "_lsn": pl.Int64(), "_seq": pl.Int64(), "_commit_ts": pl.Datetime("us", "UTC"),
    "_unchanged": pl.List(pl.String()), "_before": pl.String(),
}


def event_schema(source: str) -> dict[str, pl.DataType]:
    """Columns and types of the frame `read_changes` returns for `source`."""
    mirror = SOURCES[source].polars_schema
    columns = {name: dtype for name, dtype in mirror.items() if name not in ("_lsn", "_seq")}
    return columns | EVENT_META_SCHEMA


def _as_lake(layout: LakeLayout | str) -> LakeLayout:
    return layout if isinstance(layout, LakeLayout) else LakeLayout(layout)


def _scan(layout: LakeLayout, uri: str, delta: DeltaTable, schema: dict, after_lsn: int,
          upto_lsn: int | None) -> pl.DataFrame:
    """Events of the loaded version with `after_lsn < _lsn (<= upto_lsn)`: a scan of the files
    whose statistics allow such events."""
    in_range = f"_lsn > {int(after_lsn)}" + ("" if upto_lsn is None else f" AND _lsn <= {int(upto_lsn)}")
    dataset = delta.to_pyarrow_dataset(filesystem=layout.subtree(uri), file_pruning_predicate=in_range)
    present = [name for name in schema if name in dataset.schema.names]
    wanted = ds.field("_lsn") > after_lsn
    if upto_lsn is not None:
        wanted &= ds.field("_lsn") <= upto_lsn
    return _conform(dataset.to_table(columns=present, filter=wanted), schema)


def _appended(delta: DeltaTable, schema: dict, after_version: int, after_lsn: int) -> pl.DataFrame:
    """Events with `_lsn > after_lsn` appended by the versions after `after_version` up to the
    loaded one: only those commits' files are read (compactions add no data, so none). Raises
    when a commit in between changed the table's schema (the change feed refuses those)."""
    present = [name for name in schema if name in delta.schema().to_arrow().names]
    reader = delta.load_cdf(starting_version=after_version + 1, ending_version=delta.version(),
                            columns=present, predicate=f"_lsn > {int(after_lsn)}")
    return _conform(pa.table(reader), schema)


def _conform(table: pa.Table, schema: dict) -> pl.DataFrame:
    present = [name for name in schema if name in table.column_names]
    if table.num_rows:
        frame = pl.from_arrow(table.select(present))
    else:
        frame = pl.DataFrame(schema={n: schema[n] for n in present})
    assert isinstance(frame, pl.DataFrame)  # nosec B101 # type narrowing only
    missing = [pl.lit(None, dtype=schema[n]).alias(n) for n in schema if n not in present]
    frame = frame.with_columns(missing) if missing else frame
    return frame.select([pl.col(n).cast(dtype) for n, dtype in schema.items()])


@dataclass
class _Feed:
    """A change log as a continuous sync follows it: read up to `version`, and `held` is
    every event in it above `after_lsn` (what the last call returned ended there)."""

    delta: DeltaTable
    version: int
    after_lsn: int
    held: pl.DataFrame


def _follow(layout: LakeLayout, uri: str, schema: dict, after_lsn: int, cache: dict) -> _Feed | None:
    """The table's feed, brought up to its latest version."""
    feed = cache.get(uri)
    if feed is not None and feed.after_lsn == after_lsn:
        if not layout.has_commit(uri, feed.version + 1):
            return feed  # nothing new: most tables, most of the time
        feed.delta.update_incremental()
        try:
            new = _appended(feed.delta, schema, feed.version, after_lsn)
        except Exception as error:  # noqa: BLE001 - a schema change, a commit cleaned up: scan instead
            log.info("reading %s from version %d: %s; scanning it instead", uri, feed.version + 1, error)
        else:
            feed.held = pl.concat([feed.held, new])
            feed.version = feed.delta.version()
            return feed
    # First call, or the caller's checkpoint is not where the last call ended (a sync that
    # rolled back): scan the files.
    delta = layout.open(uri)
    if delta is None:
        return None
    feed = cache[uri] = _Feed(delta, delta.version(), after_lsn,
                              _scan(layout, uri, delta, schema, after_lsn, None))
    return feed


def read_table_changes(layout: LakeLayout | str, source: str, after_lsn: int, upto_lsn: int,
                       cache: dict | None = None) -> pl.DataFrame:
    """Events of `public.<source>` with `after_lsn < _lsn <= upto_lsn`, sorted, deduplicated.

    With a `cache` (kept by a continuous caller whose `after_lsn` is the previous call's
    `upto_lsn`), only the commits since the previous call are read; the events above
    `upto_lsn` wait in the cache for the next call."""
    layout = _as_lake(layout)
    schema = event_schema(source)
    uri = layout.changes_uri(f"{SOURCE_SCHEMA}.{source}")
    if cache is None:
        delta = layout.open(uri)
        if delta is None:
            return pl.DataFrame(schema=schema)
        frame = _scan(layout, uri, delta, schema, after_lsn, upto_lsn)
    else:
        feed = _follow(layout, uri, schema, after_lsn, cache)
        if feed is None:
            return pl.DataFrame(schema=schema)
        frame = feed.held
        if frame.height:
            due = pl.col("_lsn") <= upto_lsn
            frame, feed.held = frame.filter(due), frame.filter(~due)
        feed.after_lsn = max(after_lsn, upto_lsn)
    if frame.height == 0:
        return frame
    return frame.unique(subset=["_lsn", "_seq"], keep="first", maintain_order=False).sort(["_lsn", "_seq"])


def read_changes(layout: LakeLayout | str, after_lsn: int, upto_lsn: int,
                 cache: dict | None = None) -> dict[str, pl.DataFrame]:
    """Every source table's events in `(after_lsn, upto_lsn]` (tables without any: absent)."""
    layout = _as_lake(layout)
    changes = {}
    for source in SOURCES:
        frame = read_table_changes(layout, source, after_lsn, upto_lsn, cache)
        if frame.height:
            changes[source] = frame
    return changes
