"""The wire format of a Kinesis record: a versioned, compressed batch of change events, or a
watermark marker.

    bytes 0-1  magic b"TC"
    byte  2    format version (FORMAT_VERSION)
    byte  3    kind: 1 events, 2 watermark
    byte  4    compression: 0 none, 1 zstd
    bytes 5-8  length of the uncompressed body (big-endian)
    bytes 9-   body

An events body (v2) lists each table schema once, as compact JSON behind its u32 length; then
the u32 number of events N; N u16 indexes into those schemas and N u32 frame lengths, one of
each per event; then the N frames (`change_events.wire`), back to back. A watermark body is compact JSON.

Only v2 is read. Version 1 (events as JSON arrays) was written for two hours on 2026-11-24,
before the first deployment existed: no stream holds such a record any more (Kinesis keeps
records 7 days at most) and no deployed lake's dead letters can. A v1 record that turns up
(in a local stream or a local lake's dead letters from those hours) is refused with a
CodecError saying so, and is kept as a dead letter: nothing is lost. Anything that does not decode raises CodecError with a reason
fit for a dead-letter record; nothing else escapes `decode`, whatever the bytes hold
(tests/unit/test_codec_fuzz.py). Decoding also checks what later stages rely on: schemas are
lists of names and types of the right kinds, LSNs and times are in range, values are text.
"""

from __future__ import annotations

import json
import struct
from operator import attrgetter
from dataclasses import dataclass

import pyarrow as pa

from change_events.errors import Kind, TotesError
from change_events.model import ChangeEvent, Column, TableSchema, Watermark
from change_events.wire import MAX_LSN, EncodedChange, decode_frame, encode_frame, from_micros, micros

MAGIC = b"TC"
FORMAT_VERSION = 2
KIND_EVENTS = 1
KIND_WATERMARK = 2
NO_COMPRESSION = 0
ZSTD = 1
_HEADER = struct.Struct(">2sBBBI")
_U32 = struct.Struct(">I")
_schema_of = attrgetter("schema")
_frame_of = attrgetter("frame")
# Below this a body is not worth compressing.
_COMPRESS_FROM = 512

MAX_BODY_BYTES = 256 * 1024 * 1024
"""The largest uncompressed body a consumer accepts (a 1 MiB record that claims more is
corrupt or a decompression bomb; the reader's bodies are about a record's size)."""
_MAX_COLUMNS = 1600  # PostgreSQL's own limit
_U32_MAX, _I32_MIN, _I32_MAX = (1 << 32) - 1, -(1 << 31), (1 << 31) - 1
# What a body that is well framed but holds the wrong things raises while it is read.
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError, RecursionError, struct.error)


class CodecError(TotesError, ValueError):
    """A record that is not a readable totes-cdc record; the message is the reason."""

    kind = Kind.BAD_DATA


@dataclass(frozen=True)
class DecodedRecord:
    events: tuple[ChangeEvent, ...] = ()
    watermark: Watermark | None = None


def _frame(kind: int, body: bytes) -> bytes:
    if len(body) >= _COMPRESS_FROM:
        compressed = pa.compress(body, codec="zstd", asbytes=True)
        return _HEADER.pack(MAGIC, FORMAT_VERSION, kind, ZSTD, len(body)) + compressed
    return _HEADER.pack(MAGIC, FORMAT_VERSION, kind, NO_COMPRESSION, len(body)) + body


def encode_events(events) -> bytes:
    """One record holding `events` (ChangeEvents or EncodedChanges, all for one shard, in order)."""
    return events_record(events_body(events))


