"""Helpers for tests that read a Kinesis stream back (kinesalite)."""

from __future__ import annotations

import uuid

from change_events import ChangeEvent, decode
from change_events.kinesis import ensure_stream
import base64
import time
from cdc_reader.publisher import Publisher
from tests.lake_fixtures import SALES_ORDER, Source, sales_order_row
import random
from datetime import datetime, timezone
from change_events import Column, Op, TableSchema


def new_stream(client, shards: int = 4) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    ensure_stream(client, name, shards)
    return name


def read_stream(client, stream: str) -> dict[str, list[tuple[bytes, object]]]:
    """Every record of every shard from TRIM_HORIZON, as (raw data, decoded record)."""
    shards = {}
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records = []
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=10000)
            if not response["Records"]:
                break
            records += [(r["Data"], decode(r["Data"])) for r in response["Records"]]
            iterator = response.get("NextShardIterator")
        shards[shard["ShardId"]] = records
    return shards


def events_by_shard(stream_records) -> dict[str, list[ChangeEvent]]:
    return {shard: [e for _, record in records for e in record.events] for shard, records in stream_records.items()}


SHARD = "shardId-000000000000"


ARN = "arn:aws:kinesis:us-east-1:000000000000:stream/totes-cdc"


def kinesis_event(payloads: list[bytes], start: int = 1) -> dict:
    """A Lambda Kinesis event, as the event source mapping sends it."""
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": SHARD,
                    "sequenceNumber": str(start + i),
                    "data": base64.b64encode(data).decode(),
                    "approximateArrivalTimestamp": time.time(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{SHARD}:{start + i}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/x",
                "awsRegion": "us-east-1",
                "eventSourceARN": ARN,
            }
            for i, data in enumerate(payloads)
        ]
    }


def workload(transactions: int = 30) -> list:
    source = Source()
    events = source.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 21)])
    for n in range(transactions):
        with source.transaction() as tx:
            tx.update(SALES_ORDER, sales_order_row(1 + n % 20, version=n + 1))
            tx.insert(SALES_ORDER, sales_order_row(100 + n))
            if n % 7 == 3:
                tx.delete(SALES_ORDER, {"sales_order_id": str(100 + n)})
        events += tx.events
    return events


ORDER = TableSchema(
    "public.sales_order",
    (
        Column("sales_order_id", "integer", 23, -1, True),
        Column("units_sold", "integer", 23),
        Column("notes", "text", 25),
    ),
)


STAFF = TableSchema("public.staff", (Column("staff_id", "integer", 23, -1, True), Column("email_address", "text", 25)))


LINE = TableSchema(
    "public.line",
    (
        Column("order_id", "integer", 23, -1, True),
        Column("line_no", "integer", 23, -1, True),
        Column("qty", "bigint", 20),
    ),
)


COMMIT = datetime(2024, 11, 15, 14, 40, 10, tzinfo=timezone.utc)


def make_event(
    schema: TableSchema, key: int, lsn: int, seq: int, op: Op = Op.UPDATE, text: str | None = None
) -> ChangeEvent:
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
    return ChangeEvent(
        schema, op, lsn=lsn, seq=seq, xid=lsn // 100, commit_ts=COMMIT, key=keys, after=after, before=before
    )


def transactions(
    count: int, *, keys: int = 400, rng: random.Random, max_size: int = 6
) -> list[tuple[int, list[ChangeEvent]]]:
    """`count` source transactions of 1..max_size changes each, on random rows of 3 tables."""
    txs = []
    for tx in range(count):
        lsn = 0x1000000 + tx * 0x100
        events = []
        for seq in range(rng.randint(1, max_size)):
            schema = rng.choice((ORDER, ORDER, STAFF, LINE))
            events.append(
                make_event(
                    schema, rng.randrange(keys), lsn, seq, rng.choice((Op.INSERT, Op.UPDATE, Op.UPDATE, Op.DELETE))
                )
            )
        txs.append((lsn, events))
    return txs


def publish_events(publisher: Publisher, events: list[ChangeEvent], *, flush: bool = False) -> None:
    """Add `events` in order, ending a transaction after the last event of each LSN (and
    flushing it as its own record when `flush`)."""
    for index, event in enumerate(events):
        publisher.add(event)
        if index + 1 == len(events) or events[index + 1].lsn != event.lsn:
            publisher.end_transaction(event.lsn)
            if flush:
                publisher.flush()


def publish_transaction(publisher: Publisher, tx) -> None:
    """One scripted transaction handed on whole: its events, its end, its watermark, flushed."""
    for event in tx.events:
        publisher.add(event)
    publisher.end_transaction(tx.lsn)
    publisher.publish_watermark(tx.lsn)
    publisher.flush()


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
        f"lost {len(expected.keys() - seen.keys())}, extra {len(seen.keys() - expected.keys())}"
    )
    assert all(seen[i] == expected[i] for i in expected)


def wait_acknowledged(publisher: Publisher, lsn: int, timeout: float = 10.0) -> None:
    """Poll until Kinesis's answers, which arrive on the sending thread, are settled."""
    deadline = time.monotonic() + timeout
    while publisher.acknowledged_lsn < lsn:
        assert time.monotonic() < deadline, f"not acknowledged up to {lsn:#x} in {timeout} s"
        time.sleep(0.001)
        publisher.poll()
