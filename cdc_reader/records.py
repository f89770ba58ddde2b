"""Packing one shard's change events, in order, into Kinesis records that fit.

Events are packed into as few records as fit uncompressed, so a record is known to fit before
it is compressed (on the publisher's sending thread); only an event too large for that is
compressed right away to see whether it fits at all.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from change_events import ChangeEvent
from change_events.errors import Kind, TotesError
from change_events.codec import events_body, events_record, record_size_bound
from change_events.wire import Change, EncodedChange

DEFAULT_MAX_RECORD_BYTES = 1_000_000
# Room kept in a record for its list of table schemas (a few hundred bytes per table).
SCHEMA_ROOM = 16 * 1024
# What a record adds to an event's frame: its schema index and length.
FRAME_OVERHEAD = 6


class EventTooLargeError(TotesError, ValueError):
    """An event that does not fit in one Kinesis record even alone and compressed."""

    kind = Kind.BAD_DATA


def estimate_size(event: Change) -> int:
    """Uncompressed size of an event in a record: exact for an EncodedChange, from the
    values' lengths in characters for a ChangeEvent (names are once per record)."""
    if type(event) is EncodedChange:
        return len(event.frame) + FRAME_OVERHEAD
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


def pack(
    events: Sequence[ChangeEvent], max_bytes: int, chunk_bytes: int | None = None, sizes: Sequence[int] | None = None
) -> list[Packed]:
    """Group `events` (one shard's, in order) into records of at most `max_bytes` each, in order.

    Events are grouped by size (`chunk_bytes`, default what fits uncompressed); a group whose
    body could still make too large a record is split in halves, and a single event is
    compressed to see whether it fits.
    """
    limit = body_limit(max_bytes)
    chunk_bytes = chunk_bytes or limit - SCHEMA_ROOM
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
                raise too_large(group[0], len(data), max_bytes)
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


def too_large(event: ChangeEvent, size: int, max_bytes: int) -> EventTooLargeError:
    return EventTooLargeError(
        f"event ({event.lsn}, {event.seq}) of {event.partition_key} is {size} bytes compressed, "
        f"more than the {max_bytes} bytes a Kinesis record can carry"
    )
