"""Reads the lake's change logs (`changes/public.<table>`) between two LSNs, through the
lake's read port (`lake.change_feed`): Delta is driven there, not here.

Only the columns the transforms use are read, with the LSN range pushed down to the files'
statistics and as a row filter (see `lake.change_feed`).

Each table comes back as a polars frame sorted by `(_lsn, _seq)` with duplicates of an event
(the same position logged twice, e.g. by two overlapping appends) dropped, its source
columns cast to the mirror's types. `_unchanged` stays a list of column names.

A continuous sync passes a cache: the tables stay open between runs, and each run reads only
what the commits since the previous run appended (Delta's change feed, which for appends
needs no table feature), not the whole table again: a run costs the same after a day of
small commits as after a minute. The cache holds at most `limit` events (a slice's worth):
when the lake has more than that past the sync's position (a backlog, a snapshot landed), it
lets go of them and the next run reads the lake in slices, so memory does not grow with
what the lake got ahead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from lake.change_feed import EVENT_META, ChangeFeed, ChangeLog
from lake.layout import LakeLayout
from warehouse_sync.schema import SOURCES
from warehouse_sync.slices import LsnCount, Position

log = logging.getLogger("totes.sync")

SOURCE_SCHEMA = "public"
EVENT_META_SCHEMA: dict[str, pl.DataType] = dict(pl.DataFrame(EVENT_META.empty_table()).schema)


def event_schema(source: str) -> dict[str, pl.DataType]:
    """Columns and types of the frame `read_changes` returns for `source`."""
    mirror = SOURCES[source].polars_schema
    columns = {name: dtype for name, dtype in mirror.items() if name not in ("_lsn", "_seq")}
    return columns | EVENT_META_SCHEMA


def _as_lake(layout: LakeLayout | str) -> LakeLayout:
    return layout if isinstance(layout, LakeLayout) else LakeLayout(layout)


def _scan(change_log: ChangeLog, schema: dict, after_lsn: int, upto_lsn: int | None) -> pl.DataFrame:
    """Events of the loaded version with `after_lsn < _lsn (<= upto_lsn)`, as `schema` says."""
    return _conform(change_log.between(list(schema), after_lsn, upto_lsn), schema)


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


FEED_LIMIT = 100_000
"""Events a continuous sync's cache holds at most (= the default slice size)."""


@dataclass
class _Feed:
    """A change log as a continuous sync follows it: read up to `version`, and `held` is
    every event in it above `after_lsn` (what the last call returned ended there), or None
    when there were more than the cache holds (then the lake is read in slices)."""

    log: ChangeLog
    version: int
    after_lsn: int
    held: pl.DataFrame | None


def _too_many(feed: _Feed, limit: int) -> bool:
    """Whether the held events and those the commits since `feed.version` added are more than
    `limit` (a commit without row metrics counts as too many)."""
    if feed.held is None:
        return True
    added = feed.log.added_rows(feed.version)
    return added is None or feed.held.height + added > limit


def _follow(
    layout: LakeLayout, uri: str, schema: dict, after_lsn: int, cache: dict, limit: int = FEED_LIMIT
) -> _Feed | None:
    """The table's feed, brought up to its latest version (`held` None past `limit` events)."""
    feed = cache.get(uri)
    if feed is not None and feed.after_lsn == after_lsn:
        if not layout.has_commit(uri, feed.version + 1):
            return feed  # nothing new: most tables, most of the time
        feed.log.update()
        if _too_many(feed, limit):
            feed.held, feed.version = None, feed.log.version
            return feed
        try:
            new = _conform(feed.log.appended(feed.version, list(schema), after_lsn), schema)
        except Exception as error:  # noqa: BLE001 - a schema change, a commit cleaned up: scan instead
            log.info("reading %s from version %d: %s; scanning it instead", uri, feed.version + 1, error)
        else:
            feed.held = pl.concat([feed.held, new])
            feed.version = feed.log.version
            return feed
    # First call, or the caller's checkpoint is not where the last call ended (a sync that
    # rolled back): scan the files, unless they hold more than the cache may.
    change_log = ChangeLog.open(layout, uri)
    if change_log is None:
        return None
    if change_log.count_after(after_lsn) > limit:
        feed = cache[uri] = _Feed(change_log, change_log.version, after_lsn, None)
    else:
        feed = cache[uri] = _Feed(change_log, change_log.version, after_lsn, _scan(change_log, schema, after_lsn, None))
    return feed


