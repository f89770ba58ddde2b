"""The one sync loop of `totes sync` and `totes run` (warehouse_sync/sync_loop.py): what each
caller's parameters change, on a sync that only records what it was asked to do."""

from __future__ import annotations

import threading

import pytest

from warehouse_sync import sync_loop
from warehouse_sync.apply import SyncResult
from warehouse_sync.sync_loop import SyncLoop


class _Recorded:
    """`sync_once` that applies every event up to the LSN it is given: 10 per call."""

    def __init__(self):
        self.upto: list[int] = []
        self.synced_to = 0

    def __call__(self, layout, target, upto, *, tables):
        self.upto.append(upto)
        result = SyncResult(self.synced_to, upto, events=10, facts_rejected={"fact_sales_order": 1})
        self.synced_to = upto
        return result


@pytest.fixture
def synced(monkeypatch) -> _Recorded:
    recorded = _Recorded()
    monkeypatch.setattr(sync_loop, "sync_once", recorded)
    return recorded


class _Watermarks:
    """The lake watermark, read after read; a stop set once they are all read."""

    def __init__(self, *values: int):
        self.values = list(values)
        self.stop = threading.Event()

    def __call__(self) -> int:
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        if len(self.values) == 1:
            self.stop.set()
        return value


def test_totes_sync_syncs_every_turn_and_reports_what_it_did_once(synced):
    reports = []
    watermark = _Watermarks(7)
    loop = SyncLoop("lake", object(), watermark, report=lambda *figures: reports.append(figures))
    loop.run(watermark.stop, once=True)
    assert synced.upto == [7]
    assert reports == [(1, 10, 0, 1)]  # runs, events, bytes behind the lake, rejected


def test_a_turn_whose_watermark_has_not_moved_syncs_nothing_when_only_moves_count(synced):
    moved = threading.Event()
    watermark = _Watermarks(5, 5, 9)
    seen = []
    loop = SyncLoop(
        "lake", object(), watermark, interval=0, lake_moved=moved, only_when_moved=True, on_synced=seen.append
    )
    loop.run(watermark.stop, last_turn=True)
    assert synced.upto == [5, 9]  # the second 5 was not synced again; the last turn takes the 9
    assert [result.to_lsn for result in seen] == [5, 9]
    assert (loop.stats.runs, loop.stats.events, loop.stats.synced_upto) == (2, 20, 9)


def test_a_report_counts_what_was_done_since_the_last_one(synced):
    reports = []
    watermark = _Watermarks(3)
    loop = SyncLoop("lake", object(), watermark, report=lambda *figures: reports.append(figures))
    loop.turn()
    loop.turn(report_now=True)
    loop.turn(report_now=True)
    assert reports == [(2, 20, 0, 2), (1, 10, 0, 1)]
