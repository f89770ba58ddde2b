"""Acknowledgements (cdc_reader.acks): which commit LSN the reader may call acknowledged."""

from __future__ import annotations

import pytest

from cdc_reader.acks import AckTracker


def test_acknowledged_lsn_waits_for_every_earlier_event():
    tracker = AckTracker()
    tracker.added(10, 2)
    tracker.ended(10)
    tracker.added(20)
    tracker.ended(20)
    tracker.added(30)  # transaction 30 not ended yet
    tracker.acked([(20, 1)])
    assert tracker.acknowledged_lsn == 0
    tracker.acked([(10, 1)])
    assert tracker.acknowledged_lsn == 0
    tracker.acked([(10, 1)])
    assert tracker.acknowledged_lsn == 20
    tracker.acked([(30, 1)])
    assert tracker.acknowledged_lsn == 20, "30 is not ended"
    tracker.ended(35)  # an empty stretch (heartbeat) ends too
    assert tracker.acknowledged_lsn == 35
    with pytest.raises(ValueError, match="commit order"):
        tracker.added(35)
    with pytest.raises(ValueError):
        tracker.ended(34)
