"""When the lake writer merges a change log's appends into its state table.

A state merge (`lake.state`, `lake.rewrite`) rewrites every file of `tables/<table>` that
holds a key the merged rows touch, and random updates touch every file, so a merge of many
spread keys costs about the table's size whatever it merges (a few rows hold a few files).
Merging each batch as it comes, on the thread that appends the change logs, made the cost of
the latency path (change log append -> watermark -> warehouse) grow with the state tables.
But a merge takes in every append of its shard since the last one, so merges can wait:

- **trickle** (`state_delay`): a batch of a few rows (`SMALL_FILE_ROWS`) of a table merged for
  its shard less than `state_delay` ago waits until the delay has passed since it was put off;
- **paced** (`merge_share`, 0 < share < 1): every merge waits to be run beside the batches
  (`LakeWriter.merge_due_states`, a thread of its own in `LocalPoller`), and a table is merged
  at most that share of the time: after a merge that took C seconds, the table's next one
  waits C * (1 / share - 1). A backlog is then merged in a few large merges instead of one
  per batch, and the change logs, the watermark and the warehouse never wait for them.

How far a state table lags its change log: at most `state_delay` for a trickle, and for a
paced table the time of one merge plus its pause, C / share (C: the table's last merge);
`totes lake`'s current-state reads show the table as of its last merge, while reads as of
an LSN or time and `totes verify` rebuild the state from the change log (exact for any LSN),
and a Delta version is exact by definition. A writer that stops merges everything put off;
one that is killed leaves the state behind its log, and the next writer finds it
(`LakeWriter.find_unmerged`) and merges it: the state records what it has consumed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from lake.delta_io import SMALL_FILE_ROWS

Slot = tuple[str, str]
"""(table, shard)"""


@dataclass
class _Waiting:
    since: float
    """When its first unmerged append was put off."""
    keys: list[str]
    trickle: bool
    """Only few-row appends wait (they wait for `state_delay`; others only for the pace)."""


class MergeSchedule:
    """Which (table, shard) state merges wait, and which are due. Thread-safe."""

    def __init__(self, state_delay: float = 0.0, merge_share: float = 0.0, clock: Callable[[], float] = time.monotonic):
        if not 0.0 <= merge_share < 1.0:
            raise ValueError(f"merge_share must be at least 0 and below 1 (a share of the time), not {merge_share}")
        self.state_delay = state_delay
        self.merge_share = merge_share
        self._clock = clock
        self._waiting: dict[Slot, _Waiting] = {}
        self._merged_at: dict[Slot, float] = {}
        self._running: set[Slot] = set()
        """Taken out of `take_due` and not yet merged (or failed)."""
        self._next: dict[str, float] = {}
        """table -> the earliest its next paced merge may start."""
        self.last_cost: dict[str, float] = {}
        """table -> seconds its last merge took."""
        self._lock = threading.Lock()

    @property
    def paced(self) -> bool:
        return self.merge_share > 0

    def __len__(self) -> int:
        """Merges put off or running."""
        with self._lock:
            return len(self._waiting.keys() | self._running)

    def merge_now(self, table: str, shard: str, keys: list[str], appended: pa.Table | None) -> bool:
        """After an append of `shard` to `table`: whether its merge runs now (in the batch);
        otherwise it is put off and comes out of `take_due` later."""
        now, slot = self._clock(), (table, shard)
        trickle = appended is not None and appended.num_rows <= SMALL_FILE_ROWS and self.state_delay > 0
        with self._lock:
            waiting = self._waiting.get(slot)
            since = waiting.since if waiting is not None else now
            if trickle:
                quiet = now - self._merged_at.get(slot, float("-inf")) >= self.state_delay
                if quiet or now - since >= self.state_delay:
                    trickle = False  # the first change after a quiet spell, or it waited enough
            if not trickle and not self.paced:
                return True
            self._waiting[slot] = _Waiting(since, keys, trickle and (waiting is None or waiting.trickle))
        return False

    def wait(self, table: str, shard: str, keys: list[str]) -> None:
        """Put a merge off until it is due (e.g. a state found behind its log)."""
        with self._lock:
            self._waiting.setdefault((table, shard), _Waiting(self._clock(), keys, False))

    def take_due(self, everything: bool = False) -> list[tuple[Slot, list[str]]]:
        """The merges due now (all of them with `everything`), no longer waiting: a batch that
        appends meanwhile puts its slot off again, so nothing is missed."""
        now = self._clock()
        with self._lock:
            due = [
                slot
                for slot, waiting in self._waiting.items()
                if everything
                or (
                    (not waiting.trickle or now - waiting.since >= self.state_delay)
                    and now >= self._next.get(slot[0], float("-inf"))
                )
            ]
            self._running.update(due)
            return [(slot, self._waiting.pop(slot).keys) for slot in due]

    def merged(self, table: str, shard: str, started: float) -> None:
        """A merge of `table` for `shard` that started at `started` has just ended."""
        now = self._clock()
        with self._lock:
            self._merged_at[(table, shard)] = now
            self._running.discard((table, shard))
            cost = max(now - started, 0.0)
            self.last_cost[table] = cost
            if self.paced:
                self._next[table] = now + cost * (1.0 / self.merge_share - 1.0)
            else:  # merged in a batch: it took in whatever was put off
                self._waiting.pop((table, shard), None)

    def failed(self, table: str, shard: str, keys: list[str]) -> None:
        """A merge taken out of `take_due` failed: it waits again."""
        with self._lock:
            self._running.discard((table, shard))
        self.wait(table, shard, keys)
