"""The stream processor: a Lambda handler for Kinesis batches, writing the lake.

AWS calls `handler(event, context)` through the Kinesis event source mapping; locally
`totes processor` builds the very same event from kinesalite and calls the same function.

A batch comes from one shard, in order. Each record is decoded on its own (powertools'
BatchProcessor drives the records and their partial-failure report); a record that does not
decode is dead-lettered with the reason and its raw bytes, and the rest flows on. All decoded
events then go to the lake in one `write_batch` (exactly once per shard, so Lambda's retries
are harmless); events the lake refuses (say, a column named like a lake column) are dead-lettered too.
If the lake itself cannot be written (an outage, not the events' fault), every record from
the first one is reported failed, so Lambda retries the batch in order instead of skipping
past it; each retry is logged with its reason and counted in the BatchRetries metric.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

from change_events import ChangeEvent, CodecError, decode
from change_events.errors import OUTAGE_BACKOFF, Kind, classify, is_retryable
from lake.dead_letters import DeadLetters
from lake.writer import LakeWriter, Rejected
from totes_cli import bootstrap

logger = Logger(service="totes-processor")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # deltalake colours its error chains
NAMESPACE = bootstrap.METRICS_NAMESPACE


@dataclass
class BatchOutcome:
    """What one batch did; the local poller and tests read it, Lambda gets `response`."""

    shard: str
    records: int = 0
    events: int = 0
    appended: int = 0
    markers: list[int] = field(default_factory=list)
    dead_letters: int = 0
    failed_from: str | None = None
    """Sequence number of the first record to retry (the lake could not be written)."""
    retry_reason: str | None = None
    """Why the batch is to be retried (an outage: S3 or the lake unreachable)."""

    @property
    def response(self) -> dict:
        failures = [] if self.failed_from is None else [{"itemIdentifier": self.failed_from}]
        return {"batchItemFailures": failures}


def shard_of(record: KinesisStreamRecord) -> str:
    """'shardId-000000000001:4959...' → 'shardId-000000000001'."""
    return record.event_id.split(":", 1)[0]


class StreamProcessor:
    """Decodes one shard's batch and writes it to the lake; one instance per warm Lambda."""

    def __init__(self, lake: LakeWriter, metrics: Metrics | None = None):
        self.lake = lake
        self.dead_letters = DeadLetters(lake.layout)
        self.metrics = metrics

    def merge_due_states(self, everything: bool = False) -> int:
        """The state merges the lake writer put off (`lake.merge_schedule`) that are due."""
        return self.lake.merge_due_states(everything)

    @property
    def paces_merges(self) -> bool:
        """Its state merges wait to be run beside the batches (`LakeWriter(merge_share=…)`)."""
        return self.lake.schedule.paced

    def find_unmerged(self, shards: list[str]) -> int:
        """Put off a merge of every state table a killed writer left behind its log."""
        return self.lake.find_unmerged(shards)

    def process(self, event: dict) -> BatchOutcome:
        records = [KinesisStreamRecord(r) for r in event.get("Records", [])]
        outcome = BatchOutcome(shard=shard_of(records[0]) if records else "")
        if not records:
            return outcome
        events: list[ChangeEvent] = []

        def decode_record(record: KinesisStreamRecord) -> None:
            raw = base64.b64decode(record.kinesis.data)
            try:
                decoded = decode(raw)
            except Exception as error:  # CodecError; anything else would be a decoder bug, and is contained too
                if is_retryable(error):
                    raise  # the function's trouble (out of memory), not the record's: retried
                reason = str(error) if isinstance(error, CodecError) else f"{type(error).__name__}: {error}"
                self.dead_letters.add(
                    f"undecodable record: {reason}",
                    raw,
                    shard=outcome.shard,
                    sequence_number=record.kinesis.sequence_number,
                )
                outcome.dead_letters += 1
                logger.warning(
                    "dead-lettered record",
                    extra={"shard": outcome.shard, "reason": reason, "sequence_number": record.kinesis.sequence_number},
                )
                return
            events.extend(decoded.events)
            if decoded.watermark is not None:
                outcome.markers.append(decoded.watermark.lsn)

        batch = BatchProcessor(event_type=EventType.KinesisDataStreams, raise_on_entire_batch_failure=False)
        with batch(event["Records"], decode_record):
            batch.process()
        outcome.records = len(records)
        outcome.events = len(events)
        if batch.response()["batchItemFailures"]:
            # Bad data is dead-lettered, so only an outage (the dead letters cannot be
            # written) gets here. Nothing of this batch is in the lake yet, so the whole
            # batch is retried, not just from the failed record.
            error = batch.exceptions[0][1] if batch.exceptions else None
            reason = f"a record could not be handled: {type(error).__name__}: {error}"
            return self._retry(outcome, records, reason, classify(error) if error is not None else Kind.BUG)

        def reject(rejected: Rejected) -> None:
            self.dead_letters.add_rejected(rejected, outcome.shard)
            outcome.dead_letters += len(rejected.events)
            logger.warning(
                "dead-lettered events the lake refused",
                extra={"table": rejected.table, "events": len(rejected.events), "reason": str(rejected.error)},
            )

        try:
            result = self.lake.write_batch(outcome.shard, events, outcome.markers, on_rejected=reject)
        except Exception as error:  # outages get here (what the events cause is rejected), and bugs
            # A batch is never skipped, whatever the kind: its kind is logged, so a bug that
            # keeps a shard retrying is told from an outage.
            return self._retry(outcome, records, f"lake write failed: {type(error).__name__}: {error}", classify(error))
        outcome.appended = result.appended
        for table, reason in result.state_errors.items():
            logger.error("state merge failed; the change log has the events", extra={"table": table, "reason": reason})
        self._measure(outcome, records)
        return outcome

    def _retry(
        self, outcome: BatchOutcome, records: list[KinesisStreamRecord], reason: str, kind: Kind = Kind.TRANSIENT
    ) -> BatchOutcome:
        """Report the whole batch failed, so it is retried in order until the lake takes it.

        A batch is never given up for an outage (later watermarks would pass its events);
        each retry is logged with the reason and counted (BatchRetries, alarmed in
        infra/alarms.tf), and the retries back off (the poller; the event source mapping)."""
        outcome.failed_from = records[0].kinesis.sequence_number
        outcome.retry_reason = " ".join(_ANSI.sub("", reason).split())[:1000]
        logger.error(
            "batch failed; it will be retried",
            extra={"shard": outcome.shard, "reason": outcome.retry_reason, "kind": kind.value},
        )
        if self.metrics is not None:
            self.metrics.add_metric(name="BatchRetries", unit=MetricUnit.Count, value=1)
        return outcome

    def _measure(self, outcome: BatchOutcome, records: list[KinesisStreamRecord]) -> None:
        if self.metrics is None:
            return
        self.metrics.add_metric(name="Events", unit=MetricUnit.Count, value=outcome.events)
        self.metrics.add_metric(name="EventsAppended", unit=MetricUnit.Count, value=outcome.appended)
        self.metrics.add_metric(name="DeadLetters", unit=MetricUnit.Count, value=outcome.dead_letters)
        oldest = min(r.kinesis.approximate_arrival_timestamp for r in records)
        self.metrics.add_metric(name="ArrivalLagSeconds", unit=MetricUnit.Seconds, value=max(time.time() - oldest, 0))


