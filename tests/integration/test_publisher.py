"""The reader's Kinesis sink: packing, ordering under failure, watermarks and acknowledgement,
against a real kinesalite (and in-memory fakes where only the logic matters). Routing, packing
and acknowledgements on their own: tests/{unit,integration}/test_kinesis.py, test_records.py, test_acks.py.

Every stream is read back shard by shard from TRIM_HORIZON and decoded; the checks are on
what a consumer would see, not on the publisher's own counters.
"""

from __future__ import annotations

import random
import string

import pytest

from cdc_reader.publisher import Publisher
from cdc_reader.records import EventTooLargeError
from change_events.kinesis import MAX_RECORD_BYTES
from tests.stream_helpers import new_stream, read_stream
from tests.stream_helpers import ORDER, assert_complete_and_ordered, make_event, publish, transactions
from tests.fakes import FlakyKinesis


# -- fixtures and helpers --------------------------------------------------------------------
# (kinesalite_url and kinesis come from conftest; new_stream, read_stream from stream_helpers)


# -- end to end on kinesalite ----------------------------------------------------------------


def test_thousands_of_events_arrive_complete_in_row_order_and_packed(kinesis):
    stream = new_stream(kinesis, shards=4)
    txs = transactions(1500, rng=random.Random(7))
    publisher = Publisher(kinesis, stream, linger_seconds=60)
    publish(publisher, txs)
    assert publisher.flush() == txs[-1][0]

    records = read_stream(kinesis, stream)
    assert_complete_and_ordered(records, txs)
    event_records = [(data, r) for shard in records.values() for data, r in shard if r.events]
    total = sum(len(events) for _, events in txs)
    assert total > 4000
    assert total / len(event_records) >= 100
    assert all(len(data) < MAX_RECORD_BYTES for data, _ in event_records)
    assert all(records[s] for s in records), "every shard got events"
    assert publisher.metrics.events == total
    assert publisher.metrics.records == len(event_records)
    assert publisher.acknowledged_lsn == txs[-1][0] and publisher.buffered_events == 0


def test_throttling_and_failed_calls_neither_lose_nor_reorder(kinesis):
    stream = new_stream(kinesis, shards=4)
    txs = transactions(600, rng=random.Random(11), keys=60)
    flaky = FlakyKinesis(kinesis, random.Random(3), entry_failure=0.35, call_failure=0.15)
    # Small records, so each shard has many records queued at once: a publisher that sent a
    # shard's later record before its failed earlier one would show up as a reordered row.
    publisher = Publisher(
        flaky, stream, max_record_bytes=600, linger_seconds=60, backoff_base_seconds=0.0005, backoff_max_seconds=0.005
    )
    checked = []

    def acknowledged_lsn_is_honest():
        lsn = publisher.acknowledged_lsn
        missing = [
            e.event_id for _, events in txs for e in events if e.lsn <= lsn and e.event_id not in flaky.acknowledged
        ]
        assert not missing, f"acknowledged_lsn {lsn} passes unacknowledged events {missing[:3]}"
        checked.append(lsn)

    for chunk in range(0, len(txs), 100):
        publish(publisher, txs[chunk : chunk + 100], check=acknowledged_lsn_is_honest)
        publisher.flush()
        acknowledged_lsn_is_honest()

    assert flaky.injected > 50 and publisher.metrics.retries > 50 and publisher.metrics.throttles > 0
    assert publisher.metrics.failed_calls > 0
    assert len(set(checked)) > 5, "acknowledged_lsn advanced while publishing"
    assert publisher.acknowledged_lsn == txs[-1][0]
    records = read_stream(kinesis, stream)
    assert sum(1 for shard in records.values() for _, r in shard if r.events) > 100
    assert_complete_and_ordered(records, txs)


class _EagerPublisher(Publisher):
    """Forbidden: every queued record of every shard in one call."""

    def _next_call(self, now):
        return [record for queue in self._queues.values() for record in queue.ready][:500]


class _RequeueingPublisher(Publisher):
    """Forbidden: a failed record goes behind its shard's later records."""

    def _back_off(self, queue):
        super()._back_off(queue)
        queue.ready.rotate(-1)


@pytest.mark.parametrize("naive", [_EagerPublisher, _RequeueingPublisher])
def test_the_ordering_check_catches_a_publisher_that_resends_after_later_records(kinesis, naive):
    stream = new_stream(kinesis, shards=4)
    txs = transactions(300, rng=random.Random(11), keys=60)
    flaky = FlakyKinesis(kinesis, random.Random(3), entry_failure=0.35, call_failure=0.0)
    publisher = naive(
        flaky, stream, max_record_bytes=600, linger_seconds=60, backoff_base_seconds=0.0005, backoff_max_seconds=0.005
    )
    publish(publisher, txs)
    publisher.flush()
    with pytest.raises(AssertionError, match="reordered"):
        assert_complete_and_ordered(read_stream(kinesis, stream), txs)


