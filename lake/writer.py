"""The one entry point a stream processor calls: `LakeWriter.write_batch`.

    writer = LakeWriter("s3://bucket/lake")          # or a local folder
    result = writer.write_batch(shard_id, events, markers, on_rejected=dead_letter)

For each source table in the batch (tables are independent: one table's trouble never stops
another's events):

1. sort the events by `(lsn, seq)` and drop duplicates;
2. keep those the change log lacks (`ChangeLog.missing`: a lookup of the shard's high-water,
   plus a pruned read only for events at or below it);
3. convert them to typed columns, widening the log's columns first when the source changed
   a column's type (`lake.schemas`); events that cannot be stored (a source column named
   like a reserved one, a type or column names no lake table can hold, values that do not
   fit their type) are set aside as `Rejected`;
4. append the rest to `changes/<table>` (one commit, carrying the shard's new high-water);
5. merge into `tables/<table>` whatever the state has not consumed from this shard's log
   (one commit; after a crash between 4 and 5, the retry or the next batch does it), or put
   the merge off (`lake.merge_schedule`: a trickle's, or every one when paced by its cost).

Steps 1-4 run for every table first; then, if nothing was rejected or `on_rejected` took care
of every rejected group (e.g. wrote them to the dead letters), the highest marker of the batch
is recorded in `_progress`; step 5 comes last. The lake watermark (what the warehouse and the
reader wait for) is about the change logs, so it does not wait for the state merges; a state
table that a crash left behind its log is caught up by the retry or the next batch (step 5).
A retried batch repeats nothing: steps 2 and 5 make every step idempotent, and a commit
race (two writers on one shard) re-runs steps 2-4 rather than appending blindly.

What fails is sorted by whose fault it is (`change_events.errors.classify`): an outage
(S3 unreachable, a full disk, a commit race lost too often) raises, and the caller retries
the batch until the lake heals; anything else that stops a table's events from being
logged is about those events, so they become one `Rejected` (the reason is the error) and
the rest of the batch goes on. A state merge that fails for such a reason leaves the state
behind its log (`WriteResult.state_errors`) without failing the batch: the log is the record.

One writer may serve several shards at once (one thread per shard, like one Lambda
invocation per shard): each shard gets its own table handles, and state merges into one
table take turns instead of failing each other's commits.

Why one file (~420 lines): steps 1-5 share the batch's table handles and locks; when merges
are due is `lake.merge_schedule`, what they do `lake.state`, the typing `lake.schemas`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa

from change_events import ChangeEvent, TableSchema
from lake.changelog import ChangeLog, event_rows
from change_events.errors import is_failure, is_retryable
from lake.delta_io import Position, retry_on_conflict
from lake.errors import RefusedEventsError, UnapplicableEventsError, UnstorableSchemaError, ValueConversionError
from lake.layout import CHANGES, LakeLayout
from lake.progress import Progress
from lake.schemas import columns_to_widen, conform_rows, lake_schema, rewrite_with_types, source_fields
from lake.merge_schedule import MergeSchedule
from lake.state import PRIMARY_KEY_PROPERTY, StateTable, key_columns

log = logging.getLogger("totes.lake")
_MERGES = "merges:"
"""Prefix of the handles `merge_due_states` uses (it may run beside the shard's batches)."""


@dataclass
class Rejected:
    """Events of one table the lake could not store, and why (`str(error)`)."""

    table: str
    events: list[ChangeEvent]
    error: UnapplicableEventsError


@dataclass
class TableWrite:
    table: str
    received: int
    """Events of this table in the batch."""
    appended: int = 0
    """Events added to the change log (new or late)."""
    late: int = 0
    """Events at or below the shard's high-water that the log lacked (stored unless rejected)."""
    changes_version: int | None = None
    state_version: int | None = None
    """The state table's version after the merge; None when nothing was merged."""

    @property
    def duplicates(self) -> int:
        """Events the log already held (replays) or that repeated inside the batch."""
        return self.received - self.appended


@dataclass
class WriteResult:
    tables: dict[str, TableWrite] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    marker: int | None = None
    """The marker recorded for the shard by this call, if any."""
    state_errors: dict[str, str] = field(default_factory=dict)
    """table → why its state merge failed (its events are in the change log regardless)."""

    @property
    def appended(self) -> int:
        return sum(t.appended for t in self.tables.values())

    @property
    def commits(self) -> int:
        return sum((t.appended > 0) + (t.state_version is not None) for t in self.tables.values())


class _ShardTables:
    """One shard's handles on the lake's tables (a handle is not shared between threads)."""

    def __init__(self, layout: LakeLayout):
        self.progress = Progress(layout)
        self.logs: dict[str, ChangeLog] = {}
        self.states: dict[str, StateTable] = {}


class LakeWriter:
    """Writes change events of stream shards into the lake, exactly once. `write_batch` may be
    called concurrently for different shards."""

    def __init__(
        self,
        root: str | Path | LakeLayout,
        storage_options: dict[str, str] | None = None,
        *,
        today: Callable[[], date] | None = None,
        on_marker: Callable[[str, int], object] | None = None,
        state_delay: float = 0.0,
        merge_share: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.layout = root if isinstance(root, LakeLayout) else LakeLayout(root, storage_options)
        self.on_marker = on_marker
        """Called as (shard, lsn) once a marker is recorded: the lake watermark may have moved."""
        self.schedule = MergeSchedule(state_delay, merge_share, clock)
        """When state merges run (lake.merge_schedule): `state_delay` puts a trickle's merges off
        (0: every batch merges), `merge_share` > 0 runs every merge beside the batches, paced by
        its cost. Whoever sets either calls `merge_due_states` now and then."""
        self._clock = clock
        self.progress = Progress(self.layout)
        self._today = today or (lambda: datetime.now(timezone.utc).date())
        self._shards: dict[str, _ShardTables] = {}
        self._merge_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _tables(self, shard: str) -> _ShardTables:
        with self._lock:
            if shard not in self._shards:
                self._shards[shard] = _ShardTables(self.layout)
            return self._shards[shard]

    def change_log(self, table: str, shard: str = "") -> ChangeLog:
        tables = self._tables(shard)
        if table not in tables.logs:
            tables.logs[table] = ChangeLog(self.layout, table)
        return tables.logs[table]

    def state_table(self, table: str, shard: str = "") -> StateTable:
        tables = self._tables(shard)
        if table not in tables.states:
            tables.states[table] = StateTable(self.layout, table)
        return tables.states[table]

    def _merge_lock(self, table: str) -> threading.Lock:
        with self._lock:
            return self._merge_locks.setdefault(table, threading.Lock())

    # -- the entry point -----------------------------------------------------------------
    def write_batch(
        self,
        shard_id: str,
        events: Sequence[ChangeEvent],
        markers: Iterable[int] = (),
        *,
        on_rejected: Callable[[Rejected], None] | None = None,
    ) -> WriteResult:
        """Store `events` of shard `shard_id` (as delivered: any order, repeats allowed)
        in the change logs, record the batch's highest marker, then merge the state tables.

        Without `on_rejected`, a batch with rejected events records no marker (the caller
        dead-letters `result.rejected` and then calls `record_marker`)."""
        result = WriteResult()
        by_table: dict[str, list[ChangeEvent]] = {}
        for event in events:
            by_table.setdefault(event.table, []).append(event)
        appended: dict[str, pa.Table | None] = {}
        for table, table_events in by_table.items():
            try:
                write, rows, rejected = self._append(shard_id, table, table_events)
            except Exception as error:
                if is_retryable(error):
                    raise  # the lake's trouble, not the events': the caller retries the batch
                write, rows = TableWrite(table, received=len(table_events)), None
                rejected = [Rejected(table, table_events, RefusedEventsError(table, error))]
            result.tables[table] = write
            result.rejected.extend(rejected)
            appended[table] = rows
        if result.rejected and on_rejected is not None:
            for rejected in result.rejected:
                on_rejected(rejected)
        markers = list(markers)
        if markers and (not result.rejected or on_rejected is not None):
            if self.record_marker(shard_id, max(markers)):
                result.marker = max(markers)
        for table, table_events in by_table.items():
            keys = _keys(table_events)
            if keys and self.schedule.merge_now(table, shard_id, keys, appended[table]):
                error = self._merge_state(table, shard_id, keys, appended[table], result.tables[table])
                if error is not None:
                    result.state_errors[table] = error
        return result

    def _merge_state(
        self,
        table: str,
        shard_id: str,
        keys: list[str],
        appended: pa.Table | None,
        write: TableWrite | None = None,
        handles: str | None = None,
    ) -> str | None:
        """Merge the shard's unmerged appends into the table's state; the reason when it failed.
        `handles`: whose table handles to use (a handle is not shared between threads)."""
        handles = shard_id if handles is None else handles
        try:
            with self._merge_lock(table):
                started = self._clock()
                changes = self.change_log(table, handles)
                changes.refresh()  # another thread's handle may have appended since it looked
                version = self.state_table(table, handles).apply(shard_id, changes, keys, appended=appended)
        except Exception as error:
            if is_retryable(error):
                raise
            # The events are in the change log (the record, and what the watermark
            # and the warehouse follow): the state stays behind and is caught up
            # by a later batch once the cause is fixed; the shard keeps flowing.
            return f"{type(error).__name__}: {error}"
        self.schedule.merged(table, shard_id, started)
        if write is not None:
            write.state_version = version
        return None

    def merge_due_states(self, everything: bool = False) -> int:
        """Merge the states put off that are due (`lake.merge_schedule`), or all of them; how
        many were merged. It may run beside `write_batch` (its own table handles). A merge that
        fails stays due (logged): the change log holds its events."""
        merged = 0
        for (table, shard_id), keys in self.schedule.take_due(everything):
            try:
                error = self._merge_state(table, shard_id, keys, None, handles=_MERGES + shard_id)
            except BaseException as fault:  # noqa: BLE001 - the lake's trouble: the next call tries again
                if not is_failure(fault):
                    self.schedule.failed(table, shard_id, keys)
                    raise  # Ctrl-C, exit: the merge stays due for whoever merges next
                error = f"{type(fault).__name__}: {fault}"
            if error is None:
                merged += 1
            else:
                self.schedule.failed(table, shard_id, keys)
                log.warning("merging the state of %s (shard %s) failed, tried again later: %s", table, shard_id, error)
        return merged

    def find_unmerged(self, shards: Iterable[str]) -> int:
        """Put off a merge for every state table behind its change log for one of `shards` (a
        writer before this one was killed with merges put off); how many were found."""
        found = 0
        for table in self.layout.tables(CHANGES):
            state = StateTable(self.layout, table)
            delta = state.refresh()
            if delta is None or PRIMARY_KEY_PROPERTY not in delta.metadata().configuration:
                continue  # no state yet: the table's next batch creates it from the log
            keys = key_columns(delta.metadata().configuration[PRIMARY_KEY_PROPERTY])
            changes = ChangeLog(self.layout, table)
            changes.refresh()
            for shard in shards:
                if state.consumed(shard) < changes.appends(shard):
                    self.schedule.wait(table, shard, keys)
                    found += 1
        return found

    @property
    def states_put_off(self) -> int:
        """State merges waiting (`lake.merge_schedule`)."""
        return len(self.schedule)

    def record_marker(self, shard_id: str, lsn: int) -> bool:
        recorded = self._tables(shard_id).progress.record_marker(shard_id, lsn)
        if recorded and self.on_marker is not None:
            self.on_marker(shard_id, lsn)
        return recorded

    def lake_watermark(self, shards: Iterable[str]) -> int:
        return self.progress.lake_watermark(shards)

    # -- one table -----------------------------------------------------------------------
    def _append(
        self, shard: str, table: str, events: list[ChangeEvent]
    ) -> tuple[TableWrite, pa.Table | None, list[Rejected]]:
        """Steps 1-4 for one table: the rows it appended to the change log (None: none).

        A commit race (another writer on this table) re-runs steps 2-4: what the winner
        logged is then no longer missing, so two writers on one shard log each event once."""
        ordered = _unique_in_order(events)
        return retry_on_conflict(lambda: self._append_once(shard, table, ordered, len(events)))

    def _append_once(
        self, shard: str, table: str, ordered: list[ChangeEvent], received: int
    ) -> tuple[TableWrite, pa.Table | None, list[Rejected]]:
        write = TableWrite(table, received=received)
        log = self.change_log(table, shard)
        log.refresh()
        high_water = log.high_water(shard)
        missing, fresh = log.missing(ordered, high_water)
        write.late = len(missing) - fresh
        batch = log.appends(shard) + 1
        rows, rejected = self._convert(log, table, missing, shard, batch)
        if rows is not None:  # sorted by (lsn, seq): the last row is the highest
            last = Position(rows.column("_lsn")[-1].as_py(), rows.column("_seq")[-1].as_py())
            write.changes_version = log.append(shard, rows, max(high_water, last), batch)
            write.appended = rows.num_rows
        return write, rows, rejected

    def _convert(
        self, log: ChangeLog, table: str, events: list[ChangeEvent], shard: str, batch: int
    ) -> tuple[pa.Table | None, list[Rejected]]:
        """Typed change log rows of `events`, and the events set aside with the reason."""
        current = lake_schema(log.delta)
        today = self._today()
        pieces: list[pa.Table] = []
        rejected: list[Rejected] = []
        for schema, group in _by_schema(events).items():
            try:
                fields = _storable_fields(schema)
                widen = columns_to_widen(table, current, fields)
            except UnapplicableEventsError as error:
                rejected.append(Rejected(table, group, error))
                continue
            if widen:
                current = self._widen(log, widen, current)
            while group:
                try:
                    pieces.append(event_rows(group, schema, shard, batch, today))
                    break
                except ValueConversionError as error:
                    bad = set(error.rows)
                    rejected.append(Rejected(table, [group[i] for i in sorted(bad)], error))
                    group = [e for i, e in enumerate(group) if i not in bad]
            current = _extended(current, fields)
        if not pieces:
            return None, rejected
        rows = pa.concat_tables([conform_rows(p, current) for p in pieces], promote_options="default")
        return rows.sort_by([("_lsn", "ascending"), ("_seq", "ascending")]), rejected

    def _widen(self, log: ChangeLog, types: dict[str, pa.DataType], schema: pa.Schema) -> pa.Schema:
        """Widen the change log's columns in `types` (those it has yet); `schema` so widened."""
        stored = lake_schema(log.delta)
        if stored is not None:
            existing = {name: type_ for name, type_ in types.items() if name in stored.names}
            if existing:
                with self._merge_lock(log.table):
                    log.refresh()
                    again = columns_to_widen(
                        log.table, lake_schema(log.delta), [pa.field(n, t) for n, t in existing.items()]
                    )
                    if again:
                        rewrite_with_types(log.delta, again, f"changes/{log.table}")
        return pa.schema([f.with_type(types.get(f.name, f.type)) for f in schema])


def _storable_fields(schema: TableSchema) -> list[pa.Field]:
    """The lake fields of `schema`; UnstorableSchemaError when a column has no lake type
    (a type name no Arrow type fits) or names clash (Delta's names are case-insensitive)."""
    try:
        fields = source_fields(schema)
    except (ValueError, TypeError, pa.ArrowException) as error:
        raise UnstorableSchemaError(schema.table, f"{type(error).__name__}: {error}") from None
    seen: dict[str, str] = {}
    for column in fields:
        folded = column.name.casefold()
        if not column.name or folded in seen:
            raise UnstorableSchemaError(
                schema.table,
                f"column name {column.name!r} is empty or repeats {seen.get(folded)!r} (names are case-insensitive)",
            )
        seen[folded] = column.name
    return fields


def _unique_in_order(events: list[ChangeEvent]) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    last = None
    for event in sorted(events, key=lambda e: (e.lsn, e.seq)):
        if (event.lsn, event.seq) != last:
            out.append(event)
            last = (event.lsn, event.seq)
    return out


def _by_schema(events: list[ChangeEvent]) -> dict[TableSchema, list[ChangeEvent]]:
    groups: dict[TableSchema, list[ChangeEvent]] = {}
    for event in events:
        groups.setdefault(event.schema, []).append(event)
    return groups


def _keys(events: list[ChangeEvent]) -> list[str]:
    """The primary key of the table, from the newest schema in the batch."""
    newest = max(events, key=lambda e: (e.lsn, e.seq))
    return list(newest.schema.key_names)


def _extended(schema: pa.Schema | None, fields: list[pa.Field]) -> pa.Schema:
    if schema is None:
        return pa.schema(fields)
    return pa.schema(list(schema) + [f for f in fields if f.name not in schema.names])
