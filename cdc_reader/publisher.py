"""The reader's Kinesis sink: change events in, ordered, acknowledged Kinesis records out.

Why one file (~770 lines): routing, record packing, in-order retries and acknowledgements
are one ordered pipeline per shard; the Kinesis client setup moves to one adapter with the
planned reshaping of cdc_reader.

Routing. An event's partition key is its table plus its primary-key values
(`public.sales_order/42`; a table's keyless events, e.g. truncates, use the table name). Its
CRC-32, placed in the top bits of the 128-bit hash-key space, is mapped to the open shard
whose hash-key range holds it, so one row's events always go to one shard. Each shard's
events are packed, in order, into as few records as fit uncompressed (so a record is known
to fit before it is compressed, on the sending thread), and every record is put with
`ExplicitHashKey` = the first hash key of its shard, so it lands on that shard whatever its
partition key.

Ordering under failure. Kinesis does not order the records of one PutRecords call, and a
partially failed call that is retried naively puts a shard's later records before its earlier
ones. So a call carries at most one record per shard, and a shard's next record is sent only
once Kinesis acknowledged its previous one. Throttled or failed entries stay at the head of
their shard's queue and are retried after an exponential backoff with full jitter (per shard,
so a hot shard does not slow the others). Whole-call errors are first retried by botocore (the
client built by `kinesis_client` uses its `standard` retry mode), then by the same loop.
A record is acknowledged only when Kinesis returned a sequence number for it; nothing is ever
dropped. Whole-call errors that may have reached Kinesis (timeouts) can duplicate a record;
delivery is at-least-once and every consumer is idempotent on the event id `(lsn, seq)`.

Watermarks. `publish_watermark(W)` queues a marker record into every open shard behind every
event added so far (so behind every event with lsn <= W): a shard's records go out in order,
so on each shard the marker comes after all of them.

Acknowledgement. `acknowledged_lsn` is the highest commit LSN such that every event with an
lsn up to it was added, its transaction ended (`end_transaction`), and Kinesis acknowledged
it: the reader may checkpoint there until the lake watermark exists.

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
import os
import random
import time
import zlib
from bisect import bisect_right
from itertools import accumulate
from operator import attrgetter
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

from change_events import ChangeEvent, Watermark, encode_events, encode_watermark, format_lsn
from change_events.codec import events_body, events_record, record_size_bound
from change_events.wire import EncodedChange

log = logging.getLogger(__name__)

# Kinesis limits (PutRecords): a record's data plus partition key, and a whole call.
MAX_RECORD_BYTES = 1024 * 1024
MAX_CALL_BYTES = 5 * 1024 * 1024
MAX_CALL_RECORDS = 500
HASH_KEY_SPACE = 1 << 128

DEFAULT_MAX_RECORD_BYTES = 1_000_000
# Room kept in a record for its list of table schemas (a few hundred bytes per table).
_SCHEMA_ROOM = 16 * 1024
# What a record adds to an event's frame: its schema index and length.
_FRAME_OVERHEAD = 6
# A record's partition key is its shard id (20 characters); this much of a record is kept for it.
_PARTITION_KEY_ROOM = 64
# An estimated character can take up to 4 bytes in a record (UTF-8); events that could exceed
# a record that way are encoded alone when added, to refuse them early.
_WORST_BYTES_PER_CHAR = 4

THROTTLING_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "KMSThrottlingException",
    "LimitExceededException", "RequestLimitExceeded", "TooManyRequestsException",
})
RETRYABLE_CALL_CODES = THROTTLING_CODES | {
    "InternalFailure", "InternalFailureException", "InternalServerError", "ServiceUnavailable",
    "ServiceUnavailableException", "RequestTimeout", "RequestTimeoutException",
}


class PublishError(RuntimeError):
    """Kinesis refused the records for a reason retrying cannot fix, or accepted nothing for too
    long. Nothing was dropped: the unsent records stay queued, and `flush()` tries again."""


class EventTooLargeError(ValueError):
    """An event that does not fit in one Kinesis record even alone and compressed."""


# -- routing ---------------------------------------------------------------------------------

def hash_key(partition_key: str) -> int:
    """Where a partition key falls in the 128-bit hash-key space: its CRC-32 in the top bits.

    Records are put with an ExplicitHashKey, so the hash need not be Kinesis's own MD5; it
    must only be stable and spread keys evenly, and CRC-32 does both for a fifth of the cost
    of MD5 on the reader's hottest path."""
    return zlib.crc32(partition_key.encode("utf-8")) << 96


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
                raise ValueError(f"open shards do not tile the hash-key space at {shard.shard_id} "
                                 f"(expected a range starting at {expected})")
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
                shards.append(Shard(shard["ShardId"], int(shard["HashKeyRange"]["StartingHashKey"]),
                                    int(shard["HashKeyRange"]["EndingHashKey"])))
            token = response.get("NextToken")
            if not token:
                return cls(shards)
            kwargs = {"NextToken": token}


