"""One change event in its wire form, and `EncodedChange`: an event that is already in it.

A frame holds everything of an event but its table schema (a record lists those once):

    op          1 byte, the Op's letter
    lsn         u64
    seq         u32
    xid         i64, -1 when unknown
    commit_ts   i64 microseconds since 1970-01-01 UTC, NO_TIME when unknown
    flags       u8: bit 0 an after-row follows; bits 1-2 the before-row (0 none, 1 key, 2 full)
    after row   (when flagged)
    before row  (when flagged)

A row is pgoutput's own TupleData layout: a big-endian i16 column count, then per column
'n' (NULL), 'u' (unchanged TOASTed value, not carried) or 't' + i32 length + UTF-8 text.
Reusing that layout is what makes streaming cheap: the reader copies the bytes PostgreSQL
sent into the frame without looking at a single value (see `cdc_reader.assembler`).
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone

from change_events.errors import Kind, TotesError
from change_events.model import ChangeEvent, Op, Row, TableSchema

FRAME_HEAD = struct.Struct(">cQIqqB")
frame_head = FRAME_HEAD.pack
"""The one frame-header packer: frame_head(op letter, lsn, seq, xid or NO_XID, commit time in
microseconds or NO_TIME, flags) -> 30 bytes. A bound method, as it runs for every event."""
NO_XID = -1
NO_TIME = -(1 << 63)
MAX_LSN = (1 << 63) - 1
"""The lake keeps LSNs (and Delta app transaction versions) as int64; PostgreSQL's WAL
would need 8 EiB to get there, so a larger one is a corrupt record."""
HAS_AFTER = 1
BEFORE_NONE, BEFORE_KEY, BEFORE_FULL = 0, 1, 2
_BEFORE_SHIFT = 1

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_COLUMN_HEAD = struct.Struct(">ci")
_OPS = {op.value.encode(): op for op in Op}


class FrameError(TotesError, ValueError):
    """Bytes that are not a well-formed frame or row; the message says where."""

    kind = Kind.BAD_DATA


class _Unchanged:
    """Marks a column whose value the WAL did not carry."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


def micros(ts: datetime | None) -> int:
    if ts is None:
        return NO_TIME
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    delta = ts - _UNIX_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime | None:
    """The UTC time `value` microseconds after 1970; FrameError beyond datetime's years 1-9999."""
    if value == NO_TIME:
        return None
    try:
        return _UNIX_EPOCH + _ONE_US * value
    except OverflowError:
        raise FrameError(f"commit time of {value} microseconds since 1970 is out of range") from None


# -- rows ------------------------------------------------------------------------------------


