"""The whole pipeline in one process (`totes run`, `totes demo`).

    source ──reader──► Kinesis ──processor──► lake ──sync──► warehouse

Each stage runs in its own thread with the same code it runs alone (`totes reader`,
`totes processor`, `totes sync`). Here the reader's durability is the lake watermark, so
PostgreSQL only forgets WAL that the lake has committed (DESIGN.md guarantee 1), and the sync
reads up to that watermark only (guarantee 4).

In one process a stage need not poll the next one on a timer: the publisher's puts wake the
processor, and a watermark marker recorded in the lake wakes the sync. The timers stay as
a fallback (and for the stages' own pacing: the processor's batching window).

Local state belongs to the lake it feeds: without a configured Kinesis endpoint a kinesalite
is started with its data under `<lake>/_local/kinesis`, the reader's state lives under
`<lake>/_local`, and the slot name is derived from the lake once and remembered there, so two
pipelines on one machine never share a stream, a slot or a checkpoint by accident.

The names, defaults and state paths, and the stages themselves, come from the composition
root (totes_cli/bootstrap.py) that the single-stage commands use too; this module joins
them: what wakes what, and their shared life cycle (start, wake, stop in order).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cdc_reader.publisher import Publisher
from cdc_reader.source import commit_heartbeat, current_wal_lsn
from cdc_reader.personal_data import NO_POLICY, Policy
from cdc_reader.reader import Reader, supervise
from lake.layout import LakeLayout
from lake.maintenance import (
    COMPACT_FROM_FILES,
    DEFAULT_RETENTION,
    MaintenanceCadence,
    SettledTables,
    lake_stored_bytes,
    lake_uris,
    maintain,
)
from lake.progress import LakeWatermark
from lake.writer import LakeWriter
from change_events.errors import STAGE_RESTART
from local_stack.kinesalite import Kinesalite
from stream_processors.handler import StreamProcessor
from stream_processors.poller import LocalPoller
from totes_cli import bootstrap
from totes_cli.bootstrap import PUBLICATION, SHARDS, STREAM, WINDOW as DEFAULT_WINDOW
from totes_cli.reader_status import STATUS_SECONDS, StatusWriter
from warehouse_sync.sync_loop import SyncLoop, SyncStats
from warehouse_sync.targets import open_target

log = logging.getLogger("totes.pipeline")

QUIET_WINDOW = 5.0
"""The longest a trickle of events waits for a lake commit (bench/README.md, `light`)."""
STATE_DELAY = 30.0
"""The longest a trickle's state merge waits, so that one merge takes in several windows
(`LakeWriter.state_delay`; the warehouse does not wait for it)."""
MERGE_SHARE = 0.25
"""The largest share of the time a table's state merges take, in a thread beside the batches
(`lake.merge_schedule`): a merge rewrites most of a large state table whatever it merges."""
MIN_BATCH_BYTES = 32 * 1024
"""About 175 events: less than half of what a 0.5 s window holds at 1,000 changes/s."""
_KINESIS_DOWN = ("EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError")


@dataclass
class PipelineConfig:
    source_dsn: str = field(repr=False)  # DSNs may hold passwords: never in a repr
    lake: str
    warehouse: str = field(repr=False)
    stream: str = STREAM
    shards: int = SHARDS
    slot: str | None = None
    publication: str = PUBLICATION
    tables: tuple[str, ...] = field(default_factory=bootstrap.source_tables)
    home: Path | None = None
    """Where the state of a lake on S3 lives (a local lake keeps its own); the settings' home when None."""
    heartbeat_seconds: float = 2.0
    watermark_seconds: float = 0.1
    """How often the reader marks every shard (when something was committed since): the lake
    watermark moves in these steps. Each mark also flushes the publisher."""
    batch_window: float = DEFAULT_WINDOW
    """At most one batch per shard per window: about one lake commit per table per shard per window."""
    quiet_window: float = QUIET_WINDOW
    """At light load (less than `min_batch_bytes` of events in a window) the window is held open
    up to this long, so lake commits follow the data rather than the clock (`LocalPoller`)."""
    min_batch_bytes: int = MIN_BATCH_BYTES
    state_delay: float = STATE_DELAY
    """At light load the lake's state tables follow their change logs up to this late (0: with
    every batch): a merge of a few rows costs as much as a full one."""
    merge_share: float = MERGE_SHARE
    """State merges run beside the batches, each table's at most this share of the time (0: in
    the batches, as a Lambda does); the state tables then lag their logs by about a merge's
    time over this share (lake/merge_schedule.py)."""
    processor_poll_seconds: float = 1.0
    """How often the processor looks at an idle stream by itself: the publisher's puts wake it,
    so this is a fallback, and each look is a GetRecords per shard."""
    sync_interval: float = 1.0
    """The longest the sync waits for a new lake watermark before looking anyway."""
    linger_seconds: float = 0.25
    """How long the publisher holds events to fill a Kinesis record (a mark flushes it sooner)."""
    reset: bool = False
    """After a lost slot: start over from a new one (ReaderConfig.reset, `--reset`)."""
    maintain_every: float = 3600.0
    """The longest time between two rounds of lake maintenance while the pipeline runs (as
    `totes lake maintain`); a round comes sooner once the lake has grown by half its live
    bytes (`MaintenanceCadence`). 0 leaves it to `totes lake maintain`."""
    retention: timedelta = DEFAULT_RETENTION
    """Time travel by Delta version or time is kept this long; maintenance reclaims the rest."""
    maintenance_check_seconds: float = 5.0
    """How often the maintenance thread measures the lake to see whether a round is due."""
    verify_every: float = 0.0
    """Seconds between verifications of source, lake and warehouse (`totes verify`); 0: none."""
    on_verified: object = field(default=None, repr=False, compare=False)
    """Called with each verification's result (the command prints it and emits its metric)."""
    resnapshot: tuple[str, ...] = ()
    """Tables the reader reads again straight into the lake once it streams (`totes verify --repair`)."""
    status_seconds: float = STATUS_SECONDS
    """How often the reader's status file (what `totes status` and the dashboard show) is rewritten."""
    personal_data: Policy = NO_POLICY
    """What of personal data leaves the reader (cdc_reader/personal_data.py)."""