def test_lost_answers_may_repeat_records_but_never_lose_or_reorder(kinesis):
    stream = new_stream(kinesis, shards=4)
    txs = transactions(300, rng=random.Random(5), keys=60)
    flaky = FlakyKinesis(kinesis, random.Random(9), entry_failure=0.1, call_failure=0.0, lost_answer=0.2)
    publisher = Publisher(
        flaky, stream, max_record_bytes=600, linger_seconds=60, backoff_base_seconds=0.0005, backoff_max_seconds=0.005
    )
    publish(publisher, txs)
    publisher.flush()
    assert flaky.injected > 0
    # A record Kinesis took but whose answer was lost is sent again: at-least-once, and the
    # first copy of every event still arrives in row order.
    assert_complete_and_ordered(read_stream(kinesis, stream), txs, allow_duplicates=True)


def test_watermark_follows_every_earlier_event_on_every_shard(kinesis):
    stream = new_stream(kinesis, shards=4)
    txs = transactions(400, rng=random.Random(21))
    flaky = FlakyKinesis(kinesis, random.Random(4), entry_failure=0.3, call_failure=0.1)
    publisher = Publisher(
        flaky, stream, max_record_bytes=4000, linger_seconds=60, backoff_base_seconds=0.0005, backoff_max_seconds=0.005
    )
    publish(publisher, txs[:250])
    with pytest.raises(ValueError, match="beyond"):
        publisher.publish_watermark(txs[250][0])
    watermark = publisher.publish_watermark()
    assert watermark == txs[249][0]
    publish(publisher, txs[250:])
    publisher.flush()

    records = read_stream(kinesis, stream)
    assert len(records) == 4
    for shard, shard_records in records.items():
        positions = [i for i, (_, r) in enumerate(shard_records) if r.watermark is not None]
        assert len(positions) == 1, f"{shard} holds {len(positions)} markers"
        (position,) = positions
        assert shard_records[position][1].watermark.lsn == watermark
        after_marker = [e for _, r in shard_records[position + 1 :] for e in r.events]
        assert all(e.lsn > watermark for e in after_marker), f"{shard}: an event <= W after the marker"
    before_marker = {
        e.event_id for records_ in records.values() for _, r in records_ for e in r.events if e.lsn <= watermark
    }
    assert before_marker == {e.event_id for _, events in txs[:250] for e in events}
    assert_complete_and_ordered(records, txs)
    assert publisher.metrics.watermark_records == 4


def test_large_values_are_split_across_records(kinesis):
    stream = new_stream(kinesis, shards=2)
    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits + "+/"
    big = [
        make_event(ORDER, 7, 0x5000 + i * 0x10, 0, text="".join(rng.choices(alphabet, k=300_000))) for i in range(12)
    ]
    small = [make_event(ORDER, k, 0x5000 + i * 0x10, 1) for i, k in enumerate(range(100, 112))]
    txs = [(big[i].lsn, [big[i], small[i]]) for i in range(12)]
    publisher = Publisher(kinesis, stream, linger_seconds=60)
    publish(publisher, txs)
    publisher.flush()

    records = read_stream(kinesis, stream)
    assert_complete_and_ordered(records, txs)
    shard_of_big = next(
        s for s, rs in records.items() if any(e.event_id == big[0].event_id for _, r in rs for e in r.events)
    )
    sizes = [len(data) for data, r in records[shard_of_big] if r.events]
    # 3.6 MB of text that compresses to 6 bits a character: at least 3 records.
    assert len(sizes) >= 3 and sum(sizes) > 2 * MAX_RECORD_BYTES
    assert all(size < MAX_RECORD_BYTES for size in sizes)


def test_an_event_too_large_for_any_record_is_refused_when_added(kinesis):
    stream = new_stream(kinesis, shards=1)
    publisher = Publisher(kinesis, stream)
    noise = "".join(random.Random(2).choices(string.printable, k=1_500_000))
    huge = make_event(ORDER, 1, 0x100, 0, text=noise)
    with pytest.raises(EventTooLargeError, match=r"public.sales_order/1 is \d+ bytes compressed"):
        publisher.add(huge)
    # Refused before it was buffered: the publisher carries on.
    publisher.add(make_event(ORDER, 2, 0x100, 1))
    publisher.end_transaction(0x100)
    assert publisher.flush() == 0x100
