"""The reader's Kinesis sink: packing, ordering under failure, watermarks and acknowledgement,
against a real kinesalite (and in-memory fakes where only the logic matters). Routing, packing
and acknowledgements on their own: tests/test_kinesis.py, test_records.py, test_acks.py.

Every stream is read back shard by shard from TRIM_HORIZON and decoded; the checks are on
what a consumer would see, not on the publisher's own counters.
"""

from __future__ import annotations

import random
import string
import time
from collections import defaultdict
from datetime import datetime, timezone

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from cdc_reader.publisher import PublishError, Publisher
from cdc_reader.records import EventTooLargeError
from change_events import ChangeEvent, Column, Op, TableSchema, decode
from change_events.kinesis import HASH_KEY_SPACE, MAX_CALL_BYTES, MAX_RECORD_BYTES, Shard, ShardMap
from tests.stream_helpers import events_by_shard, new_stream, read_stream

ORDER = TableSchema("public.sales_order", (
    Column("sales_order_id", "integer", 23, -1, True),
    Column("units_sold", "integer", 23),
    Column("notes", "text", 25),
))
STAFF = TableSchema("public.staff", (
    Column("staff_id", "integer", 23, -1, True),
    Column("email_address", "text", 25),
))
LINE = TableSchema("public.line", (
    Column("order_id", "integer", 23, -1, True),
    Column("line_no", "integer", 23, -1, True),
    Column("qty", "bigint", 20),
))
COMMIT = datetime(2024, 11, 15, 14, 40, 10, tzinfo=timezone.utc)

# -- fixtures and helpers --------------------------------------------------------------------
# (kinesalite_url and kinesis come from conftest; new_stream, read_stream from stream_helpers)

