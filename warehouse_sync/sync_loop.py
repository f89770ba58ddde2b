"""The warehouse sync's loop, the same for `totes sync` and for the sync thread of `totes run`:
sync up to the lake watermark (never half a source transaction, DESIGN.md guarantee 4),
publish the copy readers of a DuckDB warehouse open (read_copy.py), count what was done for
the metrics, then wait for the lake to move.

What differs between the two is a parameter: `totes run` is told when the lake moves (the
processor's watermark markers) and syncs only then, and takes a last turn once the stages
upstream have stopped; `totes sync` looks every `interval`, syncs every turn (each is a
`SyncRuns` for the "sync silent" alarm), reports its metrics every few seconds and prints
what it applied.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

from change_events.metrics import Counters, Readings
from warehouse_sync import SyncResult, sync_once
from warehouse_sync.read_copy import RUNNING_SHARE, ReadCopyPublisher

if TYPE_CHECKING:
    from lake.layout import LakeLayout
    from warehouse_sync.targets import Target


@dataclass
class SyncStats(Counters):
    """What the sync has done since it started."""

    runs: int = 0
    """Syncs run (`sync_once`), whether or not they applied anything."""
    events: int = 0
    """Change events the syncs applied to the warehouse."""
    rejected: int = 0
    """Fact versions set aside in `_sync_rejected` (values their star-schema column cannot hold)."""
    synced_upto: int = 0
    """The lake watermark the warehouse was last synced to."""
    last: SyncResult | None = None
    """What the last sync did."""
    last_at: float | None = None
    """When the last sync ended (Unix seconds)."""


Report = Callable[[int, int, int, int], None]
"""Metrics since the last report: runs, events applied, bytes of WAL the warehouse is behind the
lake, fact versions rejected."""


@dataclass
class SyncLoop:
    """Syncs `layout` into `target` up to `watermark()`, turn after turn (`run`)."""

    layout: LakeLayout
    target: Target = field(repr=False)  # a PostgreSQL warehouse's DSN may hold a password
    watermark: Callable[[], int]
    """The lake watermark now: every shard's last marker, their minimum (lake/progress.py)."""
    _: KW_ONLY
    interval: float = 1.0
    """The longest wait between two turns."""
    lake_moved: threading.Event | None = None
    """Set by whoever sees the lake move: the wait ends at once (cleared by the loop)."""
    only_when_moved: bool = False
    """Sync only when the watermark passed the last one synced to."""
    on_synced: Callable[[SyncResult], None] | None = None
    report: Report | None = None
    report_seconds: float = 10.0
    stats: SyncStats = field(default_factory=SyncStats)

    def __post_init__(self) -> None:
        self.tables: dict = {}  # what the sync has read of each change log, between runs
        self.readers = ReadCopyPublisher(self.target, max_share=RUNNING_SHARE)
        self._since_report = Readings(self.stats, "runs", "events", "rejected")
        self._report_due = time.monotonic() + self.report_seconds

    def run(self, stop: threading.Event, *, once: bool = False, last_turn: bool = False) -> None:
        """Turn until `stop` is set (or once, reporting then); with `last_turn` one more after
        the stop, for what the stages upstream left. The readers' copy is brought up to date
        at the end (not after a failure: the next run starts from the checkpoint)."""
        while True:
            self.turn(report_now=once)
            if once or self._wait(stop):
                break
        if last_turn:
            self.turn()
        self.readers.close()

    def turn(self, *, report_now: bool = False) -> SyncResult | None:
        """One sync up to the watermark (None when it had not moved and need not be synced)."""
        upto = self.watermark()
        result = None
        if not self.only_when_moved or upto > self.stats.synced_upto:
            result = sync_once(self.layout, self.target, upto, tables=self.tables)
            stats = self.stats
            stats.runs, stats.events = stats.runs + 1, stats.events + result.events
            stats.rejected += sum(result.facts_rejected.values())
            stats.synced_upto, stats.last, stats.last_at = upto, result, time.time()
        self.readers.after_sync(result is not None and result.applied)
        if result is not None and self.on_synced is not None:
            self.on_synced(result)
        if self.report is not None and (report_now or time.monotonic() >= self._report_due):
            self._report()
        return result

    def _wait(self, stop: threading.Event) -> bool:
        """Until the lake moves (when someone says so), `interval` passes or `stop`: True on stop."""
        if self.lake_moved is None:
            return stop.wait(self.interval)
        self.lake_moved.wait(self.interval)
        self.lake_moved.clear()  # before reading the watermark: a later move sets it again
        return stop.is_set()

    def _report(self) -> None:
        stats = self.stats
        synced_to = stats.last.to_lsn if stats.last is not None else stats.synced_upto
        added, _ = self._since_report.take()
        self.report(added["runs"], added["events"], max(self.watermark() - synced_to, 0), added["rejected"])
        self._report_due = time.monotonic() + self.report_seconds
