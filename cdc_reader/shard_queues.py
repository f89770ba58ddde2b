"""Each shard's queue of the publisher: its pending events, its sealed records, and which of
them one PutRecords call may carry.

Kinesis does not order the records of one PutRecords call, and a partially failed call that is
retried naively puts a shard's later records before its earlier ones. So a call carries at most
one record per shard, the head of its queue, and a shard's next record goes only once Kinesis
acknowledged its previous one: a refused head stays at the head, backing off, until it is taken.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from cdc_reader.records import pack
from change_events import ChangeEvent
from change_events.codec import record_size_bound
from change_events.errors import RetryPolicy
from change_events.kinesis import Shard

_lsn_of = attrgetter("lsn")


@dataclass(slots=True, eq=False)
class QueuedRecord:
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
class ShardQueue:
    shard: Shard
    pending: list[ChangeEvent] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    """estimate_size() of each pending event, worked out once when it was added"""
    pending_bytes: int = 0
    ready: deque[QueuedRecord] = field(default_factory=deque)
    failures: int = 0
    not_before: float = 0.0

    def seal(self, max_data: int) -> int:
        """Pack the pending events, in order, into records behind the ready ones; returns the
        bytes the new records hold."""
        sealed = 0
        for packed in pack(self.pending, max_data, sizes=self.sizes):
            counts = Counter(map(_lsn_of, packed.events))  # in lsn order, as events are
            weight = len(packed.body if packed.data is None else packed.data)
            self.ready.append(
                QueuedRecord(
                    self.shard,
                    packed.data,
                    packed.body,
                    self.shard.shard_id,
                    len(packed.events),
                    tuple(counts.items()),
                    weight=weight,
                )
            )
            sealed += weight
        self.pending = []
        self.sizes = []
        self.pending_bytes = 0
        return sealed

    def add_watermark(self, data: bytes, lsn: int) -> int:
        """Queue a watermark record behind everything sealed; returns the bytes it holds."""
        self.ready.append(
            QueuedRecord(self.shard, data, None, self.shard.shard_id, 0, (), watermark=lsn, weight=len(data))
        )
        return len(data)

    def taken(self, record: QueuedRecord) -> None:
        """Kinesis acknowledged `record`, the head: the next one may go at once."""
        self.ready.remove(record)
        self.failures = 0
        self.not_before = 0.0

    def back_off(self, now: float, policy: RetryPolicy) -> None:
        """The head was refused: it stays the head, and waits as `policy` says."""
        self.failures += 1
        self.not_before = now + policy.delay(self.failures)


def heads_for_call(queues: Sequence[ShardQueue], now: float, *, max_records: int, max_bytes: int) -> list[QueuedRecord]:
    """The head record of each queue that may send `now`, in the order given, as many as one
    call holds: never two of one shard."""
    batch: list[QueuedRecord] = []
    size = 0
    for queue in queues:
        if not queue.ready or queue.not_before > now:
            continue
        record = queue.ready[0]
        if len(batch) >= max_records or size + record.size > max_bytes:
            continue
        batch.append(record)
        size += record.size
    return batch
