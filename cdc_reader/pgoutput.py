"""Decoder for the binary messages of PostgreSQL's built-in `pgoutput` logical decoding plugin.

Why one file (~430 lines): one message kind per function, all of one wire protocol; the
shared byte readers would otherwise cross modules on the hottest path.

Each message the server sends inside a replication CopyData 'w' frame (or each `data` row
of `pg_logical_slot_get_binary_changes`) is one payload; `decode(payload)` turns it into one
of the frozen dataclasses below. The module is pure (no I/O) and is the hot path of the
reader, so it works on `bytes` with precompiled `struct` formats and never copies more than
the column values themselves.

Protocol version 1 is understood, the one the reader asks for (no `streaming`, no
`two_phase`): Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate,
Message. A message of a later version's kinds (Stream Start, Begin Prepare, ...) is an
unknown message type.

Column values stay undecoded here: a `TupleData` is a tuple with one `(kind, data)` pair per
column, `kind` being one of `NULL_KIND` 'n', `UNCHANGED_KIND` 'u' (an unchanged TOASTed value
the WAL did not carry), `TEXT_KIND` 't' or `BINARY_KIND` 'b', and `data` the raw bytes for
't'/'b' (None otherwise). Values stay the server's text all the way to the lake, which types
them (`lake.arrow_types`).

Malformed input (truncated message, unknown tag, trailing bytes) raises `PgoutputError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from change_events.model import format_lsn, parse_lsn

__all__ = [
    "BINARY_KIND",
    "NULL",
    "NULL_KIND",
    "TEXT_KIND",
    "UNCHANGED",
    "UNCHANGED_KIND",
    "Begin",
    "Column",
    "Commit",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "PgoutputError",
    "PgoutputMessage",
    "Relation",
    "Truncate",
    "TupleData",
    "Type",
    "Update",
    "decode",
    "format_lsn",
    "parse_lsn",
    "pg_timestamp",
]


class PgoutputError(ValueError):
    """A payload is not a well-formed pgoutput message; the message says what and where."""


# -- column values -------------------------------------------------------------------------

NULL_KIND = "n"
UNCHANGED_KIND = "u"
TEXT_KIND = "t"
BINARY_KIND = "b"

#: Shared value pairs for the two kinds that carry no data.
NULL: tuple[str, None] = (NULL_KIND, None)
UNCHANGED: tuple[str, None] = (UNCHANGED_KIND, None)

#: One `(kind, data)` pair per column, in the order of the Relation's columns.
TupleData = tuple[tuple[str, "bytes | None"], ...]


# -- time and LSN helpers ------------------------------------------------------------------

PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def pg_timestamp(microseconds: int) -> datetime:
    """A protocol timestamp (microseconds since 2000-01-01 UTC) as an aware UTC datetime."""
    return PG_EPOCH + _ONE_US * microseconds


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """'B': start of a (committed) transaction."""

    final_lsn: int
    commit_ts: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """'C': end of the transaction opened by the preceding Begin."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    """'O': the transaction was replicated into this server from replication origin `name`."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a Relation. Bit 1 of `flags` marks a replica-identity (key) column."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """'R': the shape of a table, sent before its first change and after every schema change.

    `replica_identity` is 'd' (default: primary key), 'n' (nothing), 'f' (full row) or
    'i' (an index).
    """

    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_key)