# -- acknowledgement -------------------------------------------------------------------------

class AckTracker:
    """Which commit LSN every event up to is acknowledged.

    Events are added in non-decreasing lsn order; `ended(L)` says every event with lsn <= L
    has been added. `acknowledged_lsn` is the highest ended L with no unacknowledged event
    at or below it.
    """

    def __init__(self, start_lsn: int = 0) -> None:
        self._acknowledged = start_lsn
        self._last_ended = start_lsn
        self._last_added = start_lsn
        self._outstanding: OrderedDict[int, int] = OrderedDict()  # lsn -> unacked events, lsn order
        self._ended: deque[int] = deque()

    @property
    def acknowledged_lsn(self) -> int:
        return self._acknowledged

    @property
    def last_ended(self) -> int:
        return self._last_ended

    @property
    def outstanding(self) -> int:
        return sum(self._outstanding.values())

    def check_add(self, lsn: int) -> None:
        if lsn <= self._last_ended:
            raise ValueError(f"event at lsn {format_lsn(lsn)} comes after end_transaction"
                             f"({format_lsn(self._last_ended)}): events must be added in commit order")
        if lsn < self._last_added:
            raise ValueError(f"event at lsn {format_lsn(lsn)} added after one at "
                             f"{format_lsn(self._last_added)}: events must be added in commit order")

    def added(self, lsn: int, count: int = 1) -> None:
        if lsn == self._last_added and lsn > self._last_ended:  # the usual case: same transaction
            self._outstanding[lsn] = self._outstanding.get(lsn, 0) + count
            return
        self.check_add(lsn)
        self._last_added = lsn
        self._outstanding[lsn] = self._outstanding.get(lsn, 0) + count  # the largest lsn: order kept

    def ended(self, commit_lsn: int) -> None:
        if commit_lsn < self._last_ended or commit_lsn < self._last_added:
            raise ValueError(f"end_transaction({format_lsn(commit_lsn)}) is below an lsn already "
                             f"added or ended ({format_lsn(max(self._last_ended, self._last_added))})")
        self._last_ended = commit_lsn
        self._ended.append(commit_lsn)
        self._advance()

    def acked(self, lsn_counts: Iterable[tuple[int, int]]) -> None:
        for lsn, count in lsn_counts:
            left = self._outstanding[lsn] - count
            if left < 0:
                raise AssertionError(f"more events acknowledged at {format_lsn(lsn)} than added")
            if left:
                self._outstanding[lsn] = left
            else:
                del self._outstanding[lsn]
        self._advance()

    def _advance(self) -> None:
        lowest = next(iter(self._outstanding), None)
        while self._ended and (lowest is None or self._ended[0] < lowest):
            self._acknowledged = max(self._acknowledged, self._ended.popleft())


# -- records ---------------------------------------------------------------------------------

_lsn_of = attrgetter("lsn")

def estimate_size(event: ChangeEvent | EncodedChange) -> int:
    """Uncompressed size of an event in a record: exact for an EncodedChange, from the
    values' lengths in characters for a ChangeEvent (names are once per record)."""
    if type(event) is EncodedChange:
        return len(event.frame) + _FRAME_OVERHEAD
    size = 48
    for row in (event.key, event.after, event.before):
        if row:
            for value in row.values():
                size += 4 + (4 if value is None else len(value))
    return size


