"""Running the stream processor locally: poll each shard of the stream and hand batches,
shaped exactly like the Kinesis events AWS Lambda receives, to the same handler code.

Like the event source mapping, it batches a shard's records (at most one batch per shard per
batching window, so the lake sees about one commit per table per window, not one per
record), keeps the shards in order, processes the shards concurrently, and retries a failed
batch from where it failed. Where each shard is up to lives in a small offsets file next to
the lake it feeds; it is written after the lake commit, so a crash in between only
redelivers what the lake already has (and ignores).

Nothing the stream does ends the poller: throttling, 5xx and connection errors are retried by
botocore's retry config first, then by the poller, per shard, with backoff (counted in
`read_retries`, logged with the reason); an expired iterator is obtained again after the
last processed sequence number (AFTER_SEQUENCE_NUMBER) and what was fetched since is read
again. A batch the lake cannot take (an outage) is retried with backoff until it can.

Why one file (~400 lines): the shards' loops, their offsets and the merge thread stop and
start together; the handler they call is `stream_processors.handler`.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from change_events.codec import events_body_size
from change_events.errors import RetryPolicy, is_failure
from change_events.files import atomic_write_json
from stream_processors.handler import BatchOutcome, StreamProcessor

log = logging.getLogger("totes.processor")

MERGE_LOOK_SECONDS = 0.2
"""How often the thread of paced state merges looks for one that is due."""


class ShardOffsets:
    """The last processed sequence number of every shard, in a JSON file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offsets: dict[str, str] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self._lock = threading.Lock()

    def get(self, shard: str) -> str | None:
        return self._offsets.get(shard)

    def set(self, shard: str, sequence_number: str) -> None:
        with self._lock:  # shards are processed concurrently
            self._offsets[shard] = sequence_number
            atomic_write_json(self.path, self._offsets, indent=1)


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


MAX_BATCH_BYTES = 4 << 20
"""The most events (uncompressed bytes) a batch hands the lake by default. Decoded, events take
about 8 times their bytes (1.4 kB for a 185-byte sales_order update), and each shard decodes
its own batch beside the others: about 32 MB a shard (16 MiB held 130 MB a shard in a backlog)."""


@dataclass
class _Shard:
    id: str
    parent: str | None
    iterator: str | None = None
    pending: list[dict] = field(default_factory=list)
    pending_bytes: int = 0
    """Uncompressed bytes of the events in `pending` (markers weigh nothing)."""
    sizes: list[int] = field(default_factory=list)
    """The same for each record of `pending`."""
    ended: bool = False
    """GetRecords gave no next iterator: the shard was split or merged away."""
    closed: bool = False
    retry_at: float = 0.0
    failures: int = 0
    """Consecutive failed batches (the lake could not take them)."""
    read_failures: int = 0
    """Consecutive failed reads of the stream."""


