"""The reader: one coordinator that runs the initial snapshot, then streams the slot.

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
"""

from __future__ import annotations

import json
import logging
import os
import select
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from cdc_reader import pgoutput
from cdc_reader.assembler import Assembler, LogicalMessage, TransactionEnd
from cdc_reader.catalog import TypeNames, read_table_schema
from cdc_reader.pgtypes import SESSION_SETTINGS
from cdc_reader.resnapshot import IncrementalSnapshot
from cdc_reader.snapshot import read_snapshot
from cdc_reader.source_setup import (
    SourceSetupError, check_slot, create_slot, ensure_publication, slot_state,
)
from change_events import ChangeEvent, format_lsn
from totesys.connection import SourceConnectionError, connect
from totesys.schema import TABLES, database_name

log = logging.getLogger("totes.reader")

HEARTBEAT_PREFIX = "totes-heartbeat"
# Every session that produces value text runs with these, so text is the same everywhere.
READER_SESSION = {**SESSION_SETTINGS, "TimeZone": "UTC"}


def session_options() -> str:
    return " ".join(f"-c {name}={value.replace(' ', '')}" for name, value in READER_SESSION.items())


class EventSink(Protocol):
    def add(self, event: ChangeEvent) -> None: ...
    def end_transaction(self, commit_lsn: int) -> None: ...
    def poll(self) -> None:
        """Send what has waited long enough; called often, also when idle."""
    def flush(self) -> None: ...
    def publish_watermark(self, lsn: int) -> None: ...


class Durability(Protocol):
    def durable_lsn(self) -> int:
        """Every event with a commit LSN up to this one is durable downstream."""


@dataclass
class ReaderState:
    slot: str = ""
    snapshot_lsn: int | None = None
    snapshot_published: bool = False
    """Every snapshot event was handed on and acknowledged (e.g. by Kinesis): a restart
    resumes from the slot instead of taking the snapshot again."""
    snapshot_done: bool = False
    """The snapshot is durable downstream (in the lake)."""


class StateStore(Protocol):
    def load(self) -> ReaderState: ...
    def save(self, state: ReaderState) -> None: ...


