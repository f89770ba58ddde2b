"""The reader's Kinesis sink: change events in, ordered, acknowledged Kinesis records out.

Why one file (~480 lines): buffering, the one call in flight and the settling of its answer
are one state machine over the shards' queues; routing (`change_events.kinesis`), record
packing (`cdc_reader.records`), each shard's queue and what a call may carry of it
(`cdc_reader.shard_queues`) and acknowledgements (`cdc_reader.acks`) live on their own.

Each shard's events are packed, in order, into as few records as fit uncompressed, and every
record is put with `ExplicitHashKey` = the first hash key of its shard, so it lands on that
shard whatever its partition key.

Ordering under failure. A call carries at most one record per shard, and a shard's next record
is sent only once Kinesis acknowledged its previous one (`cdc_reader.shard_queues` says why).
Throttled or failed entries stay at the head of their shard's queue and are retried after an
exponential backoff with full jitter (per shard, so a hot shard does not slow the others; which
codes are retried and how long each waits are `change_events.errors`' classifier and
`PUT_RECORDS_BACKOFF`). Whole-call errors are first retried by botocore (the client built by
`change_events.kinesis.kinesis_client` uses its `standard` retry mode), then by the same loop.
A record is acknowledged only when Kinesis returned a sequence number for it; nothing is ever
dropped. Whole-call errors that may have reached Kinesis (timeouts) can duplicate a record;
delivery is at-least-once and every consumer is idempotent on the event id `(lsn, seq)`.

Watermarks. `publish_watermark(W)` queues a marker record into every open shard behind every
event added so far (so behind every event with lsn <= W): a shard's records go out in order,
so on each shard the marker comes after all of them.

The class is not thread-safe: `add`, `end_transaction` and `poll` seal batches into records
when a shard's batch is full, the buffer is full, the oldest buffered event has waited
`linger_seconds`, or the caller says it is idle while nothing is in flight. Sealed records go
out one PutRecords call at a time on a worker thread, so the caller keeps decoding while
Kinesis answers; every answer is settled on the caller's thread, and the caller waits only
when `max_buffer_bytes` of records are sealed but not yet acknowledged. An idle caller should
call `poll()` now and then, and `flush()` (which waits for every acknowledgement) before it
stops. Resharding is noticed when Kinesis reports a record on another shard than the one it
was aimed at (or every `shard_refresh_seconds` at a watermark); the shard map is then re-read
between flushes. Across a reshard one key's events can sit on a parent and a child shard;
consumers restore per-row order by `(lsn, seq)` anyway (DESIGN.md guarantee 3).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from botocore.exceptions import BotoCoreError, ClientError

from cdc_reader.acks import AckTracker
from cdc_reader.shard_queues import QueuedRecord, ShardQueue, heads_for_call
from cdc_reader.records import (
    DEFAULT_MAX_RECORD_BYTES,
    FRAME_OVERHEAD,
    SCHEMA_ROOM,
    body_limit,
    estimate_size,
    too_large,
)
from change_events import Watermark, encode_events, encode_watermark, format_lsn
from change_events.codec import events_record
from change_events.errors import PUT_RECORDS_BACKOFF, Kind, TotesError, is_retryable, is_throttling
from change_events.metrics import Counters
from change_events.kinesis import MAX_CALL_BYTES, MAX_CALL_RECORDS, MAX_RECORD_BYTES, Shard, ShardMap
from change_events.wire import Change, EncodedChange

log = logging.getLogger(__name__)

# A record's partition key is its shard id (20 characters); this much of a record is kept for it.
_PARTITION_KEY_ROOM = 64
# An estimated character can take up to 4 bytes in a record (UTF-8); events that could exceed
# a record that way are encoded alone when added, to refuse them early.
_WORST_BYTES_PER_CHAR = 4


class PublishError(TotesError, RuntimeError):
    """Kinesis refused the records for a reason retrying cannot fix, or accepted nothing for too
    long. Nothing was dropped: the unsent records stay queued, and `flush()` tries again."""

    kind = Kind.DESTINATION


@dataclass
class PublisherMetrics(Counters):
    """Counters since the publisher was created; records and bytes count acknowledged ones."""

    events: int = 0
    """events acknowledged by Kinesis"""
    records: int = 0
    """event records acknowledged"""
    watermark_records: int = 0
    """watermark marker records acknowledged (one per open shard and watermark)"""
    bytes: int = 0
    """data bytes acknowledged (event and watermark records)"""
    calls: int = 0
    """PutRecords calls made"""
    failed_calls: int = 0
    """PutRecords calls that failed as a whole (after botocore's own retries)"""
    retries: int = 0
    """records sent again after a failed entry or call"""
    throttles: int = 0
    """entries or calls refused by throttling"""

    @property
    def events_per_record(self) -> float:
        return self.events / self.records if self.records else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**super().as_dict(), "events_per_record": self.events_per_record}


