"""The change event: one row change as the reader saw it in the WAL (DESIGN.md).

Values are kept in PostgreSQL's text output form (what pgoutput and COPY both produce), next
to the table schema that says how to read them. The reader therefore never converts a value;
the processor converts whole columns at once when it writes Arrow/Delta. `None` is SQL NULL;
a column whose value the WAL did not carry (an unchanged TOASTed value) is absent from
`after` and named in `unchanged`, so no stage can mistake it for NULL.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum


class Op(str, Enum):
    SNAPSHOT = "r"
    INSERT = "c"
    UPDATE = "u"
    DELETE = "d"
    TRUNCATE = "t"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_name: str
    """format_type() of the column, e.g. 'numeric(10,2)', 'timestamp(3) without time zone'."""
    type_oid: int
    type_modifier: int = -1
    is_key: bool = False


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A source table's columns as of some point in the WAL (a Relation message).

    Every event points at one of these, so the names and the hash are worked out once here
    rather than per event (the reader's hot path looks them up several times per row)."""

    table: str
    """Schema-qualified name, e.g. 'public.sales_order'."""
    columns: tuple[Column, ...]
    column_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    key_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_names", tuple(c.name for c in self.columns))
        object.__setattr__(self, "key_names", tuple(c.name for c in self.columns if c.is_key))
        object.__setattr__(self, "_hash", hash((self.table, self.columns)))

    def __hash__(self) -> int:
        return self._hash


Row = dict[str, "str | None"]


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row change. `(lsn, seq)` is its id, its idempotency key and its order."""

    schema: TableSchema
    op: Op
    lsn: int
    """Commit LSN of the source transaction; for snapshot rows, the slot's consistent point."""
    seq: int
    """Ordinal of the change inside its transaction (or inside the snapshot)."""
    xid: int | None
    commit_ts: datetime | None
    key: Row
    after: Row | None = None
    """The row after the change, without the `unchanged` columns; None for deletes/truncates."""
    before: Row | None = None
    """Old key values, or the whole old row under REPLICA IDENTITY FULL."""
    unchanged: tuple[str, ...] = ()

    @property
    def table(self) -> str:
        return self.schema.table

    @property
    def event_id(self) -> tuple[int, int]:
        return (self.lsn, self.seq)

    @property
    def partition_key(self) -> str:
        """`<schema.table>/<key values in key-column order>`, the table alone when keyless:
        what keeps one row's events on one Kinesis shard."""
        if not self.key:
            return self.schema.table
        return partition_key(self.schema.table, [self.key.get(n) for n in self.schema.key_names or self.key])

    @property
    def route_hash(self) -> int:
        """CRC-32 of the partition key's UTF-8: where the event falls among the shards."""
        return key_hash(self.partition_key)


@dataclass(frozen=True, slots=True)
class Watermark:
    """In-band marker: every event with a commit LSN up to `lsn` was put on the stream
    before this marker (on every shard), so a consumer that has passed it on all shards
    holds every such event."""

    lsn: int
    emitted_at: datetime = field(compare=False, default=None)  # type: ignore[assignment]


def partition_key(table: str, key_values) -> str:
    return table + "/" + "/".join([str(value) for value in key_values])


def key_hash(partition_key: str) -> int:
    """CRC-32 of a partition key's UTF-8: the route hash, the one place it is worked out
    (the reader's fast path continues `route_prefix` instead, to the same number)."""
    return zlib.crc32(partition_key.encode("utf-8"))


def route_hash(table: str, key_values) -> int:
    """The route hash of a row of `table` with these key values (none: the table alone)."""
    return key_hash(partition_key(table, key_values) if key_values else table)


def route_prefix(table: str) -> int:
    """CRC-32 of '<table>/': `zlib.crc32(key_bytes, route_prefix(table))` is the route hash of
    a one-column key whose text is `key_bytes`, without building the partition key."""
    return zlib.crc32(f"{table}/".encode("utf-8"))


def format_lsn(lsn: int) -> str:
    """PostgreSQL's text form of an LSN, e.g. 0/16B3748."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    if not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)