_processor: StreamProcessor | None = None
_metrics = Metrics(namespace=NAMESPACE, service="processor")


def _lake_processor() -> StreamProcessor:
    global _processor
    if _processor is None:
        _processor = bootstrap.lambda_processor(_metrics)  # wired by the composition root, as every stage
    return _processor


@_metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict, context) -> dict:
    """AWS Lambda entry point (Kinesis event source mapping, ReportBatchItemFailures on).

    The event source mapping retries a failed batch at once; during an outage the warm
    function pauses before reporting the failure (`OUTAGE_BACKOFF`: 1 s, doubling per
    consecutive failure of the shard, at most 30 s, and never past half its remaining time),
    so retries back off instead of spinning."""
    outcome = _lake_processor().process(event)
    if outcome.failed_from is None:
        _failures.pop(outcome.shard, None)
    else:
        _failures[outcome.shard] = failures = _failures.get(outcome.shard, 0) + 1
        remaining = (
            context.get_remaining_time_in_millis() / 1000 if hasattr(context, "get_remaining_time_in_millis") else 0
        )
        time.sleep(max(0.0, min(OUTAGE_BACKOFF.delay(failures), remaining / 2)))
    return outcome.response


_failures: dict[str, int] = {}
"""Consecutive failed batches per shard, in this warm function."""