@dataclass(frozen=True, slots=True)
class Type:
    """'Y': name of a non-built-in type (an enum, a domain, ...) used by a Relation."""

    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """'I': a new row."""

    relation_id: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    """'U': a changed row.

    `old_kind` is 'K' when `old` holds the old replica-identity key (sent only when the key
    changed; the other columns are null), 'O' when it holds the whole old row (REPLICA
    IDENTITY FULL), None when no old tuple was sent.
    """

    relation_id: int
    old: TupleData | None
    old_kind: str | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    """'D': a deleted row; `old_kind` 'K' (key columns only, others null) or 'O' (full row)."""

    relation_id: int
    old: TupleData
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """'T': one TRUNCATE statement over one or more relations."""

    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    """'M': a logical decoding message from `pg_logical_emit_message` (option `messages`)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgoutputMessage = Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message


# -- parsing -------------------------------------------------------------------------------

_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U32_ARRAY = {}  # count -> unpack_from for `count` unsigned int32s
_BEGIN = struct.Struct(">QqI").unpack_from  # final lsn, commit ts, xid
_COMMIT = struct.Struct(">BQQq").unpack_from  # flags, commit lsn, end lsn, commit ts
_ORIGIN = struct.Struct(">Q").unpack_from
_COLUMN_TYPE = struct.Struct(">Ii").unpack_from  # type oid, typmod
_MESSAGE_HEAD = struct.Struct(">BQ").unpack_from  # flags, lsn
_TRUNCATE_HEAD = struct.Struct(">IB").unpack_from  # relation count, options

_TRUNCATE_CASCADE = 1
_TRUNCATE_RESTART_IDENTITY = 2


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)  # ValueError when the terminator is missing
    return buf[pos:end].decode("utf-8"), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[TupleData, int]:
    (count,) = _I16(buf, pos)
    pos += 2
    values = []
    append = values.append
    size = len(buf)
    for _ in range(count):
        kind = buf[pos]
        pos += 1
        if kind == 0x74 or kind == 0x62:  # 't' text, 'b' binary
            (length,) = _I32(buf, pos)
            pos += 4
            end = pos + length
            if length < 0 or end > size:
                raise PgoutputError(f"column value of {length} bytes runs past the end of the message ({size} bytes)")
            append((TEXT_KIND if kind == 0x74 else BINARY_KIND, buf[pos:end]))
            pos = end
        elif kind == 0x6E:  # 'n'
            append(NULL)
        elif kind == 0x75:  # 'u'
            append(UNCHANGED)
        else:
            raise PgoutputError(f"unknown column value kind {bytes([kind])!r} at byte {pos - 1}")
    return tuple(values), pos


def _begin(buf):
    final_lsn, ts, xid = _BEGIN(buf, 1)
    return Begin(final_lsn, pg_timestamp(ts), xid), 21


def _commit(buf):
    flags, commit_lsn, end_lsn, ts = _COMMIT(buf, 1)
    return Commit(flags, commit_lsn, end_lsn, pg_timestamp(ts)), 26


def _origin(buf):
    (lsn,) = _ORIGIN(buf, 1)
    name, pos = _string(buf, 9)
    return Origin(lsn, name), pos


def _relation(buf):
    (relation_id,) = _U32(buf, 1)
    namespace, pos = _string(buf, 5)
    name, pos = _string(buf, pos)
    identity = chr(buf[pos])
    (count,) = _I16(buf, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = buf[pos]
        column, pos = _string(buf, pos + 1)
        type_oid, typmod = _COLUMN_TYPE(buf, pos)
        pos += 8
        columns.append(Column(flags, column, type_oid, typmod))
    return Relation(relation_id, namespace, name, identity, tuple(columns)), pos


def _type(buf):
    (type_oid,) = _U32(buf, 1)
    namespace, pos = _string(buf, 5)
    name, pos = _string(buf, pos)
    return Type(type_oid, namespace, name), pos


def _insert(buf):
    (relation_id,) = _U32(buf, 1)
    if buf[5] != 0x4E:  # 'N'
        raise PgoutputError(f"Insert: expected 'N' before the new tuple, got {buf[5:6]!r}")
    new, pos = _tuple(buf, 6)
    return Insert(relation_id, new), pos


def _update(buf):
    (relation_id,) = _U32(buf, 1)
    pos = 5
    marker = buf[pos]
    old = old_kind = None
    if marker == 0x4B or marker == 0x4F:  # 'K' key, 'O' old row
        old_kind = "K" if marker == 0x4B else "O"
        old, pos = _tuple(buf, pos + 1)
        marker = buf[pos]
    if marker != 0x4E:
        raise PgoutputError(f"Update: expected 'N' before the new tuple, got {bytes([marker])!r}")
    new, pos = _tuple(buf, pos + 1)
    return Update(relation_id, old, old_kind, new), pos


def _delete(buf):
    (relation_id,) = _U32(buf, 1)
    marker = buf[5]
    if marker != 0x4B and marker != 0x4F:
        raise PgoutputError(f"Delete: expected 'K' or 'O' before the old tuple, got {bytes([marker])!r}")
    old, pos = _tuple(buf, 6)
    return Delete(relation_id, old, "K" if marker == 0x4B else "O"), pos


def _truncate(buf):
    count, options = _TRUNCATE_HEAD(buf, 1)
    pos = 6
    if pos + 4 * count > len(buf):
        raise PgoutputError(f"Truncate: {count} relation ids do not fit in a {len(buf)}-byte message")
    unpack = _U32_ARRAY.get(count)
    if unpack is None:
        unpack = _U32_ARRAY[count] = struct.Struct(f">{count}I").unpack_from
    relation_ids = unpack(buf, pos)
    return (
        Truncate(relation_ids, bool(options & _TRUNCATE_CASCADE), bool(options & _TRUNCATE_RESTART_IDENTITY)),
        pos + 4 * count,
    )


def _message(buf):
    flags, lsn = _MESSAGE_HEAD(buf, 1)
    prefix, pos = _string(buf, 10)
    (length,) = _I32(buf, pos)
    pos += 4
    end = pos + length
    if length < 0 or end > len(buf):
        raise PgoutputError(f"Message: content of {length} bytes runs past the end of the message")
    return Message(bool(flags & 1), lsn, prefix, buf[pos:end]), end


_PARSERS = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}


def decode(payload: bytes) -> PgoutputMessage:
    """Decode one pgoutput message (protocol version 1)."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    if not payload:
        raise PgoutputError("empty pgoutput message")
    parse = _PARSERS.get(payload[0])
    if parse is None:
        raise PgoutputError(f"unknown pgoutput message type {payload[:1]!r} (0x{payload[0]:02x}), {len(payload)} bytes")
    try:
        message, end = parse(payload)
    except PgoutputError:
        raise
    except (struct.error, IndexError) as exc:
        raise PgoutputError(f"truncated pgoutput message {payload[:1]!r} ({len(payload)} bytes): {exc}") from exc
    except ValueError as exc:  # a string without its terminator, or not UTF-8
        raise PgoutputError(f"malformed pgoutput message {payload[:1]!r}: {exc}") from exc
    if end != len(payload):
        raise PgoutputError(
            f"pgoutput message {payload[:1]!r} has {len(payload) - end} unexpected trailing "
            f"byte(s) (parsed {end} of {len(payload)})"
        )
    return message
