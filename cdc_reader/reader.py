"""The reader: one coordinator that runs the initial snapshot, then streams the slot.

Why one file (~880 lines): the coordinator's states (snapshot, streaming, re-reads, a lost
slot) share one position and one loop; splitting them is the planned reshaping of cdc_reader/.

It holds the only position that matters, the slot's confirmed LSN, and moves it only to
what the durability port says is durable downstream (DESIGN.md guarantee 1): until then the
WAL stays the system of record, and after a crash the reader simply resumes from the slot
and publishes again (downstream dedupes on `(lsn, seq)`).

Ports, so tests and later stages can plug in:
  * `EventSink`  where events go (the Kinesis publisher; a list in tests);
  * `Durability` up to which commit LSN everything is durable (Kinesis acknowledgements
    until the lake exists, then the lake watermark);
  * `StateStore` the little the reader must remember outside PostgreSQL: whether the
    snapshot of its slot finished.

A first snapshot cut off before all of it was published is never taken again from a new
slot: its rows may be downstream already, and rows deleted before a second snapshot would
stay alive there. The slot, never confirmed past the snapshot, still holds every change
since; the reader streams from it and reads every table again (resnapshot.py).

A slot PostgreSQL invalidated (`max_slot_wal_keep_size`) or that was dropped cannot be
streamed from, and the WAL since it was last confirmed is gone: the reader stops with
SlotLostError, one sentence naming `--reset`. Recovery is that one explicit run, not
automatic (the lake's history misses what happened meanwhile, which an operator should
know): a new slot whose snapshot begins with a truncate of every table at its consistent
point, then the rows at that same point (`ReaderState.replaces_lost_slot`), so downstream
every row older than the snapshot goes and those that still exist come back; a row deleted
meanwhile stays deleted, nothing is doubled.

The hot path (`_stream_rows`) hands row changes to the sink as EncodedChanges, their row
bytes copied from pgoutput into wire frames without being decoded (assembler.py); every
other message, and every message during a re-read, takes the general path through
`pgoutput.decode` and `Assembler.feed`.
"""

from __future__ import annotations

import json
import logging
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psycopg2
import psycopg2.errors
import psycopg2.extras

from cdc_reader import lifecycle, pgoutput
from cdc_reader.assembler import Assembler, LogicalMessage, SchemaChange, TransactionEnd
from cdc_reader.catalog import TableNotFound, TypeNames, read_table_schema
from cdc_reader.personal_data import NO_POLICY, Policy
from cdc_reader.resnapshot import IncrementalSnapshot
from cdc_reader.schema_changes import PendingRereads
from cdc_reader.snapshot import read_snapshot
from cdc_reader.source import SESSION_SETTINGS, SourceConnectionError, connect, database_name
from cdc_reader.source_setup import (
    SlotLostError, check_slot, create_slot, drop_slot, ensure_publication, lost_slot_message,
    slot_state,
)
from change_events import ChangeEvent, Op, format_lsn
from change_events.files import atomic_write_json
from change_events.wire import EncodedChange
from totesys.schema import TABLES

if TYPE_CHECKING:
    from lake.layout import LakeLayout

log = logging.getLogger("totes.reader")

HEARTBEAT_PREFIX = "totes-heartbeat"
# Every session that produces value text runs with these, so text is the same everywhere.
READER_SESSION = {**SESSION_SETTINGS, "TimeZone": "UTC"}


def session_options() -> str:
    return " ".join(f"-c {name}={value.replace(' ', '')}" for name, value in READER_SESSION.items())


class EventSink(Protocol):
    def add(self, event: ChangeEvent | EncodedChange) -> None: ...
    def end_transaction(self, commit_lsn: int) -> None: ...
    def poll(self, idle: bool = False) -> None:
        """Send what has waited long enough; called often. `idle`: the stream has nothing
        more right now, so waiting for more would only add latency."""
    def flush(self) -> None: ...
    def publish_watermark(self, lsn: int) -> None: ...


class Durability(Protocol):
    def durable_lsn(self) -> int:
        """Every event with a commit LSN up to this one is durable downstream."""


@dataclass
class ReaderState:
    slot: str = ""
    """The slot this state belongs to ("" until the reader notes it is about to create one)."""
    phase: lifecycle.Phase = field(default_factory=lifecycle.NoSlot)
    """Where the slot's snapshot stands (lifecycle.py): the one persisted state machine."""
    schema_rereads: list[str] = field(default_factory=list)
    """Tables to read again after a column type change, until that re-read is durable
    (schema_changes.PendingRereads)."""
    column_types: dict[str, dict[str, str]] = field(default_factory=dict)
    """The column types last seen of every table (table → column → type), so a type change
    made while the reader was away is still told from the first Relation message after it."""

    # What the phase says, as the flags the reader once kept (and older tools read).
    @property
    def snapshot_lsn(self) -> int | None:
        return getattr(self.phase, "lsn", None)

    @property
    def snapshot_published(self) -> bool:
        """Every snapshot event was handed on (or written to the lake): a restart resumes
        from the slot instead of taking the snapshot again."""
        return lifecycle.snapshot_handed_on(self.phase)

    @property
    def snapshot_done(self) -> bool:
        """The snapshot is durable downstream (in the lake)."""
        return lifecycle.snapshot_finished(self.phase)

    @property
    def rereads(self) -> list[str]:
        """Tables being read again because a snapshot through the sink was cut off."""
        return list(self.phase.tables) if isinstance(self.phase, lifecycle.Recovering) else []

    @property
    def replaces_lost_slot(self) -> bool:
        """This slot's snapshot replaces what a lost slot left downstream (`--reset`): it begins
        with a truncate of every table at its consistent point, so a row deleted while no slot
        was reading does not stay alive in the lake or the warehouse."""
        return self.phase.replaces_lost_slot

    def to_json(self) -> dict:
        return {"slot": self.slot, "phase": lifecycle.to_json(self.phase), **lifecycle.legacy_flags(self.phase),
                "schema_rereads": self.schema_rereads, "column_types": self.column_types}

    @classmethod
    def from_json(cls, data: dict) -> "ReaderState":
        """A saved state; one written before the phase existed is migrated from its flags."""
        phase = lifecycle.from_json(data["phase"]) if "phase" in data else lifecycle.from_legacy(data)
        return cls(slot=data.get("slot", ""), phase=phase, schema_rereads=list(data.get("schema_rereads", [])),
                   column_types=dict(data.get("column_types", {})))