def read_table_changes(
    layout: LakeLayout | str, source: str, after_lsn: int, upto_lsn: int, cache: dict | None = None
) -> pl.DataFrame:
    """Events of `public.<source>` with `after_lsn < _lsn <= upto_lsn`, sorted, deduplicated.

    With a `cache` (kept by a continuous caller whose `after_lsn` is the previous call's
    `upto_lsn`), only the commits since the previous call are read; the events above
    `upto_lsn` wait in the cache for the next call."""
    layout = _as_lake(layout)
    schema = event_schema(source)
    uri = layout.changes_uri(f"{SOURCE_SCHEMA}.{source}")
    if cache is None:
        table = ChangeFeed(layout).between(f"{SOURCE_SCHEMA}.{source}", list(schema), after_lsn, upto_lsn)
        if table is None:
            return pl.DataFrame(schema=schema)
        frame = _conform(table, schema)
    else:
        feed = _follow(layout, uri, schema, after_lsn, cache)
        if feed is None:
            return pl.DataFrame(schema=schema)
        if feed.held is None:  # more than the cache holds: read from the files
            feed.held = _scan(feed.log, schema, after_lsn, None)
        frame = feed.held
        if frame.height:
            due = pl.col("_lsn") <= upto_lsn
            frame, feed.held = frame.filter(due), frame.filter(~due)
        feed.after_lsn = max(after_lsn, upto_lsn)
    if frame.height == 0:
        return frame
    return frame.unique(subset=["_lsn", "_seq"], keep="first", maintain_order=False).sort(["_lsn", "_seq"])


def cached_events(
    layout: LakeLayout | str, after_lsn: int, upto_lsn: int, cache: dict, limit: int = FEED_LIMIT
) -> int | None:
    """How many events in `(after_lsn, upto_lsn]` a continuous sync's `cache` holds once
    brought up to date, or None when it does not follow `after_lsn` (empty, or left by a
    sync that rolled back or went by slices) or the lake has more than `limit` events past
    it (the cache then lets go of them): then the events are counted in the lake."""
    layout = _as_lake(layout)
    if not cache or any(feed.after_lsn != after_lsn for feed in cache.values()):
        return None
    held = 0
    for source in SOURCES:
        feed = _follow(
            layout, layout.changes_uri(f"{SOURCE_SCHEMA}.{source}"), event_schema(source), after_lsn, cache, limit
        )
        if feed is not None and feed.held is None:
            _let_go(cache)
            return None
        if feed is not None and feed.held.height:
            held += feed.held.filter(pl.col("_lsn") <= upto_lsn).height
    if sum(feed.held.height for feed in cache.values() if feed.held is not None) > limit:
        _let_go(cache)
        return None
    return held


def _let_go(cache: dict) -> None:
    for feed in cache.values():
        feed.held = None


def follow_from(layout: LakeLayout | str, after_lsn: int, cache: dict, limit: int = FEED_LIMIT) -> None:
    """Start `cache` (emptied) at `after_lsn`: each table's events above it are read now
    (unless the lake has more than `limit` of them), those appended later by the calls after."""
    layout = _as_lake(layout)
    cache.clear()
    for source in SOURCES:
        feed = _follow(
            layout, layout.changes_uri(f"{SOURCE_SCHEMA}.{source}"), event_schema(source), after_lsn, cache, limit
        )
        if feed is not None and feed.held is None:
            break
    if any(feed.held is None for feed in cache.values()) or sum(feed.held.height for feed in cache.values()) > limit:
        _let_go(cache)