@dataclass(frozen=True, slots=True)
class Packed:
    """Events of one record: as a `body` whose record is known to fit (to be compressed
    later, off the caller's thread), or as the `data` of a record compressed right away
    because only compression makes it fit."""

    events: Sequence[ChangeEvent]
    body: bytes | None = None
    data: bytes | None = None

    def record(self) -> bytes:
        return self.data if self.data is not None else events_record(self.body)


def body_limit(max_bytes: int) -> int:
    """The largest events body whose record fits in `max_bytes` whatever it compresses to."""
    limit = max_bytes - 1024
    while record_size_bound(limit) > max_bytes:
        limit -= record_size_bound(limit) - max_bytes
    return limit


def pack(events: Sequence[ChangeEvent], max_bytes: int, chunk_bytes: int | None = None,
         sizes: Sequence[int] | None = None) -> list[Packed]:
    """Group `events` (one shard's, in order) into records of at most `max_bytes` each, in order.

    Events are grouped by size (`chunk_bytes`, default what fits uncompressed); a group whose
    body could still make too large a record is split in halves, and a single event is
    compressed to see whether it fits.
    """
    limit = body_limit(max_bytes)
    chunk_bytes = chunk_bytes or limit - _SCHEMA_ROOM
    packed: list[Packed] = []

    def emit(group: Sequence[ChangeEvent]) -> None:
        body = events_body(group)
        if len(body) <= limit:
            packed.append(Packed(group, body=body))
        elif len(group) > 1:
            middle = len(group) // 2
            emit(group[:middle])
            emit(group[middle:])
        else:
            data = events_record(body)
            if len(data) > max_bytes:
                raise _too_large(group[0], len(data), max_bytes)
            packed.append(Packed(group, data=data))

    # Cut where the running total of sizes passes each multiple of chunk_bytes (at least one
    # event per group); accumulate and bisect do the per-event work in C.
    totals = list(accumulate(map(estimate_size, events) if sizes is None else sizes))
    start, base = 0, 0
    while start < len(events):
        end = max(start + 1, bisect_right(totals, base + chunk_bytes, lo=start))
        emit(events[start:end])
        base = totals[end - 1]
        start = end
    return packed


def _too_large(event: ChangeEvent, size: int, max_bytes: int) -> EventTooLargeError:
    return EventTooLargeError(
        f"event ({event.lsn}, {event.seq}) of {event.partition_key} is {size} bytes compressed, "
        f"more than the {max_bytes} bytes a Kinesis record can carry"
    )


@dataclass(slots=True, eq=False)
class _Record:
    shard: Shard
    data: bytes | None
    """the record; None until the sending thread compresses `body` into it"""
    body: bytes | None
    partition_key: str
    events: int
    lsn_counts: tuple[tuple[int, int], ...]
    watermark: int | None = None
    weight: int = 0
    """bytes it holds until acknowledged (its body, or its data)"""

    @property
    def size(self) -> int:
        data = len(self.data) if self.data is not None else record_size_bound(len(self.body))
        return data + len(self.partition_key.encode("utf-8"))


@dataclass(slots=True)
class _ShardQueue:
    shard: Shard
    pending: list[ChangeEvent] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    """estimate_size() of each pending event, worked out once when it was added"""
    pending_bytes: int = 0
    ready: deque[_Record] = field(default_factory=deque)
    failures: int = 0
    not_before: float = 0.0


@dataclass
class PublisherMetrics:
    """Counters since the publisher was created; records and bytes count acknowledged ones."""

    events: int = 0
    """events acknowledged by Kinesis"""
    records: int = 0
    """event records acknowledged"""
    watermark_records: int = 0
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

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "events_per_record": self.events_per_record}


# -- the publisher ---------------------------------------------------------------------------

