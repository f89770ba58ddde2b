"""Helpers for tests that read a Kinesis stream back (kinesalite)."""

from __future__ import annotations

import uuid

from change_events import ChangeEvent, decode
from change_events.kinesis import ensure_stream


def new_stream(client, shards: int = 4) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    ensure_stream(client, name, shards)
    return name


def read_stream(client, stream: str) -> dict[str, list[tuple[bytes, object]]]:
    """Every record of every shard from TRIM_HORIZON, as (raw data, decoded record)."""
    shards = {}
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
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
    return {shard: [e for _, record in records for e in record.events]
            for shard, records in stream_records.items()}