class StateStore(Protocol):
    def load(self) -> ReaderState: ...
    def save(self, state: ReaderState) -> None: ...


class FileStateStore:
    """ReaderState in a JSON file, replaced atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> ReaderState:
        try:
            return ReaderState.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return ReaderState()

    def save(self, state: ReaderState) -> None:
        atomic_write_json(self.path, state.to_json())


@dataclass(frozen=True)
class ReaderConfig:
    slot: str = "totes_cdc"
    publication: str = "totes_cdc"
    schema: str = "public"
    tables: tuple[str, ...] = TABLES
    heartbeat_seconds: float = 10.0
    watermark_seconds: float = 1.0
    feedback_seconds: float = 1.0
    idle_wait_seconds: float = 0.02
    """How long the reader waits for the source, when it has nothing to read, before it looks
    after the sink again (settles Kinesis's answers, starts the next call): a short wait
    keeps an idle stream's last events from waiting on it."""
    snapshot_chunk_rows: int = 5_000
    snapshot_connections: int = 4
    """Connections that read the bulk snapshot's chunks in parallel (bulk_snapshot.py)."""
    snapshot_chunk_pages: int = 2048
    """Heap pages per chunk of the bulk snapshot (16 MiB of 8 KiB pages): the unit of
    parallel work, of resuming after a kill, and about the most a connection holds."""
    snapshot_batch_bytes: int = 8 << 20
    """COPY output parsed at a time (bulk snapshot)."""
    resnapshot: tuple[str, ...] = ()
    """Tables to read again, chunk by chunk, while streaming (see resnapshot.py)."""
    reset: bool = False
    """Start over after a lost slot (`--reset`): drop the invalidated slot, create a new one
    and take a snapshot that replaces every table downstream."""
    personal_data: Policy = NO_POLICY
    """What of personal data leaves the reader (personal_data.py): on every path out."""


@dataclass
class ReaderMetrics:
    events: int = 0
    transactions: int = 0
    snapshot_events: int = 0
    bytes_received: int = 0
    confirmed_lsn: int = 0
    received_lsn: int = 0
    last_commit_ts: float | None = None
    schema_rereads: int = 0
    """Tables read again because a column type change may have rewritten their values."""
    started: float = field(default_factory=time.time)


class _Progress:
    """Which ended transactions are not yet durable, and how far the slot may be confirmed."""

    def __init__(self):
        self.pending: deque[tuple[int, int]] = deque()  # (commit_lsn, end_lsn), in order
        self.in_transaction = False
        self.confirmable = 0

    def ended(self, commit_lsn: int, end_lsn: int) -> None:
        self.pending.append((commit_lsn, end_lsn))

    def advance(self, durable_lsn: int, received_lsn: int) -> int:
        while self.pending and self.pending[0][0] <= durable_lsn:
            self.confirmable = max(self.confirmable, self.pending.popleft()[1])
        if not self.pending and not self.in_transaction:
            # Nothing of ours is in flight: WAL up to what we received holds nothing we need.
            self.confirmable = max(self.confirmable, received_lsn)
        return self.confirmable


@dataclass
class _Recovery:
    """A cut-off first snapshot being made up for by re-reading `tables` (schema-qualified)."""
    tables: set[str]
    reread_before: int
    """How many entries `Reader.reread` had when the recovery began (earlier ones do not count)."""
    finished_at: int | None = None
    """`Reader._handed_over` when every re-read was first seen finished."""
    handed_over: int | None = None
    """A commit LSN that covers every re-read row, all of them handed to the sink."""


class _WatermarksHeld:
    """The sink, except that watermarks wait for `ready(lsn)`. While a cut-off snapshot is
    made up for, a lake watermark would let the warehouse show tables half read again (and
    `--until-caught-up` stop before they are whole); the first snapshot never allows that."""

    def __init__(self, sink: EventSink, ready: Callable[[int], bool]):
        self.inner = sink
        self.add, self.end_transaction, self.poll, self.flush = sink.add, sink.end_transaction, sink.poll, sink.flush
        self._ready = ready

    def publish_watermark(self, lsn: int) -> None:
        if self._ready(lsn):
            self.inner.publish_watermark(lsn)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class _KeepsSchemaBook:
    """The state store, except that every state saved, however it was built, carries the
    reader's column types and pending type-change re-reads (schema_changes.py)."""

    def __init__(self, inner: StateStore, reader: "Reader"):
        self.inner, self._reader = inner, reader

    def load(self) -> ReaderState:
        return self.inner.load()

    def save(self, state: ReaderState) -> None:
        reader = self._reader
        if reader._type_rereads is not None:
            state = replace(state, column_types=reader._column_types, schema_rereads=reader._type_rereads.tables)
        self.inner.save(state)


class Reader:
    def __init__(self, dsn: str, sink: EventSink, durability: Durability, state: StateStore,
                 config: ReaderConfig = ReaderConfig(), *, lake: LakeLayout | None = None):
        self.dsn = dsn
        self.lake = lake
        """Where the initial snapshot goes straight to (bulk_snapshot.py); without a lake it
        goes through the sink, as change events."""
        self.bulk_chunk_hook = None  # tests: called as (table, chunk, step) on the bulk path
        self.bulk_stats = None
        self.sink = sink
        self.durability = durability
        self.state = _KeepsSchemaBook(state, self)
        self.config = config
        self.metrics = ReaderMetrics()
        # Both outlive a connection: after a reconnect the slot sends again what the sink
        # already has, and the sink must not get it twice.
        self._progress = _Progress()
        self._handed_over = 0
        self._resnapshots = [t for t in config.resnapshot]
        self.reread: list[str] = []
        """Tables whose re-read (`ReaderConfig.resnapshot`, or making up for a cut-off
        snapshot) has finished, in order."""
        self.resnapshot_hook = None  # tests: runs inside each re-read chunk's window
        self.snapshot_progress = None  # called as (table, rows read so far) during the snapshot
        self._recovery: _Recovery | None = None
        self._type_rereads: PendingRereads | None = None
        self._column_types: dict[str, dict[str, str]] = {}
        self.streaming = threading.Event()
        """Set once the slot exists and changes are being streamed."""
        self._reset_pending = config.reset  # once per process, not at every reconnect
        self._markers_from = 0

    # -- set-up --------------------------------------------------------------------------
    def _table_schema(self, conn, schema: str, table: str):
        """A table as it leaves the reader: without the columns its policy drops."""
        return self.config.personal_data.visible(read_table_schema(conn, schema, table))

    def _connect(self, **kwargs):
        return connect(self.dsn, options=session_options(), application_name="totes-reader", **kwargs)

    def prepare(self, conn) -> ReaderState:
        """Publication present, and a slot we can resume from (or none yet)."""
        cfg = self.config
        dropped = {}
        for table in (t for t in cfg.tables if f"{cfg.schema}.{t}" in cfg.personal_data.rules):
            try:  # a wrong rule is one sentence before anything is read; a missing table, below
                cfg.personal_data.check(read_table_schema(conn, cfg.schema, table))
            except TableNotFound:
                continue
            dropped[table] = cfg.personal_data.dropped(f"{cfg.schema}.{table}")
        ensure_publication(conn, cfg.publication, cfg.schema, cfg.tables, dropped=dropped)
        state = self.state.load()
        slot = slot_state(conn, cfg.slot)
        if self._reset_pending:
            state, slot = self._reset(conn, state, slot)
        if slot is not None and slot.lost:
            raise SlotLostError(lost_slot_message(cfg.slot, slot.why_lost()))
        if slot is None and state.slot == cfg.slot and state.snapshot_lsn is None:
            # Killed while creating the slot, before it existed: nothing was read yet.
            phase = state.phase
            state = ReaderState(phase=lifecycle.slot_missing(phase) if isinstance(phase, lifecycle.SlotPending)
                                else lifecycle.NoSlot(state.replaces_lost_slot))
            self.state.save(state)
        if slot is None and state.slot == cfg.slot:
            # Even a cut-off snapshot may have rows downstream: a new one could leave rows
            # deleted in between alive there, so starting over is the operator's call.
            raise SlotLostError(lost_slot_message(
                cfg.slot, "is gone (dropped, or invalidated for retaining too much WAL)"))
        if slot is not None and state.slot == cfg.slot and state.replaces_lost_slot \
                and self._snapshot_cut_off(state) and self._recovery is None and not _bulk_snapshotting(state):
            # A replacing snapshot cut off: take it again from a new slot. Its truncates
            # remove whatever of this one got downstream.
            log.warning("the replacing snapshot of slot %s was cut off: taking it again from a new slot", cfg.slot)
            drop_slot(conn, cfg.slot)
            state, slot = ReaderState(phase=lifecycle.reset(state.phase, slot_dropped=True)), None
            self.state.save(state)
        if slot is not None:
            check_slot(slot, database_name(self.dsn) or slot.database)
            if state.slot != cfg.slot:
                # Not created by this reader's state: resume from it, never drop it.
                log.info("resuming from existing slot %s", cfg.slot)
                state = ReaderState(slot=cfg.slot, phase=lifecycle.adopt())
                self.state.save(state)
            elif self._snapshot_cut_off(state) and self._recovery is None:
                if isinstance(state.phase, lifecycle.SlotPending):
                    # Killed between creating the slot and noting where its snapshot stands:
                    # never confirmed, the slot still stands at its consistent point.
                    state = replace(state, phase=lifecycle.slot_created(
                        state.phase, slot.confirmed_flush_lsn, bulk=self._bulk(state)))
                if isinstance(state.phase, lifecycle.Snapshotting) and state.phase.bulk:
                    state = self._resume_bulk_snapshot(conn, state)
                else:
                    state = self._recover_snapshot(state)
        return state

    def _reset(self, conn, state: ReaderState, slot):
        """`--reset`: a lost slot of ours is dropped, and the snapshot of the next one replaces
        every table downstream. A healthy slot is resumed from as it is."""
        self._reset_pending = False
        cfg = self.config
        if slot is not None and slot.lost:
            log.warning("dropping replication slot %s: it %s", cfg.slot, slot.why_lost())
            drop_slot(conn, cfg.slot)
            slot = None
        if slot is None:
            state = ReaderState(phase=lifecycle.reset(state.phase, slot_dropped=True))
            self.state.save(state)
            log.warning("starting over: a new slot, and a snapshot that replaces every table downstream")
        return state, slot

    def _snapshot_cut_off(self, state: ReaderState) -> bool:
        """Our slot's first snapshot never reached the sink whole (or is being made up for)."""
        handed_over = state.snapshot_lsn is not None and self._handed_over >= state.snapshot_lsn
        return bool(state.rereads) or not (state.snapshot_done or state.snapshot_published or handed_over)

    def _recover_snapshot(self, state: ReaderState) -> ReaderState:
        """Keep the slot and read every table again while streaming from it.

        Part of the cut-off snapshot may be downstream already (stamped with the slot's
        consistent LSN), so a new snapshot from a new slot would leave rows deleted in
        between alive there. The slot was never confirmed past that LSN: streaming from it
        delivers every later change, deletes included, and the re-reads fill in the rows the
        snapshot never handed on. Nothing is confirmed until those re-reads are durable."""
        cfg = self.config
        tables = list(cfg.tables)
        log.warning("the snapshot of slot %s was cut off before all of it was published: keeping the slot, "
                    "streaming from %s and reading all %d tables again", cfg.slot,
                    format_lsn(state.snapshot_lsn or 0), len(tables))
        state = ReaderState(slot=cfg.slot, phase=lifecycle.cut_off(state.phase, tuple(tables)))
        self.state.save(state)
        self._resnapshots += [t for t in tables if t not in self._resnapshots]
        self._recovery = _Recovery({f"{cfg.schema}.{t}" for t in tables}, len(self.reread))
        return state

    def _rereads_handed_over(self) -> int | None:
        """A commit LSN at or above every recovery re-read row, once all of them were handed
        to the sink; None until then.

        A table's last rows go out inside the transaction of its last high watermark, which
        may not have ended yet (after a reconnect it ends only when the slot sends it again).
        Every transaction before it has ended, so the first one to end after all re-reads
        finished is that one or a later one."""
        recovery = self._recovery
        if recovery is None:
            return None
        if recovery.finished_at is None:
            if recovery.tables - set(self.reread[recovery.reread_before:]):
                return None
            recovery.finished_at = self._handed_over
        if recovery.handed_over is None and self._handed_over > recovery.finished_at:
            recovery.handed_over = self._handed_over
        return recovery.handed_over

    def _hold_watermarks_while_recovering(self, state: ReaderState) -> None:
        """Hold watermarks back until every recovery re-read was handed on, and, after a bulk
        snapshot resumed at a later LSN, below that LSN (the lake holds chunks read there).
        The sink is swapped only between connections, so the streaming loop never sees it
        change."""
        phase = state.phase
        self._markers_from = phase.durable_at if isinstance(phase, lifecycle.Published) else 0
        hold = self._recovery is not None or self._markers_from > (state.snapshot_lsn or 0)
        held = isinstance(self.sink, _WatermarksHeld)
        if hold and not held:
            self.sink = _WatermarksHeld(
                self.sink, lambda lsn: (self._recovery is None or self._rereads_handed_over() is not None)
                and lsn >= self._markers_from)
        elif not hold and held:
            self.sink = self.sink.inner

    def _settle_snapshot(self, state: ReaderState, durable: int) -> ReaderState:
        """The snapshot is done once it is durable downstream; only from then on is the slot
        confirmed. After a cut-off first snapshot, that takes every re-read being durable."""
        if state.snapshot_done or state.snapshot_lsn is None:
            return state
        needed = self._rereads_handed_over() if isinstance(state.phase, lifecycle.Recovering) else None
        phase = lifecycle.durable(state.phase, durable, needed)
        if phase == state.phase:
            return state
        state = ReaderState(slot=self.config.slot, phase=phase)
        self.state.save(state)
        if self._recovery is not None:
            log.info("every table was read again and is durable: the snapshot at %s is complete",
                     format_lsn(state.snapshot_lsn))
            self._recovery = None
        else:
            log.info("snapshot at %s is durable", format_lsn(state.snapshot_lsn))
        return state

    def _bulk(self, state: ReaderState) -> bool:
        """Whether this slot's snapshot goes straight into the lake (bulk_snapshot.py), as
        it does whenever there is a lake. A snapshot that replaces a lost slot's tables sends
        only its truncates through the sink (`_hand_on_truncates`)."""
        return self.lake is not None

    def _snapshot(self, replication_cursor, conn) -> int:
        cfg = self.config
        loaded = self.state.load()
        replaces = loaded.replaces_lost_slot
        # Noted first, so a reader killed right after creating the slot knows the slot is its
        # own, with a snapshot still to make up for, rather than one to resume from as it is.
        pending = ReaderState(slot=cfg.slot, phase=lifecycle.note_slot(lifecycle.NoSlot(replaces)))
        self.state.save(pending)
        bulk = self._bulk(pending)
        new = create_slot(replication_cursor, cfg.slot)
        log.info("slot %s created at %s; reading the snapshot%s", cfg.slot, format_lsn(new.consistent_lsn),
                 " straight into the lake" if bulk else "")
        schemas = [self._table_schema(conn, cfg.schema, t) for t in cfg.tables]
        conn.commit()
        self._column_types.clear()
        self._column_types.update({s.table: {c.name: c.type_name for c in s.columns} for s in schemas})
        if bulk:
            from cdc_reader.bulk_snapshot import plan_tables

            plans = plan_tables(conn, schemas, cfg.snapshot_chunk_pages)
            state = ReaderState(slot=cfg.slot, phase=lifecycle.slot_created(
                pending.phase, new.consistent_lsn, bulk=True, tables=tuple(p.schema.table for p in plans),
                chunks=tuple(p.chunks for p in plans), chunk_pages=cfg.snapshot_chunk_pages))
            self.state.save(state)
            if replaces:
                written_at = self._replace_in_bulk(conn, state.phase, plans)
            else:
                self._write_bulk(state.phase, plans, new.snapshot_name, new.consistent_lsn)
                self.sink.end_transaction(new.consistent_lsn)  # none of its events went this way
                written_at = new.consistent_lsn
            self._handed_over = new.consistent_lsn
            self.state.save(ReaderState(slot=cfg.slot, phase=lifecycle.written(state.phase, written_at)))
            if written_at == new.consistent_lsn:  # else held below written_at, as after a resume
                self.sink.publish_watermark(new.consistent_lsn)
            return new.consistent_lsn

        state = ReaderState(slot=cfg.slot, phase=lifecycle.slot_created(pending.phase, new.consistent_lsn, bulk=False))
        self.state.save(state)
        first_seq = 0
        if replaces:
            # Everything downstream older than this snapshot goes; the snapshot's own rows
            # (later seq at the same LSN) stay. See replaces_lost_slot.
            self._add_truncates(schemas, new.consistent_lsn)
            first_seq = len(schemas)

        def emit(events: list[EncodedChange]) -> None:
            for event in events:
                self.sink.add(event)
            self.metrics.snapshot_events += len(events)

        read_snapshot(conn, new.snapshot_name, schemas, new.consistent_lsn, emit,
                      chunk_rows=cfg.snapshot_chunk_rows, progress=self.snapshot_progress, first_seq=first_seq,
                      policy=cfg.personal_data)
        self.sink.end_transaction(new.consistent_lsn)
        self._handed_over = new.consistent_lsn
        self.sink.flush()
        # From here on a restart simply resumes from the slot; before, it resumes too but
        # reads every table again (`_recover_snapshot`).
        self.state.save(ReaderState(slot=cfg.slot, phase=lifecycle.written(state.phase)))
        self.sink.publish_watermark(new.consistent_lsn)
        return new.consistent_lsn

    def _write_bulk(self, phase: lifecycle.Snapshotting, plans: list, snapshot_name: str, lsn: int) -> None:
        """The chunks of `plans` the lake lacks, read under `snapshot_name` and stamped `lsn`."""
        from cdc_reader.bulk_snapshot import BulkSnapshot  # pyarrow and deltalake: only when used

        cfg = self.config
        bulk = BulkSnapshot(self.dsn, self.lake, phase.lsn, plans, chunk_pages=phase.chunk_pages,
                            connections=cfg.snapshot_connections, batch_bytes=cfg.snapshot_batch_bytes,
                            progress=self.snapshot_progress, policy=cfg.personal_data)
        bulk.chunk_hook = self.bulk_chunk_hook
        self.bulk_stats = bulk.stats
        written = bulk.run_under(snapshot_name, lsn)
        self.metrics.snapshot_events += bulk.stats.rows
        log.info("snapshot: %d chunks, %d rows written to the lake at %s", written, bulk.stats.rows, format_lsn(lsn))

    def _add_truncates(self, schemas: list, lsn: int) -> None:
        for seq, schema in enumerate(schemas):
            self.sink.add(ChangeEvent(schema, Op.TRUNCATE, lsn, seq, None, None, {}))

    def _replace_in_bulk(self, conn, phase: lifecycle.Snapshotting, plans: list) -> int:
        """A snapshot replacing a lost slot's tables, with a lake: a truncate of every table
        at the slot's consistent LSN L1 goes through the sink (flushed: it is not in the WAL,
        so a restart sends it again), and the rows straight into the lake, read under a
        temporary slot's snapshot at L2 > L1, as a resumed bulk snapshot's are (rows at L1
        would share their `(lsn, seq)` with the truncates). Downstream the truncates remove
        every row older than L1, a row deleted while no slot was reading among them; the
        rows at L2 are newer than them and than every change the stream brings between L1
        and L2. Returns L2: watermarks stay below it until the lake holds it all."""
        self._add_truncates([p.schema for p in plans], phase.lsn)
        self.sink.end_transaction(phase.lsn)
        self.sink.flush()
        self._handed_over = max(self._handed_over, phase.lsn)
        self._heartbeat(conn)  # a committed WAL record past L1, so L2 > L1
        return self._write_bulk_under_new_snapshot(phase, plans)

    def _write_bulk_under_new_snapshot(self, phase: lifecycle.Snapshotting, plans: list) -> int:
        """The chunks of `plans` the lake lacks, read under a new exported snapshot from a
        temporary slot and stamped with its LSN, which is returned."""
        cfg = self.config
        replication = self._connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
        try:
            temporary = create_slot(replication.cursor(), f"{cfg.slot}_resume", temporary=True)
            if temporary.consistent_lsn <= phase.lsn:
                raise RuntimeError(f"a new snapshot at {format_lsn(temporary.consistent_lsn)} is not past the "
                                   f"slot's {format_lsn(phase.lsn)}")
            log.warning("reading the chunks the lake lacks under a new snapshot at %s, then streaming from %s",
                        format_lsn(temporary.consistent_lsn), format_lsn(phase.lsn))
            self._write_bulk(phase, plans, temporary.snapshot_name, temporary.consistent_lsn)
        finally:
            replication.close()  # the temporary slot goes with its connection
        return temporary.consistent_lsn

    def _resume_bulk_snapshot(self, conn, state: ReaderState) -> ReaderState:
        """A bulk snapshot cut off (a kill): its exported snapshot is gone, the slot is not.
        The chunks the lake lacks are read under a new exported snapshot from a temporary
        slot, stamped with its LSN; the stream then starts from the slot's consistent point
        as before (bulk_snapshot.py says why that loses and doubles nothing)."""
        from cdc_reader.bulk_snapshot import TablePlan, plan_tables

        cfg = self.config
        phase = state.phase
        if phase.tables:
            by_name = {t: self._table_schema(conn, *t.split(".", 1)) for t in phase.tables}
            plans = [TablePlan(by_name[t], n) for t, n in zip(phase.tables, phase.chunks)]
        else:  # killed before the plan was noted: nothing was written under it
            plans = plan_tables(conn, [self._table_schema(conn, cfg.schema, t) for t in cfg.tables],
                                cfg.snapshot_chunk_pages)
            phase = replace(phase, tables=tuple(p.schema.table for p in plans),
                            chunks=tuple(p.chunks for p in plans), chunk_pages=cfg.snapshot_chunk_pages)
            self.state.save(replace(state, phase=phase))
        conn.commit()
        self._column_types.update({p.schema.table: {c.name: c.type_name for c in p.schema.columns} for p in plans})
        log.warning("the snapshot of slot %s was cut off: resuming it", cfg.slot)
        if phase.replaces_lost_slot:
            written_at = self._replace_in_bulk(conn, phase, plans)
        else:
            written_at = self._write_bulk_under_new_snapshot(phase, plans)
        state = ReaderState(slot=cfg.slot, phase=lifecycle.written(phase, written_at))
        self.state.save(state)
        return state

    # -- streaming -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Snapshot if needed, then stream until `stop` is set. Raises on setup problems;
        connection failures propagate so a supervisor can reconnect with backoff."""
        cfg = self.config
        conn = self._connect()
        replication = None
        try:
            if self._type_rereads is None:  # first run: take up what a previous reader left
                saved = self.state.load()
                self._column_types = saved.column_types
                self._type_rereads = PendingRereads(saved.schema_rereads)
                self._resnapshots += [t for t in self._type_rereads.tables if t not in self._resnapshots]
            state = self.prepare(conn)
            replication = self._connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
            cur = replication.cursor()
            start_lsn = 0
            if slot_state(conn, cfg.slot) is None:
                start_lsn = self._snapshot(cur, conn)
                state = self.state.load()
            self._hold_watermarks_while_recovering(state)
            self._stream(cur, conn, state, start_lsn, stop)
        finally:
            for c in (replication, conn):
                if c is not None and not c.closed:
                    c.close()

    def _stream(self, cur, conn, state: ReaderState, start_lsn: int, stop: threading.Event) -> None:
        cfg = self.config
        try:
            cur.start_replication(
                slot_name=cfg.slot, decode=False, start_lsn=start_lsn,
                options={"proto_version": "1", "publication_names": cfg.publication, "messages": "true"},
            )
        except (psycopg2.errors.ObjectNotInPrerequisiteState, psycopg2.errors.UndefinedObject) as error:
            # Invalidated or dropped between the check in `prepare` and here.
            raise SlotLostError(lost_slot_message(cfg.slot, f"cannot stream ({error.diag.message_primary})")) from None
        self.streaming.set()
        assembler = Assembler(TypeNames(conn), lambda s, t: read_table_schema(conn, s, t).key_names,
                              self._column_types, policy=cfg.personal_data)
        progress = self._progress
        progress.in_transaction = False
        if state.snapshot_lsn is not None and not state.snapshot_done and not progress.pending:
            progress.ended(state.snapshot_lsn, state.snapshot_lsn)
        last_commit = max(start_lsn, self._handed_over)
        marked = 0
        now = time.monotonic()
        next_feedback = next_watermark = now
        next_heartbeat = now + cfg.heartbeat_seconds
        confirmed = 0

        rereading: IncrementalSnapshot | None = None
        bulk_reread = None  # a `--resnapshot` table read straight into the lake (bulk_reread.py)
        try:
            while not stop.is_set():
                # Row changes take the fast path, except during a re-read, whose bookkeeping
                # reads every event's key.
                if rereading is None:
                    message, drained = self._stream_rows(cur, assembler, progress, next_feedback)
                else:
                    message = self._read(cur)
                    drained = message is None
                if message is not None:
                    payload = message.payload
                    self.metrics.bytes_received += len(payload)
                    if message.data_start > self.metrics.received_lsn:
                        self.metrics.received_lsn = message.data_start
                    for out in assembler.feed(pgoutput.decode(payload)):
                        if rereading is not None:
                            rows = rereading.observe(out)
                            if rows:
                                for event in assembler.read_events(rereading.schema, rows):
                                    self.sink.add(event)
                                progress.in_transaction = True
                            if rereading.done:
                                log.info("re-read %s: %d rows", rereading.schema.table, rereading.rows_emitted)
                                self.reread.append(rereading.schema.table)
                                name = rereading.schema.table.partition(".")[2]
                                if name not in self._resnapshots:  # else a type change came during it
                                    self._type_rereads.finished(name, self._handed_over)
                                rereading = None
                        if isinstance(out, ChangeEvent):
                            if out.lsn <= self._handed_over:
                                continue  # sent again after a reconnect; the sink has it
                            progress.in_transaction = True
                            self.sink.add(out)
                            self.metrics.events += 1
                        elif isinstance(out, TransactionEnd):
                            progress.in_transaction = False
                            if out.commit_lsn <= self._handed_over:
                                continue
                            self.sink.end_transaction(out.commit_lsn)
                            self._handed_over = out.commit_lsn
                            progress.ended(out.commit_lsn, out.end_lsn)
                            last_commit = out.commit_lsn
                            self.metrics.transactions += 1
                            self.metrics.last_commit_ts = out.commit_ts.timestamp()
                        elif isinstance(out, LogicalMessage) and out.prefix == HEARTBEAT_PREFIX:
                            next_heartbeat = time.monotonic() + cfg.heartbeat_seconds
                        elif isinstance(out, SchemaChange):
                            self._schema_changed(out)
                    if time.monotonic() < next_feedback:
                        continue
                elif drained:
                    self.metrics.received_lsn = max(self.metrics.received_lsn, cur.wal_end)
                    if rereading is None and not self._resnapshots:
                        select.select([cur], [], [], cfg.idle_wait_seconds)

                if bulk_reread is not None and bulk_reread.finished:
                    finished, bulk_reread = bulk_reread, None
                    self._finish_bulk_reread(finished)
                # Re-reads go chunk by chunk between messages, so a busy stream never starves them.
                if rereading is None and bulk_reread is None and self._resnapshots:
                    table = self._resnapshots.pop(0)
                    if self._rereads_in_bulk(table):
                        bulk_reread = self._start_bulk_reread(self._table_schema(conn, cfg.schema, table))
                        conn.commit()
                    else:
                        rereading = IncrementalSnapshot(self._table_schema(conn, cfg.schema, table),
                                                        cfg.snapshot_chunk_rows, self.resnapshot_hook)
                        conn.commit()
                        log.info("re-reading %s while streaming", rereading.schema.table)
                if rereading is not None and rereading.wants_chunk:
                    rereading.read_chunk(conn)

                self.sink.poll(idle=drained)
                now = time.monotonic()
                if now >= next_watermark and last_commit > marked and not progress.in_transaction \
                        and (bulk_reread is None or bulk_reread.allows_watermark(last_commit)):
                    self.sink.publish_watermark(last_commit)
                    marked = last_commit
                    next_watermark = now + cfg.watermark_seconds
                if now >= next_feedback:
                    durable = self.durability.durable_lsn()
                    state = self._settle_snapshot(state, durable)
                    if self._type_rereads.settle(durable):
                        self._save_type_rereads()
                    target = progress.advance(durable, self.metrics.received_lsn) if state.snapshot_done else 0
                    # Nor is the slot confirmed at or past a bulk re-read's LSN before it is written.
                    if target > confirmed and (bulk_reread is None or bulk_reread.allows_watermark(target)):
                        cur.send_feedback(flush_lsn=target, reply=True)
                        confirmed = self.metrics.confirmed_lsn = target
                    next_feedback = now + cfg.feedback_seconds
                if now >= next_heartbeat:
                    self._heartbeat(conn)
                    next_heartbeat = now + cfg.heartbeat_seconds
        except BaseException:
            if rereading is not None and not rereading.done:
                # Start that table's re-read over on the next connection: it is idempotent.
                self._resnapshots.insert(0, rereading.schema.table.partition(".")[2])
            if bulk_reread is not None:
                self._finish_bulk_reread(bulk_reread, quietly=True)
            raise

        if bulk_reread is not None:
            self._finish_bulk_reread(bulk_reread)  # before the last watermark, which may pass its LSN
        self._shutdown(cur, progress, state)

    def _rereads_in_bulk(self, table: str) -> bool:
        """With a lake, a `--resnapshot` table and one read again after a type change go
        straight into it (bulk_reread.py). Re-reads making up for a cut-off snapshot through
        the sink (never one of the lake's) stay on the stream."""
        return self.lake is not None and self._recovery is None

    def _start_bulk_reread(self, schema):
        from cdc_reader.bulk_reread import BulkReread

        cfg = self.config
        return BulkReread(schema, self._connect, self.lake, cfg.slot, dsn=self.dsn, chunk_pages=cfg.snapshot_chunk_pages,
                          connections=cfg.snapshot_connections, batch_bytes=cfg.snapshot_batch_bytes,
                          chunk_hook=self.bulk_chunk_hook, policy=cfg.personal_data).start()

    def _finish_bulk_reread(self, bulk_reread, *, quietly: bool = False) -> None:
        """Wait for a bulk re-read; one that failed is tried again on the next connection."""
        table = bulk_reread.schema.table
        try:
            bulk_reread.join()
        except Exception as error:  # noqa: BLE001 - the table is read again
            self._resnapshots.insert(0, table.partition(".")[2])
            if not quietly:
                raise
            log.warning("re-reading %s into the lake failed (%s): it is read again", table, error)
            return
        self.reread.append(table)
        name = table.partition(".")[2]
        if name not in self._resnapshots:  # else a type change came during it
            self._type_rereads.finished(name, self._handed_over)

    def _schema_changed(self, change: SchemaChange) -> None:
        """Note the table's new column types; after a type change that may have rewritten
        values no event will carry, read the table again (schema_changes.py), after any
        re-read of it already under way."""
        if change.rewritten:
            name = change.table.partition(".")[2]
            columns = ", ".join(f"{c} {old} -> {new}" for c, (old, new) in sorted(change.rewritten.items()))
            log.warning("%s changed type (%s), which may have rewritten its values without row changes: "
                        "re-reading it", change.table, columns)
            self.metrics.schema_rereads += 1
            if name not in self._resnapshots:
                self._resnapshots.append(name)
            self._type_rereads.add(name)
        self._save_type_rereads()

    def _save_type_rereads(self) -> None:
        self.state.save(self.state.load())  # the store adds the types and pending re-reads

    def _stream_rows(self, cur, assembler: Assembler, progress: _Progress, until: float):
        """The hot path: row changes straight from the stream to the sink as EncodedChanges.

        Returns `(message, drained)`: the first message that is not a plain row change (for
        the general path) or None, and whether the stream had nothing more to give; it also
        returns, with neither, once the monotonic clock passes `until`."""
        # Bound methods and attributes as locals: the loop runs per row change, and a local
        # lookup is cheaper than an attribute one each time.
        read, encoded, add = cur.read_message, assembler.encoded, self.sink.add
        clock = time.monotonic
        handed_over = self._handed_over
        metrics = self.metrics
        events = received = last_start = 0
        message = None
        drained = False
        try:
            while True:
                message = read()
                if message is None:
                    drained = True
                    break
                payload = message.payload
                change = encoded(payload)
                if change is None:
                    break  # the caller counts this one
                received += len(payload)
                last_start = message.data_start
                if change.lsn > handed_over:
                    add(change)
                    events += 1
                # The clock is read every 128 events (and whenever none was added), not per
                # event: it costs more than the rest of the loop, and `until` is a soft deadline.
                if not events & 127 and clock() >= until:
                    message = None
                    break
        except psycopg2.DatabaseError as error:
            _raise_if_stream_lost(cur, error)
            raise
        finally:
            if events:
                progress.in_transaction = True
            metrics.events += events
            metrics.bytes_received += received
            if last_start > metrics.received_lsn:
                metrics.received_lsn = last_start
        return message, drained

    @staticmethod
    def _read(cur):
        try:
            return cur.read_message()
        except psycopg2.DatabaseError as error:
            _raise_if_stream_lost(cur, error)
            raise

    def _heartbeat(self, conn) -> None:
        """A committed WAL record of our own: keeps the slot moving when our tables are idle
        but the server is not (the WAL is shared by every database of the server). It is
        transactional because a non-transactional message is not flushed by itself."""
        with conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(true, %s, '')", (HEARTBEAT_PREFIX,))
        conn.commit()

    def _shutdown(self, cur, progress: _Progress, state: ReaderState, timeout: float = 10.0) -> None:
        """Flush, mark the end, wait a little for durability, confirm what is durable."""
        if self._handed_over and not progress.in_transaction:
            self.sink.publish_watermark(self._handed_over)
        self.sink.flush()
        deadline = time.monotonic() + timeout
        while progress.pending and time.monotonic() < deadline:
            durable = self.durability.durable_lsn()
            if progress.pending[0][0] <= durable:
                progress.advance(durable, 0)
                continue
            time.sleep(0.05)
        if state.snapshot_done:
            target = progress.advance(self.durability.durable_lsn(), 0)
            if target > self.metrics.confirmed_lsn:
                cur.send_feedback(flush_lsn=target, reply=True, force=True)
                self.metrics.confirmed_lsn = target


def _bulk_snapshotting(state: ReaderState) -> bool:
    return isinstance(state.phase, lifecycle.Snapshotting) and state.phase.bulk


RETRYABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, SourceConnectionError)


def _raise_if_stream_lost(cur, error: psycopg2.DatabaseError) -> None:
    """The server going away mid-stream (psycopg2 reports some of these as a plain
    DatabaseError) is a connection problem, worth a reconnect: raise it as one."""
    if isinstance(error, psycopg2.OperationalError) or cur.connection.closed or "COPY" in str(error):
        raise psycopg2.OperationalError(f"replication stream lost: {str(error).strip()}") from error


def supervise(reader: Reader, stop: threading.Event, *, max_delay: float = 30.0) -> None:
    """Run the reader until `stop`, reconnecting with exponential backoff when PostgreSQL
    restarts or the network drops. Set-up problems (SourceSetupError) are not retried."""
    delay = 1.0
    while not stop.is_set():
        started = time.monotonic()
        try:
            reader.run(stop)
            return
        except RETRYABLE as error:
            if isinstance(error, SourceConnectionError) and not error.transient:
                raise
            if time.monotonic() - started > 60:
                delay = 1.0
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.warning("lost the source (%s); reconnecting in %.0f s", first, delay)
            reader.streaming.clear()
            if stop.wait(delay):
                return
            delay = min(delay * 2, max_delay)