def encode_row(values) -> bytes:
    """A row from values in column order: str, None (NULL) or UNCHANGED."""
    parts = [_I16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(b"n")
        elif value is UNCHANGED:
            parts.append(b"u")
        else:
            data = value.encode("utf-8")
            parts.append(_COLUMN_HEAD.pack(b"t", len(data)))
            parts.append(data)
    return b"".join(parts)


def decode_row(buf: bytes, pos: int) -> tuple[list, int]:
    """Values of the row at `pos` (str, None or UNCHANGED) and the position after it."""
    try:
        (count,) = _I16.unpack_from(buf, pos)
    except struct.error:
        raise FrameError(f"row header missing at byte {pos}") from None
    pos += 2
    values: list = []
    append = values.append
    size = len(buf)
    for _ in range(count):
        if pos >= size:
            raise FrameError(f"row ends after {len(values)} of {count} columns")
        kind = buf[pos]
        if kind == 0x74:  # 't'
            (length,) = _I32.unpack_from(buf, pos + 1)
            start = pos + 5
            pos = start + length
            if length < 0 or pos > size:
                raise FrameError(f"value of {length} bytes runs past the end ({size} bytes)")
            append(buf[start:pos].decode("utf-8"))
        elif kind == 0x6E:  # 'n'
            append(None)
            pos += 1
        elif kind == 0x75:  # 'u'
            append(UNCHANGED)
            pos += 1
        else:
            raise FrameError(f"unknown value kind {bytes([kind])!r} at byte {pos}")
    return values, pos


def row_values(buf: bytes, pos: int, indexes: tuple[int, ...]) -> tuple:
    """Only the values at `indexes` (ascending) of the row at `pos`: the key, without reading
    the rest of the row."""
    wanted = iter(indexes)
    target = next(wanted, None)
    found = []
    column = 0
    pos += 2
    while target is not None:
        kind = buf[pos]
        if kind == 0x74:
            (length,) = _I32.unpack_from(buf, pos + 1)
            end = pos + 5 + length
            if column == target:
                found.append(buf[pos + 5 : end].decode("utf-8"))
            pos = end
        else:
            if column == target:
                found.append(None if kind == 0x6E else UNCHANGED)
            pos += 1
        if column == target:
            target = next(wanted, None)
        column += 1
    return tuple(found)


# -- frames ----------------------------------------------------------------------------------


def encode_frame(event: ChangeEvent) -> bytes:
    """The frame of an event built from its dicts (snapshot rows, tests, re-encoding)."""
    schema = event.schema
    names = schema.column_names
    flags = 0
    parts = [b""]
    if event.after is not None:
        flags |= HAS_AFTER
        after, unchanged = event.after, set(event.unchanged)
        parts.append(encode_row([UNCHANGED if n in unchanged else after.get(n) for n in names]))
    before = event.before
    if before is not None:
        keys = schema.key_names
        kind = BEFORE_KEY if set(before) <= set(keys) and len(before) < len(names) else BEFORE_FULL
        flags |= kind << _BEFORE_SHIFT
        parts.append(encode_row([before.get(n, UNCHANGED) for n in names]))
    parts[0] = frame_head(
        event.op.value.encode(),
        event.lsn,
        event.seq,
        NO_XID if event.xid is None else event.xid,
        micros(event.commit_ts),
        flags,
    )
    return b"".join(parts)


def decode_frame(schema: TableSchema, frame: bytes) -> ChangeEvent:
    """The event a frame holds; FrameError (or struct/Unicode errors) when it is malformed."""
    try:
        op_letter, lsn, seq, xid, commit_us, flags = FRAME_HEAD.unpack_from(frame)
    except struct.error:
        raise FrameError(f"frame of {len(frame)} bytes is shorter than its header") from None
    op = _OPS.get(op_letter)
    if op is None:
        raise FrameError(f"unknown op {op_letter!r}")
    if lsn > MAX_LSN:
        raise FrameError(f"LSN {lsn} is out of range")
    if xid < NO_XID:
        raise FrameError(f"transaction id {xid} is negative")
    names = schema.column_names
    pos = FRAME_HEAD.size
    after: Row | None = None
    unchanged: tuple[str, ...] = ()
    if flags & HAS_AFTER:
        values, pos = decode_row(frame, pos)
        _check_width(schema, values)
        after = {}
        skipped = []
        for name, value in zip(names, values):
            if value is UNCHANGED:
                skipped.append(name)
            else:
                after[name] = value
        unchanged = tuple(skipped)
    before: Row | None = None
    before_kind = (flags >> _BEFORE_SHIFT) & 3
    if before_kind:
        values, pos = decode_row(frame, pos)
        _check_width(schema, values)
        if before_kind == BEFORE_KEY:
            keys = set(schema.key_names)
            before = {n: v for n, v in zip(names, values) if n in keys}
        else:
            before = {n: v for n, v in zip(names, values) if v is not UNCHANGED}
    if pos != len(frame):
        raise FrameError(f"{len(frame) - pos} bytes left over after the event")
    if op is Op.TRUNCATE:
        key: Row = {}
    else:
        source = after if after is not None else before
        if source is None:
            raise FrameError(f"a {op.name.lower()} event without a row")
        key = {k: source.get(k) for k in schema.key_names}
    return ChangeEvent(
        schema=schema,
        op=op,
        lsn=lsn,
        seq=seq,
        xid=None if xid == NO_XID else xid,
        commit_ts=from_micros(commit_us),
        key=key,
        after=after,
        before=before,
        unchanged=unchanged,
    )


def _check_width(schema: TableSchema, values: list) -> None:
    if len(values) != len(schema.columns):
        raise FrameError(f"{schema.table}: {len(values)} values for {len(schema.columns)} columns")


def _from_event(name: str) -> property:
    return property(
        lambda self: getattr(self.event, name), doc=f"The event's `{name}`, decoded from the frame on first use."
    )


class EncodedChange:
    """A change event that is already a frame, as the reader builds it from pgoutput bytes.

    The publisher needs only its schema, lsn, route hash and frame; anything else (a test's
    sink, a re-read's bookkeeping, an error message) reads `event`, decoded once on first
    use, through the same attributes a ChangeEvent has. Equal to the ChangeEvent it holds,
    so the two forms can be compared freely; `Change` names either.
    """

    __slots__ = ("schema", "lsn", "route_hash", "frame", "_event")

    def __init__(self, schema: TableSchema, lsn: int, route_hash: int, frame: bytes) -> None:
        self.schema = schema
        self.lsn = lsn
        self.route_hash = route_hash
        """CRC-32 of the partition key's UTF-8, as ChangeEvent.route_hash."""
        self.frame = frame
        self._event: ChangeEvent | None = None

    @property
    def event(self) -> ChangeEvent:
        if self._event is None:
            self._event = decode_frame(self.schema, self.frame)
        return self._event

    @property
    def table(self) -> str:
        return self.schema.table

    op = _from_event("op")
    seq = _from_event("seq")
    xid = _from_event("xid")
    commit_ts = _from_event("commit_ts")
    key = _from_event("key")
    after = _from_event("after")
    before = _from_event("before")
    unchanged = _from_event("unchanged")
    event_id = _from_event("event_id")
    partition_key = _from_event("partition_key")

    def __eq__(self, other) -> bool:
        if isinstance(other, EncodedChange):
            other = other.event
        return self.event == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EncodedChange({self.event!r})"


Change = ChangeEvent | EncodedChange
"""One change event in either form: decoded (ChangeEvent) or still a frame (EncodedChange)."""
