"""One sync: the change-log events in `(checkpoint, upto]` → warehouse transactions, one per slice.

This module drives the slices; each slice's transaction reads and moves the position
(`position`), widens the mirrors as the lake's columns were (`lake_types`) and runs the steps
(`steps`), which share their SQL (`sql`).

    sync_once(lake, target, upto_lsn)        # slice_events=SLICE_EVENTS

`upto_lsn` is the lake watermark (every event at or below it, of every table, is in the
lake), so a sync never shows half a source transaction. A backlog larger than
`slice_events` is applied in slices (`slices.plan_slices`: each ends on a complete LSN, or
inside an LSN of snapshot reads between tables or seqs), so what the sync holds in memory is
one slice, whatever the backlog; each slice is read from the lake on its own
(`lake_source.read_slice`), and where the cuts fall changes nothing: a truncate that ends a
slice is no deletion of the rows snapshot reads bring back later (a reset's truncate at L1,
its rows at L2; `_read_slice`). A continuous caller's cache serves a small step in one slice, as
before. Each slice is one transaction, which also moves the checkpoint (and `_sync_partial`):

1. lock and read the position; stop when another sync moved it;
2. read every table's events in the slice, sorted by `(lsn, seq)`, deduplicated;
3. replay them over the source mirrors (`_src_<table>`) and write the mirrors back, only the
   rows of the keys the events touch (read by key, written by key);
4. upsert the dimension rows those events affect (a department or address change rebuilds
   every staff or counterparty row that uses it), before any fact points at them;
5. append the new fact versions (only versions whose projection changed), close the rows they
   supersede (`is_current` false, `valid_to` set; found by business key among the current
   rows), after adding the calendar days they need;
6. delete the dimension rows whose source row is gone, unless a fact row references them
   (history keeps pointing at the last known values);
7. set the position to the slice's end and commit.

Everything crosses to the engine in bulk: frames are staged as Arrow (DuckDB) or binary COPY
FROM (PostgreSQL, pgpq) and joined in SQL, large results come back as Arrow or COPY TO; no
statement or Python object per row. Mirrors and dimensions are upserted on the changed keys
only (DuckDB: by rowid in rowid order, see `sql.upsert`), facts closed by record id and appended.
What a slice costs grows with the slice, not with the warehouse, except DuckDB's scans for
keyed lookups (its ART indexes serve constraints, not joins) and
`max(record id)`. PostgreSQL checks each fact row's foreign keys one row at a time (its
triggers): most of what an append costs there. DuckDB declares none: the sync checks the new
fact rows' references itself, one anti-join per key, before the commit (`ddl`, `checks`).

A crash anywhere before a slice's commit leaves the warehouse as the previous slice left it;
a rerun goes on from there, and a rerun with the same `upto_lsn` does nothing. So a
warehouse that drops the connection mid-sync (a restart, a failover, an idle timeout) is
simply reconnected to and the sync run again, a few times with a growing pause: even a
connection lost during COMMIT is safe, the rerun finds the checkpoint moved or not.

Record ids are `max(record id) + 1, + 2, …` in `(source_lsn, source_seq, business key)` order,
assigned inside the transaction, so they are a function of the change log alone: a rolled
back sync leaves no gap (a sequence would: neither engine rolls sequences back) and one sync
or several over the same events give the same ids. The table's own sequence default is
advanced past them, for anyone inserting by hand.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import polars as pl
from lake.layout import LakeLayout
from warehouse_sync import bulk, steps
from warehouse_sync import transforms as tf
from warehouse_sync.bulk_source import bulk_loadable, snapshot_part
from warehouse_sync.lake_source import (
    cached_events,
    count_events,
    follow_from,
    read_changes,
    read_slice,
    snapshot_returns,
    snapshot_seqs,
)
from warehouse_sync.lake_types import follow_lake_types, opened_change_logs, widen_for_lake
from warehouse_sync.position import advance_position, complete_lsn, read_position
from warehouse_sync.schema import SOURCES, schema_ddl
from warehouse_sync.slices import SLICE_EVENTS, Position, plan_slices
from warehouse_sync.targets import Target

log = logging.getLogger("totes.sync")

RECONNECT_ATTEMPTS = 5
"""Syncs tried on a warehouse that keeps dropping the connection before giving up."""


@dataclass
class SyncResult:
    from_lsn: int
    to_lsn: int
    events: int = 0
    facts_appended: dict[str, int] = field(default_factory=dict)
    facts_closed: dict[str, int] = field(default_factory=dict)
    dimensions_upserted: dict[str, int] = field(default_factory=dict)
    dimensions_deleted: dict[str, int] = field(default_factory=dict)
    facts_rejected: dict[str, int] = field(default_factory=dict)
    """Fact versions set aside in `_sync_rejected` (a value does not fit its §3 column)."""
    slices: list[tuple[Position, int]] = field(default_factory=list)
    """Each committed slice: where it ended and how many events it held (those loaded in bulk
    are not: they stay in the engine)."""
    bulk_loaded: dict[str, int] = field(default_factory=dict)
    """Snapshot reads loaded in bulk (`bulk`), by fact table."""

    def add(self, applied: SyncResult, end: Position) -> None:
        """Count a committed slice in."""
        self.events += applied.events
        for mine, theirs in (
            (self.facts_appended, applied.facts_appended),
            (self.facts_closed, applied.facts_closed),
            (self.dimensions_upserted, applied.dimensions_upserted),
            (self.dimensions_deleted, applied.dimensions_deleted),
            (self.facts_rejected, applied.facts_rejected),
            (self.bulk_loaded, applied.bulk_loaded),
        ):
            for name, count in theirs.items():
                mine[name] = mine.get(name, 0) + count
        self.slices.append((end, applied.events - sum(applied.bulk_loaded.values())))

    @property
    def applied(self) -> bool:
        return self.to_lsn > self.from_lsn


def ensure_schema(target: Target) -> None:
    """Create whatever warehouse table is missing (idempotent)."""
    target.begin()
    try:
        for statement in schema_ddl(target.dialect):
            target.execute(statement)
        target.commit()
    except BaseException:
        target.rollback()
        raise
    target.schema_ready = True


def sync_once(
    lake: LakeLayout | str,
    target: Target,
    upto_lsn: int,
    *,
    today: date | None = None,
    tables: dict | None = None,
    slice_events: int = SLICE_EVENTS,
) -> SyncResult:
    """Apply every change-log event with `checkpoint < _lsn <= upto_lsn`, in slices of at
    most `slice_events` events (see `slices`), one transaction each, reconnecting and going
    on from the last committed slice when the warehouse drops the connection.

    `tables`, a dict kept by a continuous caller, caches the lake's change logs between runs."""
    layout = lake if isinstance(lake, LakeLayout) else LakeLayout(lake)
    result: SyncResult | None = None
    lost = False
    for attempt in range(1, RECONNECT_ATTEMPTS + 1):
        try:
            if lost:
                target.reconnect()
            return _sync_once(
                layout, target, upto_lsn, today=today, tables=tables, slice_events=slice_events, result=result
            )
        except _Resume as resume:
            error, result = resume.error, resume.result
            if attempt == RECONNECT_ATTEMPTS or not target.lost_connection(error):
                raise error from None
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            delay = min(2.0 ** (attempt - 1), 10.0)
            log.warning(
                "the warehouse dropped the connection (%s); reconnecting in %.0f s and syncing again", first, delay
            )
            time.sleep(delay)
            lost = True
    raise AssertionError("unreachable")