def make_event(schema: TableSchema, key: int, lsn: int, seq: int, op: Op = Op.UPDATE,
               text: str | None = None) -> ChangeEvent:
    if schema is ORDER:
        keys = {"sales_order_id": str(key)}
        row = {**keys, "units_sold": str(seq), "notes": text if text is not None else f"order {key}"}
    elif schema is STAFF:
        keys = {"staff_id": str(key)}
        row = {**keys, "email_address": f"staff{key}@terrifictotes.com"}
    else:
        keys = {"order_id": str(key // 10), "line_no": str(key % 10)}
        row = {**keys, "qty": str(lsn)}
    after = None if op is Op.DELETE else row
    before = keys if op is Op.DELETE else None
    return ChangeEvent(schema, op, lsn=lsn, seq=seq, xid=lsn // 100, commit_ts=COMMIT, key=keys,
                       after=after, before=before)


def transactions(count: int, *, keys: int = 400, rng: random.Random,
                 max_size: int = 6) -> list[tuple[int, list[ChangeEvent]]]:
    """`count` source transactions of 1..max_size changes each, on random rows of 3 tables."""
    txs = []
    for tx in range(count):
        lsn = 0x1000000 + tx * 0x100
        events = []
        for seq in range(rng.randint(1, max_size)):
            schema = rng.choice((ORDER, ORDER, STAFF, LINE))
            events.append(make_event(schema, rng.randrange(keys), lsn, seq,
                                     rng.choice((Op.INSERT, Op.UPDATE, Op.UPDATE, Op.DELETE))))
        txs.append((lsn, events))
    return txs


def publish(publisher: Publisher, txs, *, check=None) -> None:
    for commit_lsn, events in txs:
        for event in events:
            publisher.add(event)
        publisher.end_transaction(commit_lsn)
        if check:
            check()


def assert_complete_and_ordered(stream_records, txs, *, allow_duplicates: bool = False) -> None:
    """Nothing lost, nothing extra (or only exact repeats), each row on one shard in (lsn, seq) order."""
    expected = {e.event_id: e for _, events in txs for e in events}
    seen: dict[tuple[int, int], ChangeEvent] = {}
    shard_of_row: dict[str, str] = {}
    last_of_row: dict[str, tuple[int, int]] = {}
    for shard, events in events_by_shard(stream_records).items():
        for event in events:
            if event.event_id in seen:
                assert allow_duplicates, f"event {event.event_id} delivered twice"
                assert seen[event.event_id] == event
                continue
            seen[event.event_id] = event
            row = event.partition_key
            assert shard_of_row.setdefault(row, shard) == shard, f"{row} is on two shards"
            assert last_of_row.get(row, (-1, -1)) < event.event_id, f"{row} reordered at {event.event_id}"
            last_of_row[row] = event.event_id
    assert seen.keys() == expected.keys(), (
        f"lost {len(expected.keys() - seen.keys())}, extra {len(seen.keys() - expected.keys())}")
    assert all(seen[i] == expected[i] for i in expected)


class FlakyKinesis:
    """Fails random PutRecords entries (throttling, internal failure) and sometimes the whole
    call before forwarding the rest to the real client; optionally forwards a call and then
    loses the answer (a timeout after Kinesis took the records). Sees which events Kinesis
    acknowledged, so tests can check the publisher's claims against it."""

    def __init__(self, client, rng: random.Random, *, entry_failure: float = 0.3,
                 call_failure: float = 0.1, lost_answer: float = 0.0) -> None:
        self.client = client
        self.rng = rng
        self.entry_failure = entry_failure
        self.call_failure = call_failure
        self.lost_answer = lost_answer
        self.acknowledged: set[tuple[int, int]] = set()
        self.injected = 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def put_records(self, *, StreamName, Records):
        if self.rng.random() < self.call_failure:
            self.injected += 1
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException",
                                         "Message": "Rate exceeded for stream (injected)"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutRecords")
        failing = {i for i in range(len(Records)) if self.rng.random() < self.entry_failure}
        forward = [r for i, r in enumerate(Records) if i not in failing]
        answers = iter(self.client.put_records(StreamName=StreamName, Records=forward)["Records"]
                       if forward else [])
        if forward and self.rng.random() < self.lost_answer:
            self.injected += 1
            raise ReadTimeoutError(endpoint_url="http://kinesis (injected)")
        results = []
        for i, record in enumerate(Records):
            if i in failing:
                self.injected += 1
                code = self.rng.choice(("ProvisionedThroughputExceededException", "InternalFailure"))
                results.append({"ErrorCode": code, "ErrorMessage": "injected"})
            else:
                answer = next(answers)
                results.append(answer)
                self.acknowledged.update(e.event_id for e in decode(record["Data"]).events)
        return {"FailedRecordCount": len(failing), "Records": results}


class MemoryKinesis:
    """An in-memory, order-keeping Kinesis with `shards` even shards: for logic-only tests."""

    def __init__(self, shards: int = 4, fail_calls: list[Exception] | None = None) -> None:
        step = HASH_KEY_SPACE // shards
        self.shards = [Shard(f"shardId-{i:012d}", i * step,
                             HASH_KEY_SPACE - 1 if i == shards - 1 else (i + 1) * step - 1)
                       for i in range(shards)]
        self.map = ShardMap(self.shards)
        self.data: dict[str, list[bytes]] = defaultdict(list)
        self.calls: list[list[dict]] = []
        self.fail_calls = list(fail_calls or [])
        self.throttle_everything = False

    def list_shards(self, **kwargs):
        return {"Shards": [{"ShardId": s.shard_id,
                            "HashKeyRange": {"StartingHashKey": str(s.starting_hash_key),
                                             "EndingHashKey": str(s.ending_hash_key)},
                            "SequenceNumberRange": {"StartingSequenceNumber": "1"}}
                           for s in self.shards]}

    def put_records(self, *, StreamName, Records):
        self.calls.append(Records)
        if self.fail_calls:
            raise self.fail_calls.pop(0)
        results = []
        for record in Records:
            if self.throttle_everything:
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "x"})
                continue
            shard = self.map.shard_for(int(record["ExplicitHashKey"]))
            self.data[shard.shard_id].append(record["Data"])
            results.append({"ShardId": shard.shard_id, "SequenceNumber": str(len(self.data[shard.shard_id]))})
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}

    def records(self):
        return {s.shard_id: [(data, decode(data)) for data in self.data[s.shard_id]] for s in self.shards}


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
    publisher = Publisher(flaky, stream, max_record_bytes=600, linger_seconds=60,
                          backoff_base_seconds=0.0005, backoff_max_seconds=0.005)
    checked = []

    def acknowledged_lsn_is_honest():
        lsn = publisher.acknowledged_lsn
        missing = [e.event_id for _, events in txs for e in events
                   if e.lsn <= lsn and e.event_id not in flaky.acknowledged]
        assert not missing, f"acknowledged_lsn {lsn} passes unacknowledged events {missing[:3]}"
        checked.append(lsn)

    for chunk in range(0, len(txs), 100):
        publish(publisher, txs[chunk:chunk + 100], check=acknowledged_lsn_is_honest)
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
    publisher = naive(flaky, stream, max_record_bytes=600, linger_seconds=60,
                      backoff_base_seconds=0.0005, backoff_max_seconds=0.005)
    publish(publisher, txs)
    publisher.flush()
    with pytest.raises(AssertionError, match="reordered"):
        assert_complete_and_ordered(read_stream(kinesis, stream), txs)