class FileStateStore:
    """ReaderState in a JSON file, replaced atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> ReaderState:
        try:
            return ReaderState(**json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return ReaderState()

    def save(self, state: ReaderState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(asdict(state)), encoding="utf-8")
        os.replace(scratch, self.path)


@dataclass(frozen=True)
class ReaderConfig:
    slot: str = "totes_cdc"
    publication: str = "totes_cdc"
    schema: str = "public"
    tables: tuple[str, ...] = TABLES
    heartbeat_seconds: float = 10.0
    watermark_seconds: float = 1.0
    feedback_seconds: float = 1.0
    idle_wait_seconds: float = 0.2
    snapshot_chunk_rows: int = 5_000
    resnapshot: tuple[str, ...] = ()
    """Tables to read again, chunk by chunk, while streaming (see resnapshot.py)."""


@dataclass
class ReaderMetrics:
    events: int = 0
    transactions: int = 0
    snapshot_events: int = 0
    bytes_received: int = 0
    confirmed_lsn: int = 0
    received_lsn: int = 0
    last_commit_ts: float | None = None
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


class Reader:
    def __init__(self, dsn: str, sink: EventSink, durability: Durability, state: StateStore,
                 config: ReaderConfig = ReaderConfig()):
        self.dsn = dsn
        self.sink = sink
        self.durability = durability
        self.state = state
        self.config = config
        self.metrics = ReaderMetrics()
        # Both outlive a connection: after a reconnect the slot sends again what the sink
        # already has, and the sink must not get it twice.
        self._progress = _Progress()
        self._handed_over = 0
        self._resnapshots = [t for t in config.resnapshot]
        self.reread: list[str] = []
        """Tables whose re-read (`ReaderConfig.resnapshot`) has finished, in order."""
        self.resnapshot_hook = None  # tests: runs inside each re-read chunk's window
        self.snapshot_progress = None  # called as (table, rows read so far) during the snapshot
        self.streaming = threading.Event()
        """Set once the slot exists and changes are being streamed."""

    # -- set-up --------------------------------------------------------------------------
    def _connect(self, **kwargs):
        return connect(self.dsn, options=session_options(), application_name="totes-reader", **kwargs)

    def prepare(self, conn) -> ReaderState:
        """Publication present, and a slot we can resume from (or none yet)."""
        cfg = self.config
        ensure_publication(conn, cfg.publication, cfg.schema, cfg.tables)
        state = self.state.load()
        slot = slot_state(conn, cfg.slot)
        if slot is None and state.slot == cfg.slot and (state.snapshot_done or state.snapshot_published):
            raise SourceSetupError(
                f"Replication slot {cfg.slot!r} is gone (dropped, or invalidated for retaining too much WAL), "
                "so changes made since it was last confirmed cannot be read: start over with a new "
                "snapshot by running the reader with --reset."
            )
        if slot is not None:
            check_slot(slot, database_name(self.dsn) or slot.database)
            snapshot_in_sink = state.snapshot_published or (
                state.snapshot_lsn is not None and self._handed_over >= state.snapshot_lsn)
            if state.slot == cfg.slot and not state.snapshot_done and not snapshot_in_sink:
                log.warning("slot %s was created but its snapshot never finished: starting over", cfg.slot)
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (cfg.slot,))
                conn.commit()
            elif state.slot != cfg.slot:
                # Not created by this reader's state: resume from it, never drop it.
                log.info("resuming from existing slot %s", cfg.slot)
                state = ReaderState(slot=cfg.slot, snapshot_done=True)
                self.state.save(state)
        return state

    def _snapshot(self, replication_cursor, conn) -> int:
        cfg = self.config
        new = create_slot(replication_cursor, cfg.slot)
        self.state.save(ReaderState(slot=cfg.slot, snapshot_lsn=new.consistent_lsn, snapshot_done=False))
        log.info("slot %s created at %s; reading the snapshot", cfg.slot, format_lsn(new.consistent_lsn))
        schemas = [read_table_schema(conn, cfg.schema, t) for t in cfg.tables]
        conn.commit()

        def emit(events: list[ChangeEvent]) -> None:
            for event in events:
                self.sink.add(event)
            self.metrics.snapshot_events += len(events)

        read_snapshot(conn, new.snapshot_name, schemas, new.consistent_lsn, emit,
                      chunk_rows=cfg.snapshot_chunk_rows, progress=self.snapshot_progress)
        self.sink.end_transaction(new.consistent_lsn)
        self._handed_over = new.consistent_lsn
        self.sink.flush()
        # Taking the snapshot again from here on would leave rows deleted in between alive
        # downstream (the first attempt's rows are already on their way): resume instead.
        self.state.save(ReaderState(slot=cfg.slot, snapshot_lsn=new.consistent_lsn, snapshot_published=True))
        self.sink.publish_watermark(new.consistent_lsn)
        return new.consistent_lsn

    # -- streaming -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Snapshot if needed, then stream until `stop` is set. Raises on setup problems;
        connection failures propagate so a supervisor can reconnect with backoff."""
        cfg = self.config
        conn = self._connect()
        replication = None
        try:
            state = self.prepare(conn)
            replication = self._connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
            cur = replication.cursor()
            start_lsn = 0
            if slot_state(conn, cfg.slot) is None:
                start_lsn = self._snapshot(cur, conn)
                state = self.state.load()
            self._stream(cur, conn, state, start_lsn, stop)
        finally:
            for c in (replication, conn):
                if c is not None and not c.closed:
                    c.close()

    def _stream(self, cur, conn, state: ReaderState, start_lsn: int, stop: threading.Event) -> None:
        cfg = self.config
        cur.start_replication(
            slot_name=cfg.slot, decode=False, start_lsn=start_lsn,
            options={"proto_version": "1", "publication_names": cfg.publication, "messages": "true"},
        )
        self.streaming.set()
        assembler = Assembler(TypeNames(conn), lambda s, t: read_table_schema(conn, s, t).key_names)
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
        try:
            while not stop.is_set():
                message = self._read(cur)
                if message is not None:
                    self.metrics.bytes_received += len(message.payload)
                    self.metrics.received_lsn = max(self.metrics.received_lsn, message.data_start)
                    for out in assembler.feed(pgoutput.decode(message.payload)):
                        if rereading is not None:
                            rows = rereading.observe(out)
                            if rows:
                                for event in assembler.read_events(rereading.schema, rows):
                                    self.sink.add(event)
                                progress.in_transaction = True
                            if rereading.done:
                                log.info("re-read %s: %d rows", rereading.schema.table, rereading.rows_emitted)
                                self.reread.append(rereading.schema.table)
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
                    if time.monotonic() < next_feedback:
                        continue
                else:
                    self.metrics.received_lsn = max(self.metrics.received_lsn, cur.wal_end)
                    if rereading is None and not self._resnapshots:
                        select.select([cur], [], [], cfg.idle_wait_seconds)

                # Re-reads go chunk by chunk between messages, so a busy stream never starves them.
                if rereading is None and self._resnapshots:
                    table = self._resnapshots.pop(0)
                    rereading = IncrementalSnapshot(read_table_schema(conn, cfg.schema, table),
                                                    cfg.snapshot_chunk_rows, self.resnapshot_hook)
                    conn.commit()
                    log.info("re-reading %s while streaming", rereading.schema.table)
                if rereading is not None and rereading.wants_chunk:
                    rereading.read_chunk(conn)

                self.sink.poll()
                now = time.monotonic()
                if now >= next_watermark and last_commit > marked and not progress.in_transaction:
                    self.sink.flush()
                    self.sink.publish_watermark(last_commit)
                    marked = last_commit
                    next_watermark = now + cfg.watermark_seconds
                if now >= next_feedback:
                    durable = self.durability.durable_lsn()
                    if not state.snapshot_done and state.snapshot_lsn is not None and durable >= state.snapshot_lsn:
                        state = ReaderState(slot=cfg.slot, snapshot_lsn=state.snapshot_lsn, snapshot_published=True,
                                        snapshot_done=True)
                        self.state.save(state)
                        log.info("snapshot at %s is durable", format_lsn(state.snapshot_lsn))
                    target = progress.advance(durable, self.metrics.received_lsn) if state.snapshot_done else 0
                    if target > confirmed:
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
            raise

        self._shutdown(cur, progress, state)

    @staticmethod
    def _read(cur):
        try:
            return cur.read_message()
        except psycopg2.DatabaseError as error:
            if isinstance(error, psycopg2.OperationalError) or cur.connection.closed or "COPY" in str(error):
                # The server went away mid-stream (psycopg2 reports some of these as a
                # plain DatabaseError): a connection problem, worth a reconnect.
                raise psycopg2.OperationalError(f"replication stream lost: {str(error).strip()}") from error
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
        self.sink.flush()
        if self._handed_over and not progress.in_transaction:
            self.sink.publish_watermark(self._handed_over)
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


RETRYABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, SourceConnectionError)


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