class _Resume(Exception):
    """A sync failed after committing the slices in `result`."""

    def __init__(self, error: Exception, result: SyncResult | None):
        super().__init__(str(error))
        self.error, self.result = error, result


def _sync_once(
    layout: LakeLayout,
    target: Target,
    upto_lsn: int,
    *,
    today: date | None,
    tables: dict | None,
    slice_events: int,
    result: SyncResult | None,
) -> SyncResult:
    today = today or datetime.now(timezone.utc).date()
    try:
        if not target.schema_ready:
            ensure_schema(target)
        widen_for_lake(target, layout, tables)
        start = read_position(target)
    except Exception as error:
        raise _Resume(error, result) from error
    if result is None:
        result = SyncResult(complete_lsn(start), max(complete_lsn(start), upto_lsn))
    end = Position.complete(upto_lsn, len(SOURCES))
    if end <= start:
        return result
    try:
        if tables is not None and start.is_complete(len(SOURCES)):
            held = cached_events(layout, start.lsn, upto_lsn, tables, slice_events)
            if held is not None and held <= slice_events:
                _apply_slice(
                    layout,
                    target,
                    start,
                    end,
                    today,
                    tables,
                    result,
                    lambda: (read_changes(layout, start.lsn, upto_lsn, tables), {}, {}),
                )
                return result
        opened: dict = opened_change_logs()  # brought up to date just now
        # Whether an LSN is all snapshot reads decides cuts inside it: those of a large slice,
        # and those between the pieces of a part loaded in bulk (`bulk.PIECE_ROWS`).
        counts = count_events(layout, start, upto_lsn, opened, larger_than=min(slice_events, bulk.PIECE_ROWS))
        parts = bulk.plan(
            counts,
            _fresh_sources(target) if bulk.BULK_LOADS else set(),
            lambda part: bulk_loadable(layout, start, part, opened),
        )
        ends = bulk.with_pieces(
            plan_slices(
                bulk.weighed(counts, parts),
                upto_lsn,
                len(SOURCES),
                lambda lsn, table: snapshot_seqs(layout, start, lsn, table, opened),
                slice_events,
            ),
            parts,
        )
        for end_ in ends:
            start_ = start
            sources = {list(SOURCES)[c.table] for c in counts if start_.lsn <= c.lsn <= end_.lsn}
            here = [part for part in parts if part.within(start_, end_)]
            if not _apply_slice(
                layout,
                target,
                start_,
                end_,
                today,
                tables,
                result,
                lambda: _read_slice(layout, start_, end_, upto_lsn, opened, sources, here),
            ):
                break  # another sync moved the checkpoint: the next run starts from there
            start = end_
        if tables is not None:
            follow_from(layout, upto_lsn, tables, slice_events)
    except Exception as error:
        if tables is not None:
            tables.clear()  # read again from wherever the checkpoint is
        raise _Resume(error, result) from error
    return result