def events_body(events) -> bytes:
    """The uncompressed body of a record of `events`: the cheap half of `encode_events`,
    which a publisher can do on its own thread, leaving compression (`events_record`) to
    another one. Per-event work stays in C (map, attrgetter, id): this runs for every event."""
    schema_ids = list(map(id, map(_schema_of, events)))
    distinct = list(dict.fromkeys(schema_ids))
    by_id = {distinct[0]: events[0].schema} if len(distinct) == 1 else {id(e.schema): e.schema for e in events}
    schemas = [by_id[i] for i in distinct]
    count = len(schema_ids)
    if len(distinct) <= 1:
        indexes = bytes(2 * count)
    else:
        index_of = {schema_id: index for index, schema_id in enumerate(distinct)}
        indexes = struct.pack(f">{count}H", *map(index_of.__getitem__, schema_ids))
    try:
        frames = list(map(_frame_of, events))
    except AttributeError:  # ChangeEvents among them: encode those here
        frames = [event.frame if type(event) is EncodedChange else encode_frame(event) for event in events]
    head = json.dumps(
        [[s.table, [[c.name, c.type_name, c.type_oid, c.type_modifier, c.is_key] for c in s.columns]] for s in schemas],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    lengths = struct.pack(f">{count}I", *map(len, frames))
    return b"".join([_U32.pack(len(head)), head, _U32.pack(count), indexes, lengths, *frames])


def events_record(body: bytes) -> bytes:
    """The record of an events body: header and (zstd) compression."""
    return _frame(KIND_EVENTS, body)


def record_size_bound(body_size: int) -> int:
    """The most bytes a record of a body of `body_size` bytes can take: zstd's own bound
    (ZSTD_COMPRESSBOUND) plus the header, so a body's record is known to fit before it is
    compressed."""
    small = (128 * 1024 - body_size) >> 11 if body_size < 128 * 1024 else 0
    return _HEADER.size + body_size + (body_size >> 8) + small + 64


def events_body_size(record: bytes) -> int:
    """The uncompressed size of the events a record carries, from its header alone (no
    decompression): about 185 bytes per event. 0 for a watermark or a record that is not
    ours (`decode` says why later). The local poller weighs its pending batches with it."""
    if len(record) < _HEADER.size:
        return 0
    magic, _, kind, _, size = _HEADER.unpack_from(record)
    return size if magic == MAGIC and kind == KIND_EVENTS else 0


def encode_watermark(marker: Watermark) -> bytes:
    emitted = None if marker.emitted_at is None else micros(marker.emitted_at)
    body = json.dumps({"w": marker.lsn, "t": emitted}, separators=(",", ":"))
    return _frame(KIND_WATERMARK, body.encode("utf-8"))


def decode(record: bytes) -> DecodedRecord:
    """Read one record; raise CodecError saying why when it cannot be read."""
    if len(record) < _HEADER.size:
        raise CodecError(f"record of {len(record)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, kind, compression, size = _HEADER.unpack_from(record)
    if magic != MAGIC:
        raise CodecError(f"not a totes-cdc record (starts with {bytes(record[:2])!r}, expected {MAGIC!r})")
    if version > FORMAT_VERSION:
        raise CodecError(
            f"record format v{version} is newer than this reader's v{FORMAT_VERSION}", fix="upgrade the consumer"
        )
    if version < FORMAT_VERSION:
        raise CodecError(
            f"record format v{version} is no longer read: this consumer reads v{FORMAT_VERSION}, "
            "and v1 was written only before the first deployment (see change_events.codec)"
        )
    if size > MAX_BODY_BYTES:
        raise CodecError(f"record claims a body of {size} bytes, more than the {MAX_BODY_BYTES} a consumer accepts")
    body = memoryview(record)[_HEADER.size :]
    try:
        if compression == ZSTD:
            body = pa.decompress(body, decompressed_size=size, codec="zstd", asbytes=True)
        elif compression != NO_COMPRESSION:
            raise CodecError(f"unknown compression code {compression}")
        body = bytes(body)
    except CodecError:
        raise
    except (pa.ArrowException, OSError, ValueError) as error:
        raise CodecError(f"corrupt record body: {error}") from None
    try:
        if kind == KIND_WATERMARK:
            return DecodedRecord(watermark=_watermark(json.loads(body)))
        if kind == KIND_EVENTS:
            return DecodedRecord(events=tuple(_decode_events(body)))
    except _MALFORMED as error:
        raise CodecError(f"malformed record body: {type(error).__name__}: {_short(error)}") from None
    raise CodecError(f"unknown record kind {kind}")


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."


def _integer(value, low: int, high: int, what: str) -> int:
    """`value` if it is an int (not a bool) in [low, high]; ValueError saying what it is not."""
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}], not {_short(repr(value), 60)}")
    return value


def _watermark(payload) -> Watermark:
    if not isinstance(payload, dict):
        raise ValueError(f"a watermark body is a JSON object, not {type(payload).__name__}")
    commit_us = payload.get("t")
    lsn = _integer(payload["w"], 0, MAX_LSN, "a watermark's LSN")
    if commit_us is not None:
        commit_us = from_micros(_integer(commit_us, -(1 << 63), (1 << 63) - 1, "a watermark's time"))
    return Watermark(lsn, commit_us)


def _schemas(raw) -> list[TableSchema]:
    """The table schemas of a record's head: `[[table, [[name, type, oid, typmod, is_key], ...]], ...]`."""
    if not isinstance(raw, list):
        raise ValueError("the schema list is not a JSON array")
    return [_schema(entry) for entry in raw]


def _schema(entry) -> TableSchema:
    table, columns = entry
    _name(table, "table name")
    if table in (".", ".."):  # any other spelling is a name (the lake escapes its folder)
        raise ValueError(f"table name {table!r} is not a table name")
    if not isinstance(columns, list) or len(columns) > _MAX_COLUMNS:
        raise ValueError(f"{table}: the columns are not a list of at most {_MAX_COLUMNS}")
    parsed = []
    for name, type_name, oid, modifier, is_key in columns:
        _name(name, f"{table}: column name")
        _name(type_name, f"{table}.{name}: type name")
        if type(is_key) is not bool:
            raise ValueError(f"{table}.{name}: is_key is not true/false")
        parsed.append(
            Column(
                name,
                type_name,
                _integer(oid, 0, _U32_MAX, "a type oid"),
                _integer(modifier, _I32_MIN, _I32_MAX, "a type modifier"),
                is_key,
            )
        )
    if len({c.name for c in parsed}) != len(parsed):
        raise ValueError(f"{table}: a column name repeats")
    return TableSchema(table, tuple(parsed))


def _name(value, what: str) -> None:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ValueError(f"{what} must be non-empty text without NUL, not {_short(repr(value), 60)}")


def _decode_events(body: bytes) -> list[ChangeEvent]:
    (head_size,) = _U32.unpack_from(body)
    pos = _U32.size + head_size
    schemas = _schemas(json.loads(body[_U32.size : pos]))
    (count,) = _U32.unpack_from(body, pos)
    pos += _U32.size
    indexes = struct.unpack_from(f">{count}H", body, pos)
    lengths = struct.unpack_from(f">{count}I", body, pos + 2 * count)
    pos += 6 * count
    events = []
    for index, length in zip(indexes, lengths):
        end = pos + length
        if end > len(body):
            raise ValueError(f"event frame of {length} bytes runs past the end of the record")
        events.append(decode_frame(schemas[index], body[pos:end]))
        pos = end
    if pos != len(body):
        raise ValueError(f"{len(body) - pos} bytes after the last event")
    return events
