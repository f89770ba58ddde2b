"""The reader's Kinesis sink: packing, ordering under failure, watermarks and acknowledgement,
against a real kinesalite (and in-memory fakes where only the logic matters). Routing, packing
and acknowledgements on their own: tests/{unit,integration}/test_kinesis.py, test_records.py, test_acks.py.

Every stream is read back shard by shard from TRIM_HORIZON and decoded; the checks are on
what a consumer would see, not on the publisher's own counters.
"""

from __future__ import annotations

import random

import pytest
from botocore.exceptions import ClientError

from cdc_reader.publisher import PublishError, Publisher
from change_events.kinesis import MAX_CALL_BYTES, MAX_RECORD_BYTES
from tests.stream_helpers import (
    ORDER,
    assert_complete_and_ordered,
    make_event,
    publish,
    transactions,
    wait_acknowledged,
)
from tests.fakes import MemoryKinesis


# -- logic with in-memory fakes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("record_bytes", "call_records", "call_bytes"),
    [
        (1000, 25, 6000),  # the byte limit binds
        (600, 10, MAX_CALL_BYTES),  # the record-count limit binds
    ],
)
def test_calls_respect_record_and_byte_limits_and_one_record_per_shard(record_bytes, call_records, call_bytes):
    fake = MemoryKinesis(shards=40)
    publisher = Publisher(
        fake,
        "s",
        max_record_bytes=record_bytes,
        max_call_records=call_records,
        max_call_bytes=call_bytes,
        linger_seconds=60,
    )
    txs = transactions(800, rng=random.Random(8), keys=2000)
    publish(publisher, txs)
    publisher.flush()
    sizes = [sum(len(r["Data"]) + len(r["PartitionKey"]) for r in call) for call in fake.calls]
    assert max(len(call) for call in fake.calls) <= call_records and max(sizes) <= call_bytes
    assert max(len(call) for call in fake.calls) == call_records or max(sizes) > call_bytes - record_bytes
    for call in fake.calls:
        assert len({r["ExplicitHashKey"] for r in call}) == len(call), "two records of one shard in a call"
    assert_complete_and_ordered(fake.records(), txs)


def test_linger_holds_events_until_due():
    now = [0.0]
    fake = MemoryKinesis(shards=2)
    publisher = Publisher(fake, "s", linger_seconds=1.0, clock=lambda: now[0])
    publisher.add(make_event(ORDER, 1, 0x10, 0))
    publisher.end_transaction(0x10)
    publisher.poll()
    assert fake.calls == [] and publisher.acknowledged_lsn == 0
    now[0] = 1.5
    publisher.poll()
    wait_acknowledged(publisher, 0x10)
    assert len(fake.calls) == 1


def test_an_idle_caller_sends_at_once_instead_of_lingering():
    fake = MemoryKinesis(shards=2)
    publisher = Publisher(fake, "s", linger_seconds=3600.0)
    publisher.add(make_event(ORDER, 1, 0x10, 0))
    publisher.end_transaction(0x10)
    publisher.poll()
    assert fake.calls == []
    publisher.poll(idle=True)
    wait_acknowledged(publisher, 0x10)
    assert len(fake.calls) == 1


def test_a_refused_call_raises_and_keeps_every_record_for_the_next_flush():
    refused = ClientError(
        {
            "Error": {"Code": "ResourceNotFoundException", "Message": "gone"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "PutRecords",
    )
    fake = MemoryKinesis(shards=2, fail_calls=[refused])
    publisher = Publisher(fake, "s", linger_seconds=60)
    txs = transactions(50, rng=random.Random(2))
    publish(publisher, txs)
    with pytest.raises(PublishError, match="ResourceNotFoundException"):
        publisher.flush()
    assert publisher.acknowledged_lsn == 0
    assert publisher.flush() == txs[-1][0]
    assert_complete_and_ordered(fake.records(), txs)


def test_a_stream_that_never_accepts_raises_after_the_stall_limit():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    fake = MemoryKinesis(shards=2)
    fake.throttle_everything = True
    publisher = Publisher(fake, "s", linger_seconds=60, max_stall_seconds=30, clock=lambda: now[0], sleep=sleep)
    publisher.add(make_event(ORDER, 1, 0x10, 0))
    publisher.end_transaction(0x10)
    with pytest.raises(PublishError, match="accepted no record for 30 s"):
        publisher.flush()
    assert publisher.metrics.throttles > 3 and publisher.acknowledged_lsn == 0
    fake.throttle_everything = False
    assert publisher.flush() == 0x10


def test_limits_are_validated():
    fake = MemoryKinesis()
    with pytest.raises(ValueError):
        Publisher(fake, "s", max_record_bytes=MAX_RECORD_BYTES + 1)
    with pytest.raises(ValueError):
        Publisher(fake, "s", max_call_bytes=MAX_CALL_BYTES + 1)
    with pytest.raises(ValueError):
        Publisher(fake, "s", max_call_records=501)
