"""The Kinesis adapter (change_events.kinesis): routing rows to shards, the shard map, the client."""

from __future__ import annotations

from collections import Counter


from change_events.kinesis import ShardMap, hash_key
from tests.stream_helpers import new_stream
from tests.stream_helpers import ORDER, make_event


def test_routing_spreads_keys_evenly_and_kinesis_agrees_on_the_shard(kinesis):
    stream = new_stream(kinesis, shards=4)
    shard_map = ShardMap.from_kinesis(kinesis, stream)
    assert len(shard_map.shards) == 4
    counts = Counter(shard_map.route(make_event(ORDER, key, 1, 0)).shard_id for key in range(40_000))
    assert len(counts) == 4 and min(counts.values()) > 9_000
    for key in range(60):
        event = make_event(ORDER, key, 1, 0)
        put = kinesis.put_record(
            StreamName=stream,
            PartitionKey=event.partition_key,
            Data=b"x",
            ExplicitHashKey=str(hash_key(event.partition_key)),
        )
        assert put["ShardId"] == shard_map.route(event).shard_id