def read_changes(
    layout: LakeLayout | str, after_lsn: int, upto_lsn: int, cache: dict | None = None
) -> dict[str, pl.DataFrame]:
    """Every source table's events in `(after_lsn, upto_lsn]` (tables without any: absent)."""
    layout = _as_lake(layout)
    changes = {}
    for source in SOURCES:
        frame = read_table_changes(layout, source, after_lsn, upto_lsn, cache)
        if frame.height:
            changes[source] = frame
    return changes


# -- slices: events between two positions (see `slices`) --------------------------------------


def _bounds(start: Position, end: Position, table: int) -> tuple[str, ds.Expression]:
    """For the events of the table at index `table` in `(start, end]`: a file-pruning
    predicate (on `_lsn` alone) and the exact row filter."""
    lsn, seq = ds.field("_lsn"), ds.field("_seq")
    low, high = int(start.lsn), int(end.lsn)
    if table < start.table:
        lower = lsn > low
    elif table == start.table:
        lower = (lsn > low) | ((lsn == low) & (seq > int(start.seq)))
    else:
        lower = lsn >= low
    if table < end.table:
        upper = lsn <= high
    elif table == end.table:
        upper = (lsn < high) | ((lsn == high) & (seq <= int(end.seq)))
    else:
        upper = lsn < high
    return f"_lsn >= {low} AND _lsn <= {high}", lower & upper


def _slice_dataset(layout: LakeLayout, source: str, start: Position, end: Position, opened: dict | None):
    """(dataset of the files that may hold the table's events in `(start, end]`, row
    filter), or None when the table has no change log.

    `opened` keeps each table's dataset for one sync (and may hold its `ChangeLog`, by URI,
    already up to date): the first call's range (the whole
    sync's, every event of which was in the lake when it was opened) must hold the later
    ones; their rows are found through the row filter and the files' row-group statistics."""
    uri = layout.changes_uri(f"{SOURCE_SCHEMA}.{source}")
    pruning, wanted = _bounds(start, end, list(SOURCES).index(source))
    opened = {} if opened is None else opened
    if ("dataset", uri) not in opened:
        change_log = opened[uri] if uri in opened else ChangeLog.open(layout, uri)  # one the caller has open
        opened["dataset", uri] = None if change_log is None else change_log.dataset(pruning)
        opened["log", uri] = change_log
    dataset = opened["dataset", uri]
    return None if dataset is None else (dataset, wanted)


SCAN_POOL = pa.system_memory_pool()
"""The allocator of the slices' scans: it gives memory back once a slice is done (the default
pool keeps what a scan of a large change log once needed, as the process's peak)."""


def count_events(
    layout: LakeLayout | str, start: Position, upto_lsn: int, opened: dict | None = None, larger_than: int = 0
) -> list[LsnCount]:
    """Events per (LSN, table) in `(start, complete(upto_lsn)]`: `_lsn` is read as it
    streams, aggregated batch by batch (memory grows with the LSNs, not the events); whether
    an LSN's events are all snapshot reads is found (from `_op`) only for the LSNs with more
    than `larger_than` events, the others say False. Duplicates of an event count twice (a
    slice is then a little smaller than planned)."""
    layout = _as_lake(layout)
    end = Position.complete(upto_lsn, len(SOURCES))
    counts = []
    for index, source in enumerate(SOURCES):
        found = _slice_dataset(layout, source, start, end, opened)
        if found is None:
            continue
        dataset, wanted = found
        per_lsn: pl.DataFrame | None = None
        for batch in dataset.to_batches(columns=["_lsn"], filter=wanted, memory_pool=SCAN_POOL):
            if batch.num_rows == 0:
                continue
            part = pl.from_arrow(batch).group_by("_lsn").len()  # type: ignore[union-attr]
            per_lsn = part if per_lsn is None else pl.concat([per_lsn, part]).group_by("_lsn").agg(pl.col("len").sum())
        if per_lsn is None:
            continue
        for lsn, events in per_lsn.sort("_lsn").iter_rows():
            counts.append(LsnCount(int(lsn), index, int(events), False))
    totals: dict[int, int] = {}
    for count in counts:
        totals[count.lsn] = totals.get(count.lsn, 0) + count.events
    return [_with_ops(layout, start, c, opened) if totals[c.lsn] > larger_than else c for c in counts]