def windowed(config: PipelineConfig, window: float) -> PipelineConfig:
    """The same pipeline with the processor's batching window set: latency against lake
    commits. The default (0.5 s) gives two lake commits per table per shard per second and a
    median commit-to-warehouse latency under 0.6 s at 1,000 changes/s; 1 s halves the
    commits (about 0.9 s), 0.2 s gives a little less latency for 2.5 times the commits
    (small files, which `totes lake maintain` compacts). A stage waits about half a window
    on average; the other waits are short and fixed (the reader marks the shards every
    `watermark_seconds`, the processor and the sync are woken as soon as there is work)."""
    from dataclasses import replace

    return replace(
        config,
        batch_window=window,
        watermark_seconds=min(config.watermark_seconds, window),
        linger_seconds=min(config.linger_seconds, window / 5),
    )


@dataclass
class MaintenanceStats:
    rounds: int = 0
    files_compacted: int = 0
    files_vacuumed: int = 0


@dataclass
class Pipeline:
    config: PipelineConfig
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    sync: SyncStats = field(default_factory=SyncStats)
    maintenance: MaintenanceStats = field(default_factory=MaintenanceStats)

    def __post_init__(self) -> None:
        cfg = self.config
        self.paths = bootstrap.state_paths(cfg.lake, cfg.home)
        self.local = self.paths.local
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
        self.layout = LakeLayout(cfg.lake)
        self.kinesalite: Kinesalite | None = None
        self.reader: Reader | None = None
        self.publisher: Publisher | None = None
        self.poller: LocalPoller | None = None
        self._threads: list[tuple[threading.Thread, threading.Event, Callable[[], object] | None]] = []
        self._lake_moved = threading.Event()
        """Set when the processor recorded a watermark marker: the sync may have work."""
        self._synced = threading.Event()
        """Set when the sync moved the warehouse: a caught-up run may end."""

    # -- wiring ----------------------------------------------------------------------------
    def _kinesis(self):
        """The stream's client: `totes run`'s own kinesalite in a local lake unless a Kinesis is configured."""
        self.kinesalite = bootstrap.local_kinesis(self.paths)
        return bootstrap.kinesis(self.config.stream, self.config.shards, kinesalite=self.kinesalite)

    def start(self) -> None:
        cfg = self.config
        slot = bootstrap.remembered_slot(cfg.lake, cfg.slot)  # fixed at the first run of this lake
        client = self._kinesis()
        lake = LakeWriter(
            self.layout,
            on_marker=lambda shard, lsn: self._lake_moved.set(),
            state_delay=cfg.state_delay,
            merge_share=cfg.merge_share,
        )
        self.poller = bootstrap.poller(
            client,
            cfg.stream,
            StreamProcessor(lake),
            paths=self.paths,
            batch_window=cfg.batch_window,
            quiet_window=cfg.quiet_window,
            min_batch_bytes=cfg.min_batch_bytes,
            idle_sleep=cfg.processor_poll_seconds,
        )
        self.publisher = bootstrap.kinesis_publisher(
            client, cfg.stream, on_put=self.poller.wake, linger_seconds=cfg.linger_seconds
        )
        shard_ids = lambda: [shard.shard_id for shard in self.publisher.shards]  # noqa: E731
        self.reader = bootstrap.reader(
            cfg.source_dsn,
            self.publisher,
            LakeWatermark(self.layout, shard_ids),
            paths=self.paths,
            slot=slot,
            publication=cfg.publication,
            tables=cfg.tables,
            lake=self.layout,  # the initial snapshot goes straight into the lake
            heartbeat_seconds=cfg.heartbeat_seconds,
            watermark_seconds=cfg.watermark_seconds,
            reset=cfg.reset,
            resnapshot=cfg.resnapshot,
            personal_data=cfg.personal_data,
        )
        self._spawn("reader", lambda stop: supervise(self.reader, stop), wake=self.reader.wake)
        status = bootstrap.status_writer(self.reader, self.publisher)
        self._spawn("reader status", lambda stop: self._status_loop(status, stop))
        self._spawn("processor", lambda stop: self.poller.run(stop), wake=self.poller.wake)
        self._spawn("sync", self._sync_loop, wake=self._lake_moved.set)
        if cfg.maintain_every > 0:
            self._spawn("maintenance", self._maintenance_loop)
        if cfg.verify_every > 0:
            from verify.schedule import verify_every

            self._spawn(
                "verification",
                lambda stop: verify_every(cfg, cfg.verify_every, stop, cfg.on_verified or (lambda result: None)),
            )

    def _spawn(self, name: str, target, wake=None) -> None:
        stop = threading.Event()

        def run() -> None:
            waiting_for = None
            while True:
                started = time.monotonic()
                try:
                    target(stop)
                    return
                except KeyboardInterrupt:  # Ctrl-C seen by a library in this thread: a stop, not a failure
                    self.stop.set()
                    return
                except BaseException as error:  # one stage failing stops the pipeline ...
                    reason = None if stop.is_set() else self._passing_trouble(name, error)
                    if reason is None:
                        log.exception("%s stopped", name)
                        self.errors.append((name, error))
                        self.stop.set()
                        return
                # ... unless the trouble passes by itself: said once, then the stage starts again
                if time.monotonic() - started > 60:
                    waiting_for = None  # a new episode: say it again
                if reason != waiting_for:
                    log.warning("%s", reason)
                    waiting_for = reason
                if stop.wait(STAGE_RESTART.delay(1)):
                    return

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append((thread, stop, wake))

    def _passing_trouble(self, name: str, error: BaseException) -> str | None:
        """One sentence on why stage `name` failed, when that heals without anyone's help: a
        full disk (once space is freed) or the local Kinesis down while it is started again.
        None for anything else. Every writer is idempotent, so starting a stage again is safe."""
        seen: set[int] = set()
        cause: BaseException | None = error
        while cause is not None and id(cause) not in seen:
            seen.add(id(cause))
            if (isinstance(cause, OSError) and cause.errno == errno.ENOSPC) or "No space left on device" in str(cause):
                where = f" ({cause.filename})" if getattr(cause, "filename", None) else ""
                return f"the {name} cannot write, the disk is full{where}: free some space and it carries on by itself"
            if self.kinesalite is not None and type(cause).__name__ in _KINESIS_DOWN:
                return f"the {name} waits for the local Kinesis, which is being started again"
            cause = cause.__cause__ or cause.__context__
        return None

    def _status_loop(self, status: StatusWriter, stop: threading.Event) -> None:
        """The reader's status file, as `totes reader` writes it: its events/s live nowhere else."""
        while not stop.wait(self.config.status_seconds):
            status.write()
        status.write()  # stopped after the reader: its last count

    def _sync_loop(self, stop: threading.Event) -> None:
        """`totes sync`'s loop, woken by the lake's markers; a last turn takes what the stages
        upstream left once they have stopped."""
        target = open_target(self.config.warehouse)
        try:
            shard_ids = [shard.shard_id for shard in self.publisher.shards]
            SyncLoop(
                self.layout,
                target,
                LakeWatermark(self.layout, lambda: shard_ids).durable_lsn,
                interval=self.config.sync_interval,
                lake_moved=self._lake_moved,
                only_when_moved=True,
                on_synced=lambda result: self._synced.set(),
                stats=self.sync,
            ).run(stop, last_turn=True)
        finally:
            target.close()

    def _maintenance_loop(self, stop: threading.Event) -> None:
        """`maintain` whenever `MaintenanceCadence` says so, beside the running writers (it is
        safe there, see lake/maintenance.py). A failed round is logged and tried again at the
        next check: a lake not maintained for a while is bigger and slower, not wrong."""
        cfg = self.config
        cadence = MaintenanceCadence.for_retention(cfg.retention, cfg.maintain_every)
        settled = SettledTables(cfg.retention.total_seconds())
        while not stop.wait(min(cfg.maintenance_check_seconds, cfg.maintain_every)):
            try:
                now = time.monotonic()
                if cadence.too_soon(now) or not cadence.due(now, lake_stored_bytes(self.layout)):
                    continue
                uris = lake_uris(self.layout)
                report = maintain(
                    self.layout,
                    cfg.retention,
                    settled.due(uris, self.layout.has_commit),
                    compact_from=COMPACT_FROM_FILES,
                )
            except Exception:  # noqa: BLE001 - the next check tries again
                log.exception("lake maintenance failed; trying again in %g s", cfg.maintenance_check_seconds)
                continue
            done = time.monotonic()  # after every commit the round saw
            cadence.done(done, settled.after_round(done, report, uris))
            self.maintenance.rounds += 1
            self.maintenance.files_compacted += sum(t.files_removed for t in report)
            self.maintenance.files_vacuumed += sum(len(t.vacuumed) for t in report)
            log.info(
                "lake maintained: %d tables, %d small files compacted",
                len(report),
                sum(t.files_removed for t in report),
            )

    # -- running -----------------------------------------------------------------------------
    def source_lsn(self) -> int:
        return current_wal_lsn(self.config.source_dsn)

    def caught_up_with(self, lsn: int) -> bool:
        """Everything committed at the source before `lsn` is in the warehouse."""
        return self.sync.synced_upto >= lsn

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the stages upstream first: the reader flushes what it has, the processor
        then writes it to the lake, and the sync last."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread, stop, wake in self._threads:
            stop.set()
            if wake is not None:
                wake()
            thread.join(max(deadline - time.monotonic(), 0.1))
        if self.kinesalite is not None:
            self.kinesalite.stop()

    def mark_end(self) -> None:
        """Commit a heartbeat of our own (after everything committed so far): the reader's next
        watermark then passes the WAL position of now, idle tables or not, instead of at its
        next heartbeat."""
        commit_heartbeat(self.config.source_dsn, application_name="totes-run")

    def run(self, until_caught_up: bool = False, on_tick=None, tick_seconds: float = 1.0) -> None:
        """Start, then wait for Ctrl-C / `stop` (or for catching up: woken by the sync, so it
        ends as soon as the warehouse has it); always shuts down."""
        target = self.source_lsn() if until_caught_up else None
        try:
            self.start()
            if target is not None:
                self.mark_end()
            next_tick = time.monotonic() + tick_seconds
            while not self.stop.is_set():
                self._synced.wait(max(next_tick - time.monotonic(), 0))
                self._synced.clear()
                if target is not None and self.caught_up_with(target):
                    break
                if time.monotonic() >= next_tick:
                    if on_tick is not None:
                        on_tick(self)
                    next_tick = time.monotonic() + tick_seconds
        finally:
            self.shutdown()