# -- the publisher ---------------------------------------------------------------------------


class Publisher:
    """Puts change events and watermark markers on one Kinesis stream (see the module doc).

    `client` is a boto3 Kinesis client (see `change_events.kinesis.kinesis_client`) or
    anything with the same `list_shards` and `put_records`.
    """

    def __init__(
        self,
        client,
        stream_name: str,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        linger_seconds: float = 0.25,
        max_buffer_bytes: int = 16 * 1024 * 1024,
        max_buffer_events: int = 20_000,
        max_call_bytes: int = MAX_CALL_BYTES,
        max_call_records: int = MAX_CALL_RECORDS,
        backoff_base_seconds: float = PUT_RECORDS_BACKOFF.base,
        backoff_max_seconds: float = PUT_RECORDS_BACKOFF.cap,
        max_stall_seconds: float = 300.0,
        shard_refresh_seconds: float = 60.0,
        start_lsn: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 4 * _PARTITION_KEY_ROOM <= max_record_bytes <= MAX_RECORD_BYTES:
            raise ValueError(f"max_record_bytes must be in [{4 * _PARTITION_KEY_ROOM}, {MAX_RECORD_BYTES}]")
        if not 0 < max_call_records <= MAX_CALL_RECORDS or not 0 < max_call_bytes <= MAX_CALL_BYTES:
            raise ValueError("a PutRecords call holds at most 500 records and 5 MiB")
        if max_call_bytes < max_record_bytes:
            raise ValueError("max_call_bytes must hold at least one record of max_record_bytes")
        self.client = client
        self.stream_name = stream_name
        self.max_record_bytes = max_record_bytes
        self._record_fill = body_limit(max_record_bytes - _PARTITION_KEY_ROOM) - SCHEMA_ROOM
        # The largest data blob of a record: its partition key counts towards the limit too.
        self._max_data = max_record_bytes - _PARTITION_KEY_ROOM
        self.linger_seconds = linger_seconds
        self.max_buffer_bytes = max_buffer_bytes
        # Python objects take several times their estimated size: an event count bounds
        # memory whatever the linger and the number of shards.
        self.max_buffer_events = max_buffer_events
        self.max_call_bytes = max_call_bytes
        self.max_call_records = max_call_records
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._backoff = replace(PUT_RECORDS_BACKOFF, base=backoff_base_seconds, cap=backoff_max_seconds)
        self.max_stall_seconds = max_stall_seconds
        self.shard_refresh_seconds = shard_refresh_seconds
        self.metrics = PublisherMetrics()
        self._clock = clock
        self._sleep = sleep
        self._tracker = AckTracker(start_lsn)
        self._adding_lsn: int | None = None
        self._adding = 0
        """events added at `_adding_lsn` that the tracker has not been told about yet"""
        self._queues: dict[str, ShardQueue] = {}
        self._buffered_bytes = 0
        self._buffered_events = 0
        self._oldest_buffered: float | None = None
        self._rotation = 0
        self._map_stale = False
        self._sealed_bytes = 0
        """data bytes of records sealed but not yet acknowledged"""
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: tuple[list[QueuedRecord], Future] | None = None
        self._last_progress = clock()
        self._refresh_shards()

    # -- public API ----------------------------------------------------------------------
    @property
    def acknowledged_lsn(self) -> int:
        """Highest commit LSN whose transaction, and every one before it, Kinesis acknowledged."""
        return self._tracker.acknowledged_lsn

    @property
    def shards(self) -> tuple[Shard, ...]:
        return self._map.shards

    @property
    def buffered_events(self) -> int:
        """Events added but not yet acknowledged."""
        self._count_added()
        return self._tracker.outstanding

    @property
    def busy(self) -> bool:
        """Whether anything waits for a `poll()`: events buffered, records sealed or a call in
        flight. When not, the caller need not poll until it adds something (the reader sleeps)."""
        return (
            self._oldest_buffered is not None
            or self._adding > 0
            or self._sealed_bytes > 0
            or self._in_flight is not None
        )

    def add(self, event: Change) -> None:
        """Buffer one event; may send (and block) when a batch is due."""
        if type(event) is EncodedChange:
            size = len(event.frame) + FRAME_OVERHEAD
            doubtful = size + 1024 >= self._max_data
        else:
            size = estimate_size(event)
            doubtful = _WORST_BYTES_PER_CHAR * size + 1024 >= self._max_data
        if doubtful:
            encoded = len(encode_events([event]))
            if encoded > self._max_data:
                raise too_large(event, encoded, self._max_data)
        lsn = event.lsn
        if lsn != self._adding_lsn:
            self._count_added()
            self._tracker.check_add(lsn)
            self._adding_lsn = lsn
        self._adding += 1
        # ShardMap.route, inlined: this runs for every event.
        queue = self._route_queues[bisect_right(self._route_starts, event.route_hash << 96) - 1]
        queue.pending.append(event)
        queue.sizes.append(size)
        queue.pending_bytes += size
        self._buffered_bytes += size
        self._buffered_events += 1
        if self._oldest_buffered is None:
            self._oldest_buffered = self._clock()
        if (
            queue.pending_bytes >= self._record_fill
            or self._buffered_bytes >= self.max_buffer_bytes
            or self._buffered_events >= self.max_buffer_events
            # the clock is read every 64 events: poll() looks at it too
            or (not self._buffered_events & 63 and self._clock() - self._oldest_buffered >= self.linger_seconds)
        ):
            self._seal()
            self._send(until_empty=False)

    def end_transaction(self, commit_lsn: int) -> None:
        """Every event with lsn <= `commit_lsn` has been added (a transaction, or a heartbeat)."""
        self._count_added()
        self._tracker.ended(commit_lsn)
        self.poll()

    def poll(self, idle: bool = False) -> None:
        """Seal what has lingered long enough; settle an answered call and start the next.

        `idle` says no more events are coming right now. Then waiting out the linger would
        only add latency, so what is buffered goes at once, but only while nothing else is
        on its way to Kinesis (as Nagle's algorithm does for small packets): otherwise the
        events gather until the call in flight is answered, so records stay large under load."""
        if self._oldest_buffered is not None and (
            (idle and self._in_flight is None and not self._sealed_bytes)
            or self._clock() - self._oldest_buffered >= self.linger_seconds
        ):
            self._seal()
        if self._in_flight is not None or self._sealed_bytes:
            self._send(until_empty=False)

    def flush(self) -> int:
        """Send everything buffered and wait until Kinesis acknowledged all of it; return
        `acknowledged_lsn`. Raises PublishError (nothing dropped) when Kinesis will not take it."""
        self._seal()
        self._send(until_empty=True)
        if self._map_stale:
            self._refresh_shards()
        return self.acknowledged_lsn

    def close(self) -> None:
        """Stop the sending thread (after the call in flight, if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def publish_watermark(self, lsn: int | None = None) -> int:
        """Queue a Watermark(lsn) marker into every open shard behind every event buffered so
        far (so behind every event with lsn <= W); return its lsn. Like events, markers are
        acknowledged later: `flush()` waits for them.

        `lsn` defaults to the last `end_transaction` and may not exceed it (a marker promises
        that every event up to it was put before it)."""
        lsn = self._tracker.last_ended if lsn is None else lsn
        if lsn > self._tracker.last_ended:
            raise ValueError(
                f"watermark {format_lsn(lsn)} is beyond the last ended transaction "
                f"{format_lsn(self._tracker.last_ended)}"
            )
        if self._map_stale or self._clock() - self._map_read_at >= self.shard_refresh_seconds:
            self.flush()  # the shard map is re-read with nothing queued
            self._refresh_shards()
        self._seal()
        data = encode_watermark(Watermark(lsn, datetime.now(timezone.utc)))
        for queue in self._queues.values():
            self._sealed_bytes += queue.add_watermark(data, lsn)
        self._send(until_empty=False)
        return lsn

    # -- internals -----------------------------------------------------------------------
    def _refresh_shards(self) -> None:
        if any(q.pending or q.ready for q in self._queues.values()):
            raise AssertionError("the shard map is re-read only when nothing is queued")
        self._map = ShardMap.from_kinesis(self.client, self.stream_name)
        self._queues = {s.shard_id: ShardQueue(s) for s in self._map.shards}
        self._route_starts = [s.starting_hash_key for s in self._map.shards]
        self._route_queues = [self._queues[s.shard_id] for s in self._map.shards]
        self._map_read_at = self._clock()
        self._map_stale = False
        log.debug("stream %s: %d open shards", self.stream_name, len(self._map.shards))

    def _count_added(self) -> None:
        """Tell the tracker about the events added at `_adding_lsn`: once per transaction (or
        per batch) rather than once per event, and always before any of them is sealed."""
        if self._adding:
            self._tracker.added(self._adding_lsn, self._adding)
            self._adding = 0

    def _seal(self) -> None:
        self._count_added()
        for queue in self._queues.values():
            if not queue.pending:
                continue
            self._sealed_bytes += queue.seal(self._max_data)
        self._buffered_bytes = 0
        self._buffered_events = 0
        self._oldest_buffered = None

    def _send(self, *, until_empty: bool) -> None:
        """Settle the call in flight when it has been answered and start the next one.

        Waits for answers (and sleeps through backoffs) only when `until_empty`, which
        returns once every sealed record was acknowledged, or while the sealed records are
        over `max_buffer_bytes`."""
        while True:
            over_budget = self._sealed_bytes >= self.max_buffer_bytes
            if self._in_flight is not None:
                batch, answer = self._in_flight
                if not (until_empty or over_budget or answer.done()):
                    return
                self._in_flight = None
                self._settle(batch, answer)
                continue
            waiting = [q for q in self._queues.values() if q.ready]
            if not waiting:
                self._last_progress = self._clock()
                return
            now = self._clock()
            batch = self._next_call(now)
            if batch:
                self.metrics.calls += 1
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kinesis-put")
                self._in_flight = (batch, self._pool.submit(self._call, batch))
            elif until_empty or over_budget:
                self._sleep(max(0.0, min(q.not_before for q in waiting) - now))
            else:
                return  # every shard is backing off: a later poll() tries again

    def _next_call(self, now: float) -> list[QueuedRecord]:
        """The head record of each shard that may send now, starting one shard further each
        call (so no shard always comes last when a call is full)."""
        queues = list(self._queues.values())
        self._rotation = (self._rotation + 1) % len(queues)
        return heads_for_call(
            queues[self._rotation :] + queues[: self._rotation],
            now,
            max_records=self.max_call_records,
            max_bytes=self.max_call_bytes,
        )

    def _call(self, batch: list[QueuedRecord]) -> dict:
        """One PutRecords call, on the sending thread. It compresses the records that are
        still bodies (zstd lets go of the GIL, so this overlaps the caller's decoding) and
        touches nothing else: the records in flight are the caller's to read only after."""
        for record in batch:
            if record.data is None:
                record.data = events_record(record.body)
                record.body = None
        return self.client.put_records(
            StreamName=self.stream_name,
            Records=[
                {"Data": r.data, "PartitionKey": r.partition_key, "ExplicitHashKey": str(r.shard.starting_hash_key)}
                for r in batch
            ],
        )

    def _settle(self, batch: list[QueuedRecord], answer: Future) -> None:
        """Acknowledge what Kinesis took, back off what it refused; raise PublishError when
        it refuses for good or has taken nothing for `max_stall_seconds`."""
        try:
            response = answer.result()
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if not is_retryable(error):
                raise PublishError(
                    f"Kinesis refused PutRecords on {self.stream_name}: {code}: "
                    f"{error.response.get('Error', {}).get('Message', '')}"
                ) from error
            self._no_progress(self._call_failed(batch, code or f"HTTP {status}", is_throttling(code)))
            return
        except BotoCoreError as error:
            if not is_retryable(error):
                raise  # not Kinesis's answer (no credentials, a bad parameter): no retry helps
            self._no_progress(self._call_failed(batch, f"{type(error).__name__}: {error}", False))
            return
        results = response.get("Records", [])
        if len(results) != len(batch):
            raise PublishError(f"PutRecords answered {len(results)} results for {len(batch)} records")
        progressed = False
        last_error = None
        for record, result in zip(batch, results):
            queue = self._queues[record.shard.shard_id]
            if result.get("SequenceNumber") and not result.get("ErrorCode"):
                queue.taken(record)  # the head: a shard has one record in flight
                self._acknowledged(record)
                if result.get("ShardId") not in (None, record.shard.shard_id):
                    self._map_stale = True  # resharded: re-read the map once the queues are empty
                progressed = True
            else:
                code = result.get("ErrorCode") or "no sequence number"
                last_error = f"{code}: {result.get('ErrorMessage', '')}"
                self.metrics.retries += 1
                if is_throttling(code):
                    self.metrics.throttles += 1
                self._back_off(queue)
        if last_error:
            log.debug(
                "PutRecords on %s: %d of %d records to retry (%s)",
                self.stream_name,
                response.get("FailedRecordCount", 0),
                len(batch),
                last_error,
            )
        if progressed:
            self._last_progress = self._clock()
        else:
            self._no_progress(last_error or "no record acknowledged")

    def _no_progress(self, error: str) -> None:
        if self._clock() - self._last_progress > self.max_stall_seconds:
            queued = sum(len(q.ready) for q in self._queues.values())
            raise PublishError(
                f"Kinesis stream {self.stream_name} accepted no record for "
                f"{self.max_stall_seconds:g} s (last error: {error}); {queued} records stay queued"
            )

    def _call_failed(self, batch: list[QueuedRecord], reason: str, throttled: bool) -> str:
        self.metrics.failed_calls += 1
        self.metrics.retries += len(batch)
        if throttled:
            self.metrics.throttles += 1
        log.warning("PutRecords on %s failed (%s); retrying %d records", self.stream_name, reason, len(batch))
        for record in batch:
            self._back_off(self._queues[record.shard.shard_id])
        return reason

    def _back_off(self, queue: ShardQueue) -> None:
        queue.back_off(self._clock(), self._backoff)

    def _acknowledged(self, record: QueuedRecord) -> None:
        self.metrics.bytes += len(record.data)
        self._sealed_bytes -= record.weight
        if record.watermark is not None:
            self.metrics.watermark_records += 1
            return
        self.metrics.records += 1
        self.metrics.events += record.events
        self._tracker.acked(record.lsn_counts)