def _with_ops(layout: LakeLayout, start: Position, count: LsnCount, opened: dict | None) -> LsnCount:
    """`count` with whether all its events are snapshot reads."""
    source = list(SOURCES)[count.table]
    found = _slice_dataset(layout, source, start, Position.complete(count.lsn, len(SOURCES)), opened)
    assert found is not None  # nosec B101 # counted from that dataset
    dataset, wanted = found
    others = dataset.count_rows(filter=wanted & (ds.field("_lsn") == count.lsn) & (ds.field("_op") != "r"))
    return LsnCount(count.lsn, count.table, count.events, others == 0)


def snapshot_seqs(
    layout: LakeLayout | str, start: Position, lsn: int, table: int, opened: dict | None = None
) -> pl.Series:
    """The sorted distinct `seq` of the table at index `table` at `lsn`, after `start`."""
    layout = _as_lake(layout)
    source = list(SOURCES)[table]
    found = _slice_dataset(layout, source, start, Position.complete(lsn, len(SOURCES)), opened)
    if found is None:
        return pl.Series("_seq", [], dtype=pl.Int64)
    dataset, wanted = found
    seqs = dataset.to_table(columns=["_seq"], filter=wanted & (ds.field("_lsn") == lsn), memory_pool=SCAN_POOL).column(
        "_seq"
    )
    return pl.Series("_seq", seqs, dtype=pl.Int64).unique().sort()


def snapshot_returns(
    layout: LakeLayout | str, after: Position, upto_lsn: int, source: str, opened: dict | None = None
) -> pl.Series:
    """The keys of `source` whose first event in `(after, complete(upto_lsn)]` is a snapshot
    read: the rows a reset writes back after a truncate that ends a slice. Reads only the
    key and position columns of those events (one small row per event)."""
    layout = _as_lake(layout)
    key = SOURCES[source].key
    found = _slice_dataset(layout, source, after, Position.complete(upto_lsn, len(SOURCES)), opened)
    if found is None:
        return pl.Series(key, [], dtype=pl.Int64)
    dataset, wanted = found
    events = pl.from_arrow(dataset.to_table(columns=[key, "_lsn", "_seq", "_op"], filter=wanted, memory_pool=SCAN_POOL))
    first = events.drop_nulls(key).sort(["_lsn", "_seq"]).group_by(key, maintain_order=True).first()  # type: ignore[union-attr]
    return first.filter(pl.col("_op") == "r")[key]


def read_slice(
    layout: LakeLayout | str,
    start: Position,
    end: Position,
    opened: dict | None = None,
    sources: Iterable[str] | None = None,
    skip: dict[str, int] | None = None,
) -> dict[str, pl.DataFrame]:
    """Every source table's events in `(start, end]`, sorted, deduplicated (tables without
    any: absent); only `sources` are read, when given, and none of a table's events at the
    LSN `skip` gives for it (a part loaded in bulk: `snapshot_part`)."""
    layout = _as_lake(layout)
    changes = {}
    for source in SOURCES if sources is None else [s for s in SOURCES if s in set(sources)]:
        found = _slice_dataset(layout, source, start, end, opened)
        if found is None:
            continue
        dataset, wanted = found
        if skip and source in skip:
            wanted &= ds.field("_lsn") != int(skip[source])
        schema = event_schema(source)
        present = [name for name in schema if name in dataset.schema.names]
        frame = _conform(dataset.to_table(columns=present, filter=wanted, memory_pool=SCAN_POOL), schema)
        if frame.height:
            changes[source] = frame.unique(subset=["_lsn", "_seq"], keep="first", maintain_order=False).sort(
                ["_lsn", "_seq"]
            )
    return changes
