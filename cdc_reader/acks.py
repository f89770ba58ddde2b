"""Which commit LSN the reader may call acknowledged: every event up to it was put on the
stream and Kinesis answered for it, and its transaction ended.

`acknowledged_lsn` is the highest commit LSN such that every event with an lsn up to it was
added, its transaction ended (`end_transaction`), and Kinesis acknowledged it: the reader may
checkpoint there until the lake watermark exists.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

from change_events.model import format_lsn


class AckTracker:
    """Which commit LSN every event up to is acknowledged.

    Events are added in non-decreasing lsn order; `ended(L)` says every event with lsn <= L
    has been added. `acknowledged_lsn` is the highest ended L with no unacknowledged event
    at or below it.
    """

    def __init__(self, start_lsn: int = 0) -> None:
        self._acknowledged = start_lsn
        self._last_ended = start_lsn
        self._last_added = start_lsn
        self._outstanding: OrderedDict[int, int] = OrderedDict()  # lsn -> unacked events, lsn order
        self._ended: deque[int] = deque()

    @property
    def acknowledged_lsn(self) -> int:
        return self._acknowledged

    @property
    def last_ended(self) -> int:
        return self._last_ended

    @property
    def outstanding(self) -> int:
        return sum(self._outstanding.values())

    def check_add(self, lsn: int) -> None:
        if lsn <= self._last_ended:
            raise ValueError(
                f"event at lsn {format_lsn(lsn)} comes after end_transaction"
                f"({format_lsn(self._last_ended)}): events must be added in commit order"
            )
        if lsn < self._last_added:
            raise ValueError(
                f"event at lsn {format_lsn(lsn)} added after one at "
                f"{format_lsn(self._last_added)}: events must be added in commit order"
            )

    def added(self, lsn: int, count: int = 1) -> None:
        if lsn == self._last_added and lsn > self._last_ended:  # the usual case: same transaction
            self._outstanding[lsn] = self._outstanding.get(lsn, 0) + count
            return
        self.check_add(lsn)
        self._last_added = lsn
        self._outstanding[lsn] = self._outstanding.get(lsn, 0) + count  # the largest lsn: order kept

    def ended(self, commit_lsn: int) -> None:
        if commit_lsn < self._last_ended or commit_lsn < self._last_added:
            raise ValueError(
                f"end_transaction({format_lsn(commit_lsn)}) is below an lsn already "
                f"added or ended ({format_lsn(max(self._last_ended, self._last_added))})"
            )
        self._last_ended = commit_lsn
        self._ended.append(commit_lsn)
        self._advance()

    def acked(self, lsn_counts: Iterable[tuple[int, int]]) -> None:
        for lsn, count in lsn_counts:
            left = self._outstanding[lsn] - count
            if left < 0:
                raise AssertionError(f"more events acknowledged at {format_lsn(lsn)} than added")
            if left:
                self._outstanding[lsn] = left
            else:
                del self._outstanding[lsn]
        self._advance()

    def _advance(self) -> None:
        lowest = next(iter(self._outstanding), None)
        while self._ended and (lowest is None or self._ended[0] < lowest):
            self._acknowledged = max(self._acknowledged, self._ended.popleft())
