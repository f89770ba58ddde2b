"""Running the stream processor locally: poll each shard of the stream and hand batches,
shaped exactly like the Kinesis events AWS Lambda receives, to the same handler code.

Like the event source mapping, it waits up to a batching window to gather a shard's records
(so the lake sees about one commit per table per second, not one per record), keeps the
shards in order, and retries a failed batch from where it failed. Where each shard is up to
lives in a small offsets file next to the lake it feeds; it is written after the lake
commit, so a crash in between only redelivers what the lake already has (and ignores).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from stream_processors.handler import BatchOutcome, StreamProcessor

log = logging.getLogger("totes.processor")


class ShardOffsets:
    """The last processed sequence number of every shard, in a JSON file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offsets: dict[str, str] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, shard: str) -> str | None:
        return self._offsets.get(shard)

    def set(self, shard: str, sequence_number: str) -> None:
        self._offsets[shard] = sequence_number
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(self._offsets, indent=1))
        os.replace(scratch, self.path)


def lambda_record(record: dict, shard: str, stream_arn: str, region: str) -> dict:
    """One GetRecords record in the shape of a Lambda Kinesis event record."""
    arrival = record["ApproximateArrivalTimestamp"]
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record["PartitionKey"],
            "sequenceNumber": record["SequenceNumber"],
            "data": base64.b64encode(record["Data"]).decode("ascii"),
            "approximateArrivalTimestamp": arrival.timestamp() if hasattr(arrival, "timestamp") else float(arrival),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard}:{record['SequenceNumber']}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::000000000000:role/totes-processor-local",
        "awsRegion": region,
        "eventSourceARN": stream_arn,
    }


@dataclass
class _Shard:
    id: str
    parent: str | None
    iterator: str | None = None
    pending: list[dict] = field(default_factory=list)
    first_seen: float | None = None
    closed: bool = False
    retry_at: float = 0.0
    failures: int = 0


class LocalPoller:
    def __init__(self, client, stream: str, processor: StreamProcessor, offsets: ShardOffsets, *,
                 batch_window: float = 1.0, max_batch_records: int = 10_000, idle_sleep: float = 0.2):
        self.client = client
        self.stream = stream
        self.processor = processor
        self.offsets = offsets
        self.batch_window = batch_window
        self.max_batch_records = max_batch_records
        # Never sleep longer than half a batching window, or the window stretches.
        self.idle_sleep = min(idle_sleep, max(batch_window / 2, 0.01))
        summary = client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        self.stream_arn = summary["StreamARN"]
        self.region = client.meta.region_name
        self.shards: dict[str, _Shard] = {}
        self.batches = 0
        self.events = 0
        self._refresh_shards()

    def _refresh_shards(self) -> None:
        kwargs: dict = {"StreamName": self.stream}
        while True:
            response = self.client.list_shards(**kwargs)
            for shard in response["Shards"]:
                if shard["ShardId"] not in self.shards:
                    self.shards[shard["ShardId"]] = _Shard(shard["ShardId"], shard.get("ParentShardId"))
            if not response.get("NextToken"):
                return
            kwargs = {"NextToken": response["NextToken"]}

    def _iterator(self, shard: _Shard) -> str:
        offset = self.offsets.get(shard.id)
        kwargs = ({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": offset}
                  if offset else {"ShardIteratorType": "TRIM_HORIZON"})
        return self.client.get_shard_iterator(StreamName=self.stream, ShardId=shard.id, **kwargs)["ShardIterator"]

    def _ready(self, shard: _Shard) -> bool:
        """A child shard waits until its parent is read to the end (order per key)."""
        parent = self.shards.get(shard.parent) if shard.parent else None
        return not shard.closed and (parent is None or parent.closed) and time.monotonic() >= shard.retry_at

    def poll_once(self) -> list[BatchOutcome]:
        """One round over the shards: fetch what is there, process batches that are due."""
        outcomes = []
        for shard in list(self.shards.values()):
            if not self._ready(shard):
                continue
            if shard.iterator is None:
                shard.iterator = self._iterator(shard)
            response = self.client.get_records(ShardIterator=shard.iterator, Limit=10_000)
            shard.iterator = response.get("NextShardIterator")
            if response["Records"]:
                shard.pending += [lambda_record(r, shard.id, self.stream_arn, self.region) for r in response["Records"]]
                shard.first_seen = shard.first_seen or time.monotonic()
            due = shard.pending and (len(shard.pending) >= self.max_batch_records
                                     or time.monotonic() - shard.first_seen >= self.batch_window
                                     or shard.iterator is None)
            if due:
                outcomes.append(self._process(shard))
            if shard.iterator is None and not shard.pending:
                shard.closed = True  # read to its end (split or merged away)
                self._refresh_shards()
        return outcomes

    def _process(self, shard: _Shard) -> BatchOutcome:
        outcome = self.processor.process({"Records": shard.pending})
        if outcome.failed_from is None:
            self.offsets.set(shard.id, shard.pending[-1]["kinesis"]["sequenceNumber"])
            self.batches += 1
            self.events += outcome.events
            shard.failures = 0
        else:
            # Read again from the last good offset after a pause, like Lambda's retries.
            shard.failures += 1
            shard.retry_at = time.monotonic() + min(2 ** shard.failures, 60)
            shard.iterator = None
            log.warning("batch of %s failed; retrying in %.0f s", shard.id, shard.retry_at - time.monotonic())
        shard.pending = []
        shard.first_seen = None
        return outcome

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not any(o.records for o in self.poll_once()):
                stop.wait(self.idle_sleep)
        # Flush what was gathered: it is in order and complete as far as it goes.
        for shard in self.shards.values():
            if shard.pending:
                self._process(shard)