class LocalPoller:
    """Polls every shard; `run` until stopped, or `poll_once` for one round (tests).

    Batches are cut when the previous cut is at least `batch_window` old (or when a shard's
    records fill a batch): at most one batch per shard per window under load, and no wait
    at all for the first records after a quiet spell. All shards are cut together and their
    batches written concurrently, one thread per shard (as Lambda runs one invocation per
    shard), so the lake watermark, the minimum over the shards, moves once per window,
    after the slowest shard's batch. Between rounds it sleeps at most `idle_sleep`: less
    when a batch is due sooner, and `wake()` (e.g. from whoever just put records on the
    stream) ends the sleep early; a round that read records is followed by another at once.

    At light load a window holds a few events, and its commits cost as much as full ones (a
    Parquet file and a log entry per table and shard, a state merge, a sync run), so lake
    files and CPU would follow the clock, not the data. So a window whose shards gathered
    less than `min_batch_bytes` of events (uncompressed; about 185 bytes an event) is held
    open until they have, or until `quiet_window` has passed since the last cut that held
    events: commits then
    follow the data, and a trickle waits at most `quiet_window`. The first records after a
    quiet spell still go at once, the markers that follow events are not held (the lake
    watermark, and with it the warehouse, would wait), an idle stream's markers are cut once
    per `quiet_window`, and under load (more than that per window) nothing changes. The
    state merges the lake writer put off (`LakeWriter.state_delay`) are run between rounds
    once due, and all of them when the poller stops; a writer that paces its merges by their
    cost (`LakeWriter(merge_share=…)`, `lake.merge_schedule`) has them run in a thread of
    their own instead, so that no batch waits for one.
    """

    def __init__(
        self,
        client,
        stream: str,
        processor: StreamProcessor,
        offsets: ShardOffsets,
        *,
        batch_window: float = 1.0,
        max_batch_records: int = 10_000,
        idle_sleep: float = 0.2,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        quiet_window: float | None = None,
        min_batch_bytes: int = 0,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ):
        self.client = client
        self.stream = stream
        self.processor = processor
        self.offsets = offsets
        self.batch_window = batch_window
        self.quiet_window = batch_window if quiet_window is None else max(quiet_window, batch_window)
        """The longest a window with less than `min_batch_bytes` of events is held open."""
        self.min_batch_bytes = min_batch_bytes
        self.max_batch_bytes = max_batch_bytes
        """The most events (uncompressed bytes) one batch hands the lake: a backlog read in one
        GetRecords is written in several batches, so memory is bounded by this, not the backlog."""
        self.max_batch_records = max_batch_records
        self.idle_sleep = idle_sleep
        self.backoff = backoff
        """The first retry's pause in seconds; it doubles with each failure, up to `max_backoff`."""
        self.max_backoff = max_backoff
        self._backoff = RetryPolicy(base=backoff, cap=max_backoff)
        self.batch_retries = 0
        self.read_retries = 0
        summary = client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        self.stream_arn = summary["StreamARN"]
        self.region = client.meta.region_name
        self.shards: dict[str, _Shard] = {}
        self.batches = 0
        self.events = 0
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._last_cut = float("-inf")
        self._last_data_cut = float("-inf")
        """When a cut last held events (a quiet spell is measured from it)."""
        self._cut_had_events = False
        self._shards_changed = False
        self._refresh_shards()

    def wake(self) -> None:
        """There may be new records (or the poller should stop): end the current sleep."""
        self._wakeup.set()

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
        kwargs = (
            {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": offset}
            if offset
            else {"ShardIteratorType": "TRIM_HORIZON"}
        )
        return self.client.get_shard_iterator(StreamName=self.stream, ShardId=shard.id, **kwargs)["ShardIterator"]

    def _ready(self, shard: _Shard) -> bool:
        """A child shard waits until its parent is read to the end (order per key)."""
        parent = self.shards.get(shard.parent) if shard.parent else None
        return not shard.closed and (parent is None or parent.closed) and time.monotonic() >= shard.retry_at

    def poll_once(self) -> list[BatchOutcome]:
        """One round over the shards: fetch what is there, process batches that are due."""
        return self._round()[0]

    def _round(self) -> tuple[list[BatchOutcome], bool]:
        """One round; also says whether any shard returned records."""
        read = False
        fetched = []
        for shard in list(self.shards.values()):
            if not self._ready(shard):
                continue
            response = self._read(shard)
            if response is None:
                continue
            shard.iterator = response.get("NextShardIterator")
            shard.ended = shard.iterator is None
            if response["Records"]:
                read = True
                shard.pending += [lambda_record(r, shard.id, self.stream_arn, self.region) for r in response["Records"]]
                sizes = [events_body_size(r["Data"]) for r in response["Records"]]
                shard.sizes += sizes
                shard.pending_bytes += sum(sizes)
            fetched.append(shard)
        window_over = time.monotonic() >= self._window_closes()
        due = [
            shard
            for shard in fetched
            if shard.pending and (window_over or shard.ended or len(shard.pending) >= self.max_batch_records)
        ]
        if window_over and due:
            self._last_cut = time.monotonic()
            self._cut_had_events = any(shard.pending_bytes for shard in due)
            if self._cut_had_events:
                self._last_data_cut = self._last_cut
        outcomes = self._process_all(due)
        for shard in fetched:
            if shard.ended and not shard.pending and not shard.failures:
                shard.closed = True  # read to its end (split or merged away)
                self._shards_changed = True
        if self._shards_changed:
            try:
                self._refresh_shards()
                self._shards_changed = False
            except (ClientError, BotoCoreError) as error:  # the next round tries again
                log.warning("listing the shards of %s failed: %s", self.stream, error)
        return outcomes, read

    def _read(self, shard: _Shard) -> dict | None:
        """One GetRecords on `shard`, or None when the stream refused it (retried later)."""
        try:
            if shard.iterator is None:
                shard.iterator = self._iterator(shard)
            response = self.client.get_records(ShardIterator=shard.iterator, Limit=10_000)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "ExpiredIteratorException":
                # Read again after the last processed record; what was fetched since comes again.
                log.info("iterator of %s expired; reading again after offset %s", shard.id, self.offsets.get(shard.id))
                shard.iterator, shard.pending, shard.pending_bytes, shard.sizes = None, [], 0, []
                return None
            self._read_failed(shard, f"{code}: {error}")
            return None
        except BotoCoreError as error:  # connection refused, timeouts, ...
            self._read_failed(shard, f"{type(error).__name__}: {error}")
            return None
        shard.read_failures = 0
        return response

    def _read_failed(self, shard: _Shard, reason: str) -> None:
        shard.read_failures += 1
        self.read_retries += 1
        delay = self._delay(shard.read_failures)
        shard.retry_at = time.monotonic() + delay
        log.warning("reading %s failed (%s); retrying in %.1f s", shard.id, reason, delay)

    def _delay(self, failures: int) -> float:
        return self._backoff.delay(failures)

    def _process_all(self, due: list[_Shard]) -> list[BatchOutcome]:
        """Process the shards' batches, each shard in its own thread when there are several."""
        outcomes: list[list[BatchOutcome]] = [[] for _ in due]
        errors: list[BaseException] = []

        def process(index: int) -> None:
            try:
                outcomes[index] = self._process(due[index])
            except BaseException as error:  # re-raised in the polling thread
                errors.append(error)

        workers = [
            threading.Thread(target=process, args=(i,), name=f"processor-{shard.id}", daemon=True)
            for i, shard in enumerate(due)
            if i > 0
        ]
        for worker in workers:
            worker.start()
        if due:
            process(0)
        for worker in workers:
            worker.join()
        if errors:
            raise errors[0]
        return [outcome for shard_outcomes in outcomes for outcome in shard_outcomes]

    def _batches(self, shard: _Shard) -> list[list[dict]]:
        """`shard.pending` cut, in order, into batches of at most `max_batch_bytes` of events
        (a record larger than that is a batch of its own): what a batch holds in memory, once
        decoded, follows this bound rather than how far behind the shard is."""
        batches: list[list[dict]] = [[]]
        held = 0
        for record, size in zip(shard.pending, shard.sizes or [0] * len(shard.pending)):
            if batches[-1] and held + size > self.max_batch_bytes:
                batches.append([])
                held = 0
            batches[-1].append(record)
            held += size
        return batches

    def _process(self, shard: _Shard) -> list[BatchOutcome]:
        outcomes = []
        try:
            for records in self._batches(shard):
                outcome = self.processor.process({"Records": records})
                outcomes.append(outcome)
                if outcome.failed_from is not None:
                    self._failed(shard, outcome)
                    break
                self.offsets.set(shard.id, records[-1]["kinesis"]["sequenceNumber"])
                with self._lock:
                    self.batches += 1
                    self.events += outcome.events
                shard.failures = 0
        finally:
            shard.pending, shard.pending_bytes, shard.sizes = [], 0, []
        return outcomes

    def _failed(self, shard: _Shard, outcome: BatchOutcome) -> None:
        """Read again from the last good offset after a pause, like Lambda's retries."""
        shard.failures += 1
        with self._lock:
            self.batch_retries += 1
        delay = self._delay(shard.failures)
        shard.retry_at = time.monotonic() + delay
        shard.iterator = None
        log.warning(
            "batch of %s failed (%s); retry %d in %.1f s", shard.id, outcome.retry_reason, shard.failures, delay
        )

    def _window_closes(self) -> float:
        """When the next cut is due (monotonic clock), for what the shards hold (see the class):
        `batch_window` after the last cut; while they hold events but less than
        `min_batch_bytes`, not before `quiet_window` after the last cut that held events;
        markers alone right after events are not held (the watermark), but an idle stream's
        markers (heartbeats) are gathered for `quiet_window`."""
        gathered = sum(shard.pending_bytes for shard in self.shards.values())
        due = self._last_cut + self.batch_window
        if gathered == 0:
            return due if self._cut_had_events else max(due, self._last_cut + self.quiet_window)
        if gathered >= self.min_batch_bytes:
            return due
        return max(due, self._last_data_cut + self.quiet_window)

    def _sleep(self) -> float:
        """How long to wait before the next round: at most until pending batches are due."""
        if any(shard.pending for shard in self.shards.values()):
            return max(0.0, min(self.idle_sleep, self._window_closes() - time.monotonic()))
        return self.idle_sleep

    def run(self, stop: threading.Event) -> None:
        merges = None
        if getattr(self.processor, "paces_merges", False):  # merges beside the batches, never in their way
            merges = threading.Thread(target=self._merge_states, args=(stop,), name="state merges", daemon=True)
            merges.start()
        try:
            while not stop.is_set():
                _, read = self._round()
                if merges is None:
                    self.processor.merge_due_states()  # between rounds: no shard is being written
                if not read:
                    self._wakeup.wait(self._sleep())
                    self._wakeup.clear()
            # Flush what was gathered: it is in order and complete as far as it goes.
            self._process_all([shard for shard in self.shards.values() if shard.pending])
        finally:
            if merges is not None:
                merges.join()
        self.processor.merge_due_states(everything=True)

    def _merge_states(self, stop: threading.Event) -> None:
        """The paced state merges (`lake.merge_schedule`), in their own thread: first those a
        killed writer left behind, then whatever is due, until the poller stops."""
        try:
            self.processor.find_unmerged(list(self.shards))
        except BaseException as error:  # noqa: BLE001 - the next batch of each shard merges what it finds
            if not is_failure(error):
                raise
            log.exception("looking for state tables behind their change logs failed")
        while not stop.wait(0.0 if self.processor.merge_due_states() else MERGE_LOOK_SECONDS):
            pass
