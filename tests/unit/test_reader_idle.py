"""An idle reader sleeps: it wakes for the source, for its own deadlines (watermark, feedback,
heartbeat) or for a stop, not every `idle_wait_seconds`, unless its sink holds something."""

from __future__ import annotations


from cdc_reader.publisher import Publisher
from cdc_reader.wakeup import Wakeup, idle_timeout
from tests.stream_helpers import ORDER, make_event, wait_acknowledged
from tests.fakes import MemoryKinesis


def test_the_idle_timeout_is_short_while_the_sink_is_busy_else_the_next_deadline():
    assert idle_timeout(10.0, [11.0, 40.0], sink_busy=True, short=0.02) == 0.02
    assert idle_timeout(10.0, [11.0, 40.0], sink_busy=False, short=0.02) == 1.0
    assert idle_timeout(10.0, [9.0, 40.0], sink_busy=False, short=0.02) == 0.0  # overdue: at once


def test_a_publisher_is_busy_until_kinesis_acknowledged_what_it_was_given():
    publisher = Publisher(MemoryKinesis(shards=2), "s", linger_seconds=3600.0)
    assert not publisher.busy
    publisher.add(make_event(ORDER, 1, 0x10, 0))
    assert publisher.busy  # buffered
    publisher.end_transaction(0x10)
    publisher.poll(idle=True)
    wait_acknowledged(publisher, 0x10)
    assert not publisher.busy
    publisher.publish_watermark(0x10)
    assert publisher.busy  # the markers are on their way
    publisher.flush()
    assert not publisher.busy


def test_a_wakeup_ends_a_select_and_clears():
    import select

    wakeup = Wakeup()
    try:
        assert select.select([wakeup], [], [], 0) == ([], [], [])
        wakeup.set()
        wakeup.set()
        assert select.select([wakeup], [], [], 5)[0] == [wakeup]
        wakeup.clear()
        assert select.select([wakeup], [], [], 0) == ([], [], [])
    finally:
        wakeup.close()