class Publisher:
    """Puts change events and watermark markers on one Kinesis stream (see the module doc).

    `client` is a boto3 Kinesis client (see `kinesis_client`) or anything with the same
    `list_shards` and `put_records`.
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
        backoff_base_seconds: float = 0.05,
        backoff_max_seconds: float = 5.0,
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
        self._record_fill = body_limit(max_record_bytes - _PARTITION_KEY_ROOM) - _SCHEMA_ROOM
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
        self.max_stall_seconds = max_stall_seconds
        self.shard_refresh_seconds = shard_refresh_seconds
        self.metrics = PublisherMetrics()
        self._clock = clock
        self._sleep = sleep
        self._tracker = AckTracker(start_lsn)
        self._adding_lsn: int | None = None
        self._adding = 0
        """events added at `_adding_lsn` that the tracker has not been told about yet"""
        self._queues: dict[str, _ShardQueue] = {}
        self._buffered_bytes = 0
        self._buffered_events = 0
        self._oldest_buffered: float | None = None
        self._rotation = 0
        self._map_stale = False
        self._sealed_bytes = 0
        """data bytes of records sealed but not yet acknowledged"""
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: tuple[list[_Record], Future] | None = None
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

    def add(self, event: ChangeEvent | EncodedChange) -> None:
        """Buffer one event; may send (and block) when a batch is due."""
        if type(event) is EncodedChange:
            size = len(event.frame) + _FRAME_OVERHEAD
            doubtful = size + 1024 >= self._max_data
        else:
            size = estimate_size(event)
            doubtful = _WORST_BYTES_PER_CHAR * size + 1024 >= self._max_data
        if doubtful:
            encoded = len(encode_events([event]))
            if encoded > self._max_data:
                raise _too_large(event, encoded, self._max_data)
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
        if (queue.pending_bytes >= self._record_fill
                or self._buffered_bytes >= self.max_buffer_bytes
                or self._buffered_events >= self.max_buffer_events
                # the clock is read every 64 events: poll() looks at it too
                or (not self._buffered_events & 63
                    and self._clock() - self._oldest_buffered >= self.linger_seconds)):
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
                or self._clock() - self._oldest_buffered >= self.linger_seconds):
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
            raise ValueError(f"watermark {format_lsn(lsn)} is beyond the last ended transaction "
                             f"{format_lsn(self._tracker.last_ended)}")
        if self._map_stale or self._clock() - self._map_read_at >= self.shard_refresh_seconds:
            self.flush()  # the shard map is re-read with nothing queued
            self._refresh_shards()
        self._seal()
        data = encode_watermark(Watermark(lsn, datetime.now(timezone.utc)))
        for queue in self._queues.values():
            queue.ready.append(_Record(queue.shard, data, None, queue.shard.shard_id, 0, (), watermark=lsn,
                                       weight=len(data)))
            self._sealed_bytes += len(data)
        self._send(until_empty=False)
        return lsn

    # -- internals -----------------------------------------------------------------------
    def _refresh_shards(self) -> None:
        if any(q.pending or q.ready for q in self._queues.values()):
            raise AssertionError("the shard map is re-read only when nothing is queued")
        self._map = ShardMap.from_kinesis(self.client, self.stream_name)
        self._queues = {s.shard_id: _ShardQueue(s) for s in self._map.shards}
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
            for packed in pack(queue.pending, self._max_data, sizes=queue.sizes):
                counts = Counter(map(_lsn_of, packed.events))  # in lsn order, as events are
                weight = len(packed.body if packed.data is None else packed.data)
                queue.ready.append(_Record(queue.shard, packed.data, packed.body, queue.shard.shard_id,
                                           len(packed.events), tuple(counts.items()), weight=weight))
                self._sealed_bytes += weight
            queue.pending = []
            queue.sizes = []
            queue.pending_bytes = 0
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

    def _next_call(self, now: float) -> list[_Record]:
        """The head record of each shard that may send now: never two of one shard."""
        queues = list(self._queues.values())
        self._rotation = (self._rotation + 1) % len(queues)
        batch: list[_Record] = []
        size = 0
        for queue in queues[self._rotation:] + queues[:self._rotation]:
            if not queue.ready or queue.not_before > now:
                continue
            record = queue.ready[0]
            if len(batch) >= self.max_call_records or size + record.size > self.max_call_bytes:
                continue
            batch.append(record)
            size += record.size
        return batch

    def _call(self, batch: list[_Record]) -> dict:
        """One PutRecords call, on the sending thread. It compresses the records that are
        still bodies (zstd lets go of the GIL, so this overlaps the caller's decoding) and
        touches nothing else: the records in flight are the caller's to read only after."""
        for record in batch:
            if record.data is None:
                record.data = events_record(record.body)
                record.body = None
        return self.client.put_records(StreamName=self.stream_name, Records=[
            {"Data": r.data, "PartitionKey": r.partition_key,
             "ExplicitHashKey": str(r.shard.starting_hash_key)} for r in batch
        ])

    def _settle(self, batch: list[_Record], answer: Future) -> None:
        """Acknowledge what Kinesis took, back off what it refused; raise PublishError when
        it refuses for good or has taken nothing for `max_stall_seconds`."""
        try:
            response = answer.result()
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code not in RETRYABLE_CALL_CODES and status < 500:
                raise PublishError(f"Kinesis refused PutRecords on {self.stream_name}: {code}: "
                                   f"{error.response.get('Error', {}).get('Message', '')}") from error
            self._no_progress(self._call_failed(batch, code or f"HTTP {status}", code in THROTTLING_CODES))
            return
        except (BotoConnectionError, HTTPClientError) as error:
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
                queue.ready.remove(record)  # the head: a shard has one record in flight
                queue.failures = 0
                queue.not_before = 0.0
                self._acknowledged(record)
                if result.get("ShardId") not in (None, record.shard.shard_id):
                    self._map_stale = True  # resharded: re-read the map once the queues are empty
                progressed = True
            else:
                code = result.get("ErrorCode") or "no sequence number"
                last_error = f"{code}: {result.get('ErrorMessage', '')}"
                self.metrics.retries += 1
                if code in THROTTLING_CODES:
                    self.metrics.throttles += 1
                self._back_off(queue)
        if last_error:
            log.debug("PutRecords on %s: %d of %d records to retry (%s)", self.stream_name,
                      response.get("FailedRecordCount", 0), len(batch), last_error)
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

    def _call_failed(self, batch: list[_Record], reason: str, throttled: bool) -> str:
        self.metrics.failed_calls += 1
        self.metrics.retries += len(batch)
        if throttled:
            self.metrics.throttles += 1
        log.warning("PutRecords on %s failed (%s); retrying %d records", self.stream_name, reason,
                    len(batch))
        for record in batch:
            self._back_off(self._queues[record.shard.shard_id])
        return reason

    def _back_off(self, queue: _ShardQueue) -> None:
        queue.failures += 1
        ceiling = min(self.backoff_max_seconds,
                      self.backoff_base_seconds * 2 ** min(queue.failures - 1, 30))
        queue.not_before = self._clock() + random.uniform(0, ceiling)  # nosec B311 # retry jitter, not a secret

    def _acknowledged(self, record: _Record) -> None:
        self.metrics.bytes += len(record.data)
        self._sealed_bytes -= record.weight
        if record.watermark is not None:
            self.metrics.watermark_records += 1
            return
        self.metrics.records += 1
        self.metrics.events += record.events
        self._tracker.acked(record.lsn_counts)


# -- the boto3 adapter -----------------------------------------------------------------------

def kinesis_client(*, endpoint_url: str | None = None, region: str | None = None,
                   max_attempts: int = 5, retry_mode: str = "standard",
                   session: boto3.session.Session | None = None):
    """A Kinesis client with botocore's retry config.

    The endpoint comes from `endpoint_url`, else boto3's own `AWS_ENDPOINT_URL_KINESIS` /
    `AWS_ENDPOINT_URL`; the region from `region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, else
    us-east-1. A loopback endpoint (kinesalite) takes any credentials: when none are in the
    environment, placeholder ones are used instead of searching the machine for real ones.
    """
    session = session or boto3.session.Session()
    region = (region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
              or session.region_name or "us-east-1")
    config = Config(retries={"mode": retry_mode, "total_max_attempts": max_attempts},
                    connect_timeout=10, read_timeout=60, tcp_keepalive=True)
    kwargs: dict = {"region_name": region, "config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    configured = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_KINESIS")
                  or os.environ.get("AWS_ENDPOINT_URL"))
    if (configured and _is_loopback(configured) and not os.environ.get("AWS_ACCESS_KEY_ID")
            and not os.environ.get("AWS_PROFILE")):
        kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")  # nosec B106 # placeholder keys a local endpoint needs, not a credential
    return session.client("kinesis", **kwargs)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