def test_lost_answers_may_repeat_records_but_never_lose_or_reorder(kinesis):
    stream = new_stream(kinesis, shards=4)
    txs = transactions(300, rng=random.Random(5), keys=60)
    flaky = FlakyKinesis(kinesis, random.Random(9), entry_failure=0.1, call_failure=0.0,
                         lost_answer=0.2)
    publisher = Publisher(flaky, stream, max_record_bytes=600, linger_seconds=60,
                          backoff_base_seconds=0.0005, backoff_max_seconds=0.005)
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
    publisher = Publisher(flaky, stream, max_record_bytes=4000, linger_seconds=60,
                          backoff_base_seconds=0.0005, backoff_max_seconds=0.005)
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
        after_marker = [e for _, r in shard_records[position + 1:] for e in r.events]
        assert all(e.lsn > watermark for e in after_marker), f"{shard}: an event <= W after the marker"
    before_marker = {e.event_id for records_ in records.values() for _, r in records_
                     for e in r.events if e.lsn <= watermark}
    assert before_marker == {e.event_id for _, events in txs[:250] for e in events}
    assert_complete_and_ordered(records, txs)
    assert publisher.metrics.watermark_records == 4


def test_large_values_are_split_across_records(kinesis):
    stream = new_stream(kinesis, shards=2)
    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits + "+/"
    big = [make_event(ORDER, 7, 0x5000 + i * 0x10, 0,
                      text="".join(rng.choices(alphabet, k=300_000))) for i in range(12)]
    small = [make_event(ORDER, k, 0x5000 + i * 0x10, 1) for i, k in enumerate(range(100, 112))]
    txs = [(big[i].lsn, [big[i], small[i]]) for i in range(12)]
    publisher = Publisher(kinesis, stream, linger_seconds=60)
    publish(publisher, txs)
    publisher.flush()

    records = read_stream(kinesis, stream)
    assert_complete_and_ordered(records, txs)
    shard_of_big = next(s for s, rs in records.items() if any(e.event_id == big[0].event_id
                                                               for _, r in rs for e in r.events))
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


# -- logic with in-memory fakes --------------------------------------------------------------

@pytest.mark.parametrize(("record_bytes", "call_records", "call_bytes"), [
    (1000, 25, 6000),  # the byte limit binds
    (600, 10, MAX_CALL_BYTES),  # the record-count limit binds
])
def test_calls_respect_record_and_byte_limits_and_one_record_per_shard(record_bytes, call_records,
                                                                       call_bytes):
    fake = MemoryKinesis(shards=40)
    publisher = Publisher(fake, "s", max_record_bytes=record_bytes, max_call_records=call_records,
                          max_call_bytes=call_bytes, linger_seconds=60)
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


def wait_acknowledged(publisher: Publisher, lsn: int, timeout: float = 10.0) -> None:
    """Poll until Kinesis's answers, which arrive on the sending thread, are settled."""
    deadline = time.monotonic() + timeout
    while publisher.acknowledged_lsn < lsn:
        assert time.monotonic() < deadline, f"not acknowledged up to {lsn:#x} in {timeout} s"
        time.sleep(0.001)
        publisher.poll()


def test_a_refused_call_raises_and_keeps_every_record_for_the_next_flush():
    refused = ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "gone"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutRecords")
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
    publisher = Publisher(fake, "s", linger_seconds=60, max_stall_seconds=30, clock=lambda: now[0],
                          sleep=sleep)
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
