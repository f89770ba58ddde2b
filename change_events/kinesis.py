"""The Kinesis stream the change events travel on: its client, its creation, its shards.

One adapter for every stage: the reader puts records (`cdc_reader.publisher`), the processor
reads them, and the sync reads the open shards to know which watermarks to wait for, without
importing the reader.

Routing. An event's partition key is its table plus its primary-key values
(`public.sales_order/42`; a table's keyless events, e.g. truncates, use the table name). Its
CRC-32 (`route_hash`), placed in the top bits of the 128-bit hash-key space, is mapped to the
open shard whose hash-key range holds it, so one row's events always go to one shard.
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from change_events.model import ChangeEvent, key_hash

log = logging.getLogger(__name__)

# Kinesis limits (PutRecords): a record's data plus partition key, and a whole call.
MAX_RECORD_BYTES = 1024 * 1024
MAX_CALL_BYTES = 5 * 1024 * 1024
MAX_CALL_RECORDS = 500
HASH_KEY_SPACE = 1 << 128


# -- routing ---------------------------------------------------------------------------------


def hash_key(partition_key: str) -> int:
    """Where a partition key falls in the 128-bit hash-key space: its CRC-32 in the top bits.

    Records are put with an ExplicitHashKey, so the hash need not be Kinesis's own MD5; it
    must only be stable and spread keys evenly, and CRC-32 does both for a fifth of the cost
    of MD5 on the reader's hottest path."""
    return key_hash(partition_key) << 96


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    starting_hash_key: int
    ending_hash_key: int


class ShardMap:
    """The open shards of a stream, which must cover the hash-key space exactly once."""

    def __init__(self, shards: Iterable[Shard]) -> None:
        self.shards = tuple(sorted(shards, key=lambda s: s.starting_hash_key))
        if not self.shards:
            raise ValueError("a stream without open shards")
        expected = 0
        for shard in self.shards:
            if shard.starting_hash_key != expected or shard.ending_hash_key < shard.starting_hash_key:
                raise ValueError(
                    f"open shards do not tile the hash-key space at {shard.shard_id} "
                    f"(expected a range starting at {expected})"
                )
            expected = shard.ending_hash_key + 1
        if expected != HASH_KEY_SPACE:
            raise ValueError("open shards do not cover the hash-key space up to 2^128-1")
        self._starts = [s.starting_hash_key for s in self.shards]

    def shard_for(self, hash_value: int) -> Shard:
        if not 0 <= hash_value < HASH_KEY_SPACE:
            raise ValueError(f"hash key {hash_value} is outside [0, 2^128)")
        return self.shards[bisect_right(self._starts, hash_value) - 1]

    def route(self, event: ChangeEvent) -> Shard:
        return self.shard_for(event.route_hash << 96)

    @classmethod
    def from_kinesis(cls, client, stream_name: str) -> ShardMap:
        """Read the open shards with ListShards (all pages)."""
        shards: list[Shard] = []
        kwargs: dict = {"StreamName": stream_name}
        while True:
            response = client.list_shards(**kwargs)
            for shard in response["Shards"]:
                if shard["SequenceNumberRange"].get("EndingSequenceNumber") is not None:
                    continue  # closed by a split or merge: no longer written to
                shards.append(
                    Shard(
                        shard["ShardId"],
                        int(shard["HashKeyRange"]["StartingHashKey"]),
                        int(shard["HashKeyRange"]["EndingHashKey"]),
                    )
                )
            token = response.get("NextToken")
            if not token:
                return cls(shards)
            kwargs = {"NextToken": token}


# -- the boto3 adapter -----------------------------------------------------------------------


def kinesis_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_attempts: int = 5,
    retry_mode: str = "standard",
    session: boto3.session.Session | None = None,
):
    """A Kinesis client with botocore's retry config.

    The endpoint comes from `endpoint_url`, else boto3's own `AWS_ENDPOINT_URL_KINESIS` /
    `AWS_ENDPOINT_URL`; the region from `region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, else
    us-east-1. A loopback endpoint (kinesalite) takes any credentials: when none are in the
    environment, placeholder ones are used instead of searching the machine for real ones.
    """
    session = session or boto3.session.Session()
    region = (
        region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or session.region_name
        or "us-east-1"
    )
    config = Config(
        retries={"mode": retry_mode, "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
    )
    kwargs: dict = {"region_name": region, "config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    configured = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_KINESIS") or os.environ.get("AWS_ENDPOINT_URL")
    if (
        configured
        and _is_loopback(configured)
        and not os.environ.get("AWS_ACCESS_KEY_ID")
        and not os.environ.get("AWS_PROFILE")
    ):
        kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")  # nosec B106 # placeholder keys a local endpoint needs, not a credential
    return session.client("kinesis", **kwargs)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def ensure_stream(client, name: str, shards: int, *, timeout: float = 60.0) -> bool:
    """Create stream `name` with `shards` shards unless it exists; wait until it is ACTIVE.

    Returns True when this call created it. An existing stream (in AWS, the one Terraform
    made) is only described, never created again, so a role that may put records and
    describe the stream needs nothing more; it is kept as it is, whatever its shard count (a
    warning says so when it differs).
    """
    created = False
    summary = _summary(client, name)
    if summary is None:
        try:
            client.create_stream(StreamName=name, ShardCount=shards)
            created = True
        except client.exceptions.ResourceInUseException:
            pass  # created by someone else in between
    delay = 0.1 if _is_local(client) else 2
    deadline = time.monotonic() + timeout
    while summary is None or summary["StreamStatus"] not in ("ACTIVE", "UPDATING"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {name} is not active after {timeout:g} s")
        time.sleep(delay)
        summary = _summary(client, name)
    if not created and summary["OpenShardCount"] != shards:
        log.warning(
            "stream %s already exists with %d open shards (asked for %d); keeping it",
            name,
            summary["OpenShardCount"],
            shards,
        )
    return created


def _summary(client, name: str) -> dict | None:
    try:
        return client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    except client.exceptions.ResourceNotFoundException:
        return None


def _is_local(client) -> bool:
    return _is_loopback(getattr(getattr(client, "meta", None), "endpoint_url", "") or "")
