"""The wire format of a Kinesis record: a versioned, compressed batch of change events, or a
watermark marker.

    bytes 0-1  magic b"TC"
    byte  2    format version (FORMAT_VERSION)
    byte  3    kind: 1 events, 2 watermark
    byte  4    compression: 0 none, 1 zstd
    bytes 5-8  length of the uncompressed body (big-endian)
    bytes 9-   body: compact JSON

An events body lists each table schema once and then the events as arrays aligned to those
columns, so column names are not repeated per row. Anything that does not decode raises
CodecError with a reason fit for a dead-letter record.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from change_events.model import ChangeEvent, Column, Op, TableSchema, Watermark

MAGIC = b"TC"
FORMAT_VERSION = 1
KIND_EVENTS = 1
KIND_WATERMARK = 2
NO_COMPRESSION = 0
ZSTD = 1
_HEADER = struct.Struct(">2sBBBI")
# Below this a body is not worth compressing.
_COMPRESS_FROM = 512

_BEFORE_NONE, _BEFORE_KEY, _BEFORE_FULL = 0, 1, 2
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class CodecError(ValueError):
    """A record that is not a readable totes-cdc record; the message is the reason."""


@dataclass(frozen=True)
class DecodedRecord:
    events: tuple[ChangeEvent, ...] = ()
    watermark: Watermark | None = None


def _micros(ts: datetime | None) -> int | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: int | None) -> datetime | None:
    if value is None:
        return None
    seconds, micros = divmod(value, 1_000_000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=micros)


def _frame(kind: int, body: bytes) -> bytes:
    if len(body) >= _COMPRESS_FROM:
        compressed = pa.compress(body, codec="zstd", asbytes=True)
        return _HEADER.pack(MAGIC, FORMAT_VERSION, kind, ZSTD, len(body)) + compressed
    return _HEADER.pack(MAGIC, FORMAT_VERSION, kind, NO_COMPRESSION, len(body)) + body


def encode_events(events: list[ChangeEvent] | tuple[ChangeEvent, ...]) -> bytes:
    """One record holding `events` (all for one shard, in order)."""
    schema_index: dict[TableSchema, int] = {}
    schemas: list[list] = []
    rows: list[list] = []
    for event in events:
        schema = event.schema
        index = schema_index.get(schema)
        if index is None:
            index = schema_index[schema] = len(schemas)
            schemas.append([schema.table, [[c.name, c.type_name, c.type_oid, c.type_modifier, c.is_key]
                                           for c in schema.columns]])
        names = schema.column_names
        after = event.after
        before = event.before
        if before is None:
            before_kind, before_values = _BEFORE_NONE, None
        elif set(before) <= set(schema.key_names) and len(before) < len(names):
            before_kind, before_values = _BEFORE_KEY, [before.get(n) for n in names]
        else:
            before_kind, before_values = _BEFORE_FULL, [before.get(n) for n in names]
        unchanged = [names.index(n) for n in event.unchanged]
        rows.append([
            index, event.op.value, event.lsn, event.seq, event.xid, _micros(event.commit_ts),
            [event.key.get(n) for n in schema.key_names] if event.key else None,
            None if after is None else [after.get(n) for n in names],
            before_kind, before_values, unchanged,
        ])
    body = json.dumps({"s": schemas, "e": rows}, ensure_ascii=False, separators=(",", ":"))
    return _frame(KIND_EVENTS, body.encode("utf-8"))


def encode_watermark(marker: Watermark) -> bytes:
    body = json.dumps({"w": marker.lsn, "t": _micros(marker.emitted_at)}, separators=(",", ":"))
    return _frame(KIND_WATERMARK, body.encode("utf-8"))


def decode(record: bytes) -> DecodedRecord:
    """Read one record; raise CodecError saying why when it cannot be read."""
    if len(record) < _HEADER.size:
        raise CodecError(f"record of {len(record)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, kind, compression, size = _HEADER.unpack_from(record)
    if magic != MAGIC:
        raise CodecError(f"not a totes-cdc record (starts with {bytes(record[:2])!r}, expected {MAGIC!r})")
    if version > FORMAT_VERSION:
        raise CodecError(f"record format v{version} is newer than this reader's v{FORMAT_VERSION}: upgrade the consumer")
    body = memoryview(record)[_HEADER.size:]
    try:
        if compression == ZSTD:
            body = pa.decompress(body, decompressed_size=size, codec="zstd", asbytes=True)
        elif compression != NO_COMPRESSION:
            raise CodecError(f"unknown compression code {compression}")
        payload = json.loads(bytes(body))
    except CodecError:
        raise
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as error:
        raise CodecError(f"corrupt record body: {error}") from None
    try:
        if kind == KIND_WATERMARK:
            return DecodedRecord(watermark=Watermark(int(payload["w"]), _from_micros(payload.get("t"))))
        if kind == KIND_EVENTS:
            return DecodedRecord(events=tuple(_decode_events(payload)))
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise CodecError(f"malformed record body: {type(error).__name__}: {error}") from None
    raise CodecError(f"unknown record kind {kind}")


def _decode_events(payload: dict) -> list[ChangeEvent]:
    schemas = [
        TableSchema(table, tuple(Column(n, t, int(oid), int(mod), bool(key)) for n, t, oid, mod, key in columns))
        for table, columns in payload["s"]
    ]
    events = []
    for index, op, lsn, seq, xid, commit_us, key, after, before_kind, before, unchanged in payload["e"]:
        schema = schemas[index]
        names = schema.column_names
        skipped = tuple(names[i] for i in unchanged)
        after_row = None
        if after is not None:
            if len(after) != len(names):
                raise ValueError(f"{schema.table}: {len(after)} values for {len(names)} columns")
            after_row = {n: v for n, v in zip(names, after) if n not in skipped}
        before_row = None
        if before_kind == _BEFORE_FULL:
            before_row = dict(zip(names, before, strict=True))
        elif before_kind == _BEFORE_KEY:
            keys = set(schema.key_names)
            before_row = {n: v for n, v in zip(names, before, strict=True) if n in keys}
        events.append(ChangeEvent(
            schema=schema, op=Op(op), lsn=int(lsn), seq=int(seq), xid=xid,
            commit_ts=_from_micros(commit_us),
            key={} if key is None else dict(zip(schema.key_names, key, strict=True)),
            after=after_row, before=before_row, unchanged=skipped,
        ))
    return events
