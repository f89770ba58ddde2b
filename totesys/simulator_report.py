"""What the simulator reports: its events by kind and rate, the history it wrote, a progress bar."""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from totesys.live import LiveEvent
from totesys.table_sql import WRITE_ORDER


@dataclass
class SimulatorStats:
    """Events done so far by kind, for summaries and a live events/s display.

    Written by the thread that runs the business and read by a display thread, so reads go
    through copies taken in single C-level calls (no "mutated during iteration").
    """

    by_kind: Counter = field(default_factory=Counter)
    events: int = 0
    rows: int = 0
    started: float = field(default_factory=time.monotonic)
    last: LiveEvent | None = None
    _recent: deque = field(default_factory=lambda: deque(maxlen=10_000), repr=False)

    def record(self, event: LiveEvent) -> None:
        self.by_kind[event.kind] += 1
        self.events += 1
        self.rows += event.rows
        self.last = event
        self._recent.append(time.monotonic())

    def counts(self) -> dict[str, int]:
        """Events by kind, most frequent first (a copy)."""
        return dict(self.by_kind.most_common())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def events_per_second(self, window: float = 10.0) -> float:
        """Rate over the last `window` seconds (or since the start, if that is shorter)."""
        now = time.monotonic()
        span = min(window, now - self.started)
        if span <= 0:
            return 0.0
        recent = tuple(self._recent)
        return (len(recent) - bisect.bisect_left(recent, now - span)) / span


@dataclass(frozen=True)
class HistoryReport:
    """What seed_history wrote."""

    seeded_static: bool
    start: datetime | None
    until: datetime
    rows: dict[str, int]
    silent_updates: int
    settled: int
    working_days: int


class Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def add(self, description: str, total: int) -> int:
        return self._bar.add_task(description, total=total) if self._bar else 0

    def update(self, task: int, completed: int) -> None:
        if self._bar:
            self._bar.update(task, completed=completed)

    def advance(self, task: int, amount: int) -> None:
        if self._bar:
            self._bar.advance(task, amount)


def history_summary(report: HistoryReport) -> Iterable[tuple[str, int]]:
    """(table, rows added) in write order, for display."""
    return [(t, report.rows[t]) for t in WRITE_ORDER if report.rows.get(t)]
