"""The Kinesis adapter (change_events.kinesis): routing rows to shards, the shard map, the client."""

from __future__ import annotations

import zlib

import pytest

from change_events import ChangeEvent, Op
from change_events.kinesis import HASH_KEY_SPACE, Shard, ShardMap, hash_key, kinesis_client
from tests.stream_helpers import COMMIT, LINE, ORDER, make_event


def test_partition_key_is_table_and_key_values():
    assert make_event(ORDER, 42, 1, 0).partition_key == "public.sales_order/42"
    assert make_event(LINE, 73, 1, 0).partition_key == "public.line/7/3"
    truncate = ChangeEvent(ORDER, Op.TRUNCATE, lsn=1, seq=0, xid=1, commit_ts=COMMIT, key={})
    assert truncate.partition_key == "public.sales_order"
    # Stable across processes and releases: a row's shard must not depend on who routes it.
    assert hash_key("public.sales_order/42") == zlib.crc32(b"public.sales_order/42") << 96


def test_shard_map_must_tile_the_hash_key_space():
    with pytest.raises(ValueError, match="tile"):
        ShardMap([Shard("a", 0, 10), Shard("b", 12, HASH_KEY_SPACE - 1)])
    with pytest.raises(ValueError, match="cover"):
        ShardMap([Shard("a", 0, 10)])


def test_kinesis_client_reads_the_standard_environment(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4567")
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    client = kinesis_client()
    assert client.meta.endpoint_url == "http://127.0.0.1:4567"
    assert client.meta.region_name == "eu-west-2"
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.retries["total_max_attempts"] == 5 or client.meta.config.retries.get("max_attempts") == 5
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert kinesis_client().meta.region_name == "us-east-1"