def _apply_slice(
    layout: LakeLayout,
    target: Target,
    start: Position,
    end: Position,
    today: date,
    tables: dict | None,
    result: SyncResult,
    read,
) -> bool:
    """One transaction: the events in `(start, end]` (as `read()` returns them, with the
    keys snapshot reads bring back after the slice and the parts loaded in bulk:
    `_read_slice`), the position moved to `end`. False (nothing done) when the warehouse is
    not at `start`."""
    target.begin()
    try:
        if read_position(target, lock=True) != start:
            target.rollback()
            return False
        follow_lake_types(target, layout, tables)
        changes, returning, parts = read()
        applied = SyncResult(result.from_lsn, result.to_lsn)
        applied.events = sum(frame.height for frame in changes.values())
        steps.apply_changes(target, changes, today, applied, returning, parts)
        advance_position(target, end)
        target.commit()
    except BaseException:
        target.rollback()
        raise
    result.add(applied, end)
    return True


def _read_slice(
    layout: LakeLayout,
    start: Position,
    end: Position,
    upto_lsn: int,
    opened: dict,
    sources: set[str],
    parts: list[bulk.BulkPart] = (),  # type: ignore[assignment]
) -> tuple[dict[str, pl.DataFrame], dict[str, pl.Series], dict]:
    """The slice's events but those of `parts` (loaded in bulk: their files are returned, by
    source, instead), and for each fact source it truncates, the keys whose next event
    after the slice (up to `upto_lsn`) is a snapshot read. A reset truncates at L1 and writes
    the rows back at a later L2; a slice ending between the two must not delete the facts a
    single sync keeps (`_without_replaced_truncates`)."""
    loads = {part.source: (part, snapshot_part(layout, start, part, opened)) for part in parts}
    changes = read_slice(layout, start, end, opened, sources, {part.source: part.lsn for part in parts})
    returning = {}
    if end < Position.complete(upto_lsn, len(SOURCES)):
        for source, events in changes.items():
            if source in tf.FACT_BY_SOURCE and (events["_op"] == "t").any():
                returning[source] = snapshot_returns(layout, end, upto_lsn, source, opened)
    return changes, returning, loads


def _fresh_sources(target: Target) -> set[str]:
    """The fact sources the warehouse holds nothing of (`bulk.fresh_sources`)."""
    target.begin()
    try:
        return bulk.fresh_sources(target)
    finally:
        target.rollback()
