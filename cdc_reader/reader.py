"""The reader: one coordinator that runs the initial snapshot, then streams the slot.

Why one file (~580 lines): the streaming loop, its hot path and the shutdown share one
position and the connection's cursor; the snapshot's phases (snapshot_phases.py), the
per-table re-reads (rereads.py) and the state file (reader_state.py) are apart. What stays
besides the loop is what the composition root builds it from: the ports, the settings
(`ReaderConfig`) and the supervisor that reconnects.

It holds the only position that matters, the slot's confirmed LSN, and moves it only to
what the durability port says is durable downstream (DESIGN.md guarantee 1): until then the
WAL stays the system of record, and after a crash the reader simply resumes from the slot
and publishes again (downstream dedupes on `(lsn, seq)`).

Ports, so tests and later stages can plug in:
  * `EventSink`  where events go (the Kinesis publisher; a list in tests);
  * `Durability` up to which commit LSN everything is durable (Kinesis acknowledgements
    until the lake exists, then the lake watermark);
  * `StateStore` the little the reader must remember outside PostgreSQL: its slot's
    snapshot lifecycle and each table's re-read (lifecycle.py, reader_state.py).

A first snapshot cut off before all of it was published is never taken again from a new
slot: its rows may be downstream already, and rows deleted before a second snapshot would
stay alive there. The slot, never confirmed past the snapshot, still holds every change
since; the reader streams from it and reads every table again (resnapshot.py).

A slot PostgreSQL invalidated (`max_slot_wal_keep_size`) or that was dropped cannot be
streamed from, and the WAL since it was last confirmed is gone: the reader stops with
SlotLostError, one sentence naming `--reset`. Recovery is that one explicit run, not
automatic (the lake's history misses what happened meanwhile, which an operator should
know): a new slot whose snapshot begins with a truncate of every table at its consistent
point, then the rows (`ReaderState.replaces_lost_slot`; at that same point through the
sink, at a later one straight into a lake), so downstream every row older than the snapshot
goes and those that still exist come back; a row deleted meanwhile stays deleted, nothing
is doubled.

The hot path (`_stream_rows`) hands row changes to the sink as EncodedChanges, their row
bytes copied from pgoutput into wire frames without being decoded (assembler.py); every
other message, and every message during a re-read, takes the general path through
`pgoutput.decode` and `Assembler.feed`.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import psycopg2
import psycopg2.errors
import psycopg2.extras

from cdc_reader import lifecycle, pgoutput
from cdc_reader.assembler import Assembler, LogicalMessage, SchemaChange, TransactionEnd
from cdc_reader.bulk_settings import DEFAULT_BATCH_BYTES, DEFAULT_CHUNK_PAGES, DEFAULT_CONNECTIONS, BulkSettings
from cdc_reader.catalog import TypeNames, read_table_schema
from cdc_reader.personal_data import NO_POLICY, Policy
from cdc_reader.reader_state import FileStateStore, ReaderState, StateStore
from cdc_reader.rereads import TableRereads
from cdc_reader.resnapshot import IncrementalSnapshot
from cdc_reader.snapshot_phases import SnapshotPhases
from cdc_reader.source import HEARTBEAT_PREFIX, SESSION_SETTINGS, connect
from cdc_reader.source_setup import SlotLostError, slot_state
from cdc_reader.wakeup import Wakeup, idle_timeout
from change_events import ChangeEvent
from change_events.errors import OUTAGE_BACKOFF, is_retryable
from change_events.metrics import Counters
from change_events.names import PUBLICATION, SCHEMA, SLOT
from change_events.wire import EncodedChange

if TYPE_CHECKING:
    from lake.layout import LakeLayout

log = logging.getLogger("totes.reader")

__all__ = [
    "HEARTBEAT_PREFIX",
    "READER_SESSION",
    "Durability",
    "EventSink",
    "FileStateStore",
    "Reader",
    "ReaderConfig",
    "ReaderMetrics",
    "ReaderState",
    "StateStore",
    "session_options",
    "supervise",
]

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


@dataclass(frozen=True)
class ReaderConfig:
    slot: str = SLOT
    publication: str = PUBLICATION
    schema: str = SCHEMA
    tables: tuple[str, ...] = ()
    """The tables to publish: configuration, which the composition root (totes_cli/bootstrap.py)
    hands on; the reader knows no table list of its own."""
    heartbeat_seconds: float = 10.0
    watermark_seconds: float = 1.0
    feedback_seconds: float = 1.0
    idle_wait_seconds: float = 0.02
    """How long the reader waits for the source, when it has nothing to read, before it looks
    after the sink again (settles Kinesis's answers, starts the next call): a short wait
    keeps an idle stream's last events from waiting on it. A sink that says it holds nothing
    (`busy` false) is not looked after: the reader then sleeps until its own next deadline
    (wakeup.py)."""
    snapshot_chunk_rows: int = 5_000
    snapshot_connections: int = DEFAULT_CONNECTIONS
    """Connections that read the bulk snapshot's chunks in parallel (bulk_snapshot.py)."""
    snapshot_chunk_pages: int = DEFAULT_CHUNK_PAGES
    """Heap pages per chunk of the bulk snapshot (16 MiB of 8 KiB pages): the unit of
    parallel work, of resuming after a kill, and about the most a connection holds."""
    snapshot_batch_bytes: int = DEFAULT_BATCH_BYTES
    """COPY output parsed at a time (bulk snapshot)."""
    resnapshot: tuple[str, ...] = ()
    """Tables to read again, chunk by chunk, while streaming (see resnapshot.py)."""
    reset: bool = False
    """Start over after a lost slot (`--reset`): drop the invalidated slot, create a new one
    and take a snapshot that replaces every table downstream."""
    personal_data: Policy = NO_POLICY
    """What of personal data leaves the reader (personal_data.py): on every path out."""

    @property
    def bulk(self) -> BulkSettings:
        """How the bulk path reads: the initial snapshot, its resumption and every re-read."""
        return BulkSettings(
            self.snapshot_chunk_pages, self.snapshot_connections, self.snapshot_batch_bytes, self.personal_data
        )


@dataclass
class ReaderMetrics(Counters):
    """What the reader has done since it was created (its status file, `totes status`, the
    EMF lines of `totes reader --emf`)."""

    events: int = 0
    """Row changes streamed from the slot and handed to the sink (not those sent again after
    a reconnect, nor the snapshot's rows or a re-read's)."""
    transactions: int = 0
    """Source transactions streamed and ended at the sink."""
    snapshot_events: int = 0
    """Rows of the initial snapshot, handed to the sink or written straight into the lake."""
    bytes_received: int = 0
    """pgoutput bytes received from the slot (every message's payload)."""
    confirmed_lsn: int = 0
    """Up to where the slot was last confirmed: the WAL before it may go."""
    received_lsn: int = 0
    """The furthest WAL position the stream has reached."""
    last_commit_ts: float | None = None
    """The commit time (Unix seconds) of the last transaction streamed: how far behind the
    source the reader is."""
    schema_rereads: int = 0
    """Tables read again because a column type change may have rewritten their values."""
    started: float = field(default_factory=time.time)
    """When the reader was created (Unix seconds)."""


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


class Reader(SnapshotPhases, TableRereads):
    """Snapshot (snapshot_phases.py), then stream, reading tables again on the way
    (rereads.py). Everything it must remember across a restart is in `_state`, saved at
    every transition; the rest (position, the sink's progress) outlives only a connection."""

    def __init__(
        self,
        dsn: str,
        sink: EventSink,
        durability: Durability,
        state: StateStore,
        config: ReaderConfig = ReaderConfig(),
        *,
        lake: LakeLayout | None = None,
    ):
        self.dsn = dsn
        self.lake = lake
        """Where the initial snapshot and re-reads go straight to (bulk_snapshot.py,
        bulk_reread.py); without a lake they go through the sink, as change events."""
        self.bulk_chunk_hook = None  # tests: called as (table, chunk, step) on the bulk path
        self.bulk_stats = None
        self.sink = sink
        self.durability = durability
        self.state = state
        self.config = config
        self.metrics = ReaderMetrics()
        # Both outlive a connection: after a reconnect the slot sends again what the sink
        # already has, and the sink must not get it twice.
        self._progress = _Progress()
        self._handed_over = 0
        self._last_data_start = 0
        """Where the last message of this connection's stream starts (as psycopg2 notes it)."""
        self._state: ReaderState | None = None
        """What `state` holds, loaded once per process (`run`)."""
        self.reread: list[str] = []
        """Tables whose re-read (`ReaderConfig.resnapshot`, a type change, or making up for a
        cut-off snapshot) has been handed on, in order."""
        self.resnapshot_hook = None  # tests: runs inside each re-read chunk's window
        self.snapshot_progress = None  # called as (table, rows read so far) during the snapshot
        self._column_types: dict[str, dict[str, str]] = {}
        self.streaming = threading.Event()
        """Set once the slot exists and changes are being streamed."""
        self._reset_pending = config.reset  # once per process, not at every reconnect
        self._wakeup = Wakeup()

    def wake(self) -> None:
        """End the reader's wait for the source now (from another thread, e.g. after a stop)."""
        self._wakeup.set()

    # -- set-up --------------------------------------------------------------------------
    def _table_schema(self, conn, schema: str, table: str):
        """A table as it leaves the reader: without the columns its policy drops."""
        return self.config.personal_data.visible(read_table_schema(conn, schema, table))

    def _connect(self, **kwargs):
        return connect(self.dsn, options=session_options(), application_name="totes-reader", **kwargs)

    def _save(self, **changes) -> ReaderState:
        """The state with `changes` (and the column types as they are now), saved before the
        reader acts on it: a transition of the lifecycle (lifecycle.py)."""
        self._state = replace(self._state, column_types=self._column_types, **changes)
        self.state.save(self._state)
        return self._state

    def _watermark_allowed(self, state: ReaderState, lsn: int) -> bool:
        return lifecycle.watermark_allowed(state.phase, lsn, lifecycle.recovery_needed(state.table_rereads))

    # -- streaming -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Snapshot if needed, then stream until `stop` is set. Raises on setup problems;
        connection failures propagate so a supervisor can reconnect with backoff."""
        cfg = self.config
        conn = self._connect()
        replication = None
        try:
            if self._state is None:  # a new process: take up what a previous reader left
                saved = self.state.load()
                self._state, self._column_types = saved, saved.column_types
                rereads = lifecycle.restarted(saved.table_rereads)
                for table in self.config.resnapshot:
                    rereads = lifecycle.queue(rereads, table, lifecycle.RESNAPSHOT)
                self._save(table_rereads=rereads)
            else:  # a reconnect
                self._save(table_rereads=lifecycle.interrupted(self._state.table_rereads))
            state = self.prepare(conn)
            replication = self._connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
            cur = replication.cursor()
            start_lsn = 0
            if slot_state(conn, cfg.slot) is None:
                start_lsn = self._snapshot(cur, conn)
                state = self._state
            self._stream(cur, conn, state, start_lsn, stop)
        finally:
            for c in (replication, conn):
                if c is not None and not c.closed:
                    c.close()

    def _stream(self, cur, conn, state: ReaderState, start_lsn: int, stop: threading.Event) -> None:
        cfg = self.config
        try:
            cur.start_replication(
                slot_name=cfg.slot,
                decode=False,
                start_lsn=start_lsn,
                options={"proto_version": "1", "publication_names": cfg.publication, "messages": "true"},
            )
        except (psycopg2.errors.ObjectNotInPrerequisiteState, psycopg2.errors.UndefinedObject) as error:
            # Invalidated or dropped between the check in `prepare` and here.
            raise SlotLostError.of_slot(cfg.slot, f"cannot stream ({error.diag.message_primary})") from None
        self.streaming.set()
        assembler = Assembler(
            TypeNames(conn),
            lambda s, t: read_table_schema(conn, s, t).key_names,
            self._column_types,
            policy=cfg.personal_data,
        )
        progress = self._progress
        progress.in_transaction = False
        self._last_data_start = 0  # a new cursor
        if state.snapshot_lsn is not None and not lifecycle.snapshot_finished(state.phase) and not progress.pending:
            progress.ended(state.snapshot_lsn, state.snapshot_lsn)
        last_commit = max(start_lsn, self._handed_over)
        marked = 0
        now = time.monotonic()
        next_feedback = next_watermark = now
        next_heartbeat = now + cfg.heartbeat_seconds
        confirmed = 0

        active: lifecycle.Reread | None = None  # the table being read again, if any, by one of:
        rereading: IncrementalSnapshot | None = None  # the stream path (resnapshot.py)
        bulk_reread = None  # the bulk path, straight into the lake (bulk_reread.py)
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
                    self._last_data_start = message.data_start
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
                                self._reread_handed_on(active, rereading.schema.table)
                                active = rereading = None
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
                    if rereading is None and lifecycle.next_queued(self._state.table_rereads) is None:
                        busy = getattr(self.sink, "busy", True) or bulk_reread is not None
                        deadlines = [next_feedback, next_heartbeat] + ([next_watermark] if last_commit > marked else [])
                        select.select(
                            [cur, self._wakeup],
                            [],
                            [],
                            idle_timeout(time.monotonic(), deadlines, sink_busy=busy, short=cfg.idle_wait_seconds),
                        )
                        self._wakeup.clear()

                if bulk_reread is not None and bulk_reread.finished:
                    finished, bulk_reread = bulk_reread, None
                    self._finish_bulk_reread(active, finished)
                    active = None
                # Re-reads go chunk by chunk between messages, so a busy stream never starves them.
                if active is None:
                    started = self._next_reread(conn)
                    if started is not None:
                        active, runner = started
                        if isinstance(runner, IncrementalSnapshot):
                            rereading = runner
                        else:
                            bulk_reread = runner
                if rereading is not None and rereading.wants_chunk:
                    rereading.read_chunk(conn)

                self.sink.poll(idle=drained)
                now = time.monotonic()
                if (
                    now >= next_watermark
                    and last_commit > marked
                    and not progress.in_transaction
                    and self._watermark_allowed(self._state, last_commit)
                    and (bulk_reread is None or bulk_reread.allows_watermark(last_commit))
                ):
                    self.sink.publish_watermark(last_commit)
                    marked = last_commit
                    next_watermark = now + cfg.watermark_seconds
                if now >= next_feedback:
                    durable = self.durability.durable_lsn()
                    self._settle_rereads(durable)
                    state = self._settle_snapshot(self._state, durable)
                    target = (
                        progress.advance(durable, self.metrics.received_lsn)
                        if lifecycle.snapshot_finished(state.phase)
                        else 0
                    )
                    # Nor is the slot confirmed at or past a bulk re-read's LSN before it is written.
                    # psycopg2 itself moves the position it reports on to a keepalive's WAL end once
                    # the last message received is confirmed; so the last one stays unconfirmed
                    # (its fence, bulk_reread.py, arrives before any WAL past L_r).
                    if bulk_reread is not None:
                        target = min(target, self._last_data_start - 1)
                    if target > confirmed and (bulk_reread is None or bulk_reread.allows_watermark(target)):
                        cur.send_feedback(flush_lsn=target, reply=True)
                        confirmed = self.metrics.confirmed_lsn = target
                    next_feedback = now + cfg.feedback_seconds
                if now >= next_heartbeat:
                    self._heartbeat(conn)
                    next_heartbeat = now + cfg.heartbeat_seconds
        except BaseException:
            if rereading is not None:
                # Start that table's re-read over on the next connection: it is idempotent.
                self._reread_failed(active)
            if bulk_reread is not None:
                self._finish_bulk_reread(active, bulk_reread, quietly=True)
            raise

        if bulk_reread is not None:
            self._finish_bulk_reread(active, bulk_reread)  # before the last watermark, which may pass its LSN
        self._shutdown(cur, progress, self._state)

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
            if last_start:
                self._last_data_start = last_start
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
        if self._handed_over and not progress.in_transaction and self._watermark_allowed(state, self._handed_over):
            self.sink.publish_watermark(self._handed_over)
        self.sink.flush()
        deadline = time.monotonic() + timeout
        while progress.pending and time.monotonic() < deadline:
            durable = self.durability.durable_lsn()
            if progress.pending[0][0] <= durable:
                progress.advance(durable, 0)
                continue
            time.sleep(0.05)
        durable = self.durability.durable_lsn()
        # A snapshot that became durable since the last look is recorded now, not by the next run.
        self._settle_rereads(durable)
        state = self._settle_snapshot(self._state, durable)
        if lifecycle.snapshot_finished(state.phase):
            target = progress.advance(durable, 0)
            if target > self.metrics.confirmed_lsn:
                cur.send_feedback(flush_lsn=target, reply=True, force=True)
                self.metrics.confirmed_lsn = target


def _raise_if_stream_lost(cur, error: psycopg2.DatabaseError) -> None:
    """The server going away mid-stream (psycopg2 reports some of these as a plain
    DatabaseError) is a connection problem, worth a reconnect: raise it as one."""
    if isinstance(error, psycopg2.OperationalError) or cur.connection.closed or "COPY" in str(error):
        raise psycopg2.OperationalError(f"replication stream lost: {str(error).strip()}") from error


def supervise(reader: Reader, stop: threading.Event, *, max_delay: float = OUTAGE_BACKOFF.cap) -> None:
    """Run the reader until `stop`, reconnecting with exponential backoff (`OUTAGE_BACKOFF`)
    when PostgreSQL restarts or the network drops: whatever `change_events.errors` finds
    retryable. Set-up problems (SourceSetupError) and bugs are not retried."""
    policy = replace(OUTAGE_BACKOFF, cap=max_delay)
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            reader.run(stop)
            return
        except Exception as error:
            if not is_retryable(error):
                raise
            if time.monotonic() - started > 60:
                failures = 0  # it ran a while: this is a new outage, not the same one
            failures += 1
            delay = policy.delay(failures)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.warning("lost the source (%s); reconnecting in %.0f s", first, delay)
            reader.streaming.clear()
            if stop.wait(delay):
                return
