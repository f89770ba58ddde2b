"""Guarantee 8 at the decoder: whatever a record holds, `decode` returns events (or a
watermark) that later stages can rely on, or raises CodecError, the dead-letter error, with
a reason. Real records are mutated byte by byte and field by field. Deterministic (fixed
derandomized examples, no example database), so CI runs the same cases every time."""

from __future__ import annotations

import json
import struct
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from change_events import ChangeEvent, CodecError, DecodedRecord, Watermark, decode, encode_events, encode_watermark
from change_events.codec import _HEADER, KIND_EVENTS, KIND_WATERMARK, NO_COMPRESSION, ZSTD, events_body
from change_events.wire import FRAME_HEAD, MAX_LSN, encode_frame
from tests.lake_fixtures import PAYMENT, SALES_ORDER, Source, payment_row, sales_order_row

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _real_events() -> list[ChangeEvent]:
    source = Source()
    events = source.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 4)])
    with source.transaction() as tx:
        tx.update(SALES_ORDER, sales_order_row(1, version=2), unchanged=("design_id",))
        tx.insert(PAYMENT, payment_row(7))
        tx.delete(SALES_ORDER, {"sales_order_id": "2"})
    with source.transaction() as tx:
        tx.truncate(PAYMENT)
    return events + tx.events + [e for e in events]


EVENTS = _real_events()
BODY = events_body(EVENTS)
RECORDS = [
    encode_events(EVENTS),  # zstd
    encode_events(EVENTS[:2]),  # small: not compressed
    encode_watermark(Watermark(2**40, datetime(2024, 5, 1))),
]


def _frame(body: bytes, *, kind: int = KIND_EVENTS, compress: bool = False, version: int = 2) -> bytes:
    if compress:
        import pyarrow as pa

        return _HEADER.pack(b"TC", version, kind, ZSTD, len(body)) + pa.compress(body, codec="zstd", asbytes=True)
    return _HEADER.pack(b"TC", version, kind, NO_COMPRESSION, len(body)) + body


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Apply (kind, position, bytes) edits: 0 overwrite, 1 delete, 2 insert, 3 truncate."""
    out = bytearray(data)
    for kind, position, chunk in edits:
        at = position % (len(out) + 1)
        if kind == 0:
            out[at : at + len(chunk)] = chunk
        elif kind == 1:
            del out[at : at + max(1, len(chunk))]
        elif kind == 2:
            out[at:at] = chunk
        else:
            del out[at:]
    return bytes(out)


edits = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6
)


def assert_contained(record: bytes) -> None:
    """Either a reason to dead-letter, or a record every later stage can take."""
    try:
        decoded = decode(record)
    except CodecError as error:
        assert str(error)
        return
    assert isinstance(decoded, DecodedRecord)
    if decoded.watermark is not None:
        assert type(decoded.watermark.lsn) is int and 0 <= decoded.watermark.lsn <= MAX_LSN
    for event in decoded.events:
        assert 0 <= event.lsn <= MAX_LSN and 0 <= event.seq <= MAX_LSN
        assert event.xid is None or 0 <= event.xid <= MAX_LSN
        assert event.commit_ts is None or isinstance(event.commit_ts, datetime)
        assert isinstance(event.table, str) and event.table not in ("", ".", "..")
        names = event.schema.column_names
        assert len(set(names)) == len(names) and all(isinstance(n, str) and n for n in names)
        assert all(isinstance(c.type_name, str) for c in event.schema.columns)
        for row in (event.after, event.before, event.key):
            assert row is None or all(k in names and (v is None or isinstance(v, str)) for k, v in row.items())


@FUZZ
@given(st.sampled_from(RECORDS), edits)
def test_records_mutated_byte_by_byte(record, changes):
    assert_contained(_mutate(record, changes))


@FUZZ
@given(edits, st.booleans())
def test_bodies_mutated_behind_a_valid_header(changes, compress):
    """The body is mutated, then framed (and compressed) correctly: the parser itself is hit."""
    assert_contained(_frame(_mutate(BODY, changes), compress=compress))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(json_values, st.integers(0, 5), st.integers(0, 4))
def test_schema_heads_of_any_json_shape(head, column, field):
    """A JSON head of any shape, and real heads with one field replaced by any JSON value."""
    head_bytes = json.dumps(head).encode()
    count_and_rest = BODY[4 + struct.unpack_from(">I", BODY)[0] :]
    assert_contained(_frame(struct.pack(">I", len(head_bytes)) + head_bytes + count_and_rest))
    real = json.loads(BODY[4 : 4 + struct.unpack_from(">I", BODY)[0]])
    columns = real[0][1]
    columns[column % len(columns)][field] = head
    replaced = json.dumps(real).encode()
    assert_contained(_frame(struct.pack(">I", len(replaced)) + replaced + count_and_rest))


@FUZZ
@given(
    st.sampled_from([b"r", b"c", b"u", b"d", b"t"]) | st.binary(min_size=1, max_size=1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 255),
    st.sampled_from(EVENTS),
    st.binary(max_size=40),
)
def test_frames_with_any_header_fields(op, lsn, seq, xid, commit_us, flags, event, tail):
    """A real event's frame with every header field (op, LSN, seq, xid, time, flags) set to
    anything, and its rows kept, cut or extended."""
    real = encode_frame(event)
    frame = FRAME_HEAD.pack(op, lsn, seq, xid, commit_us, flags) + real[FRAME_HEAD.size :]
    for rows in (frame, frame + tail, frame[: len(frame) - len(tail)]):
        assert_contained(_frame(_one_frame_body(event, rows)))


def _one_frame_body(event: ChangeEvent, frame: bytes) -> bytes:
    body = events_body([event])
    (head_size,) = struct.unpack_from(">I", body)
    head = body[: 4 + head_size]
    return head + struct.pack(">IHI", 1, 0, len(frame)) + frame


@FUZZ
@given(json_values)
def test_watermarks_of_any_json(payload):
    assert_contained(_frame(json.dumps(payload).encode(), kind=KIND_WATERMARK))


def test_deep_nesting_and_size_bombs_are_reasons_not_crashes():
    nested = b"[" * 100_000 + b"]" * 100_000
    for record in (
        _frame(nested),
        _frame(nested, kind=KIND_WATERMARK),
        _HEADER.pack(b"TC", 2, KIND_EVENTS, ZSTD, 0xFFFFFFFF) + b"\x28\xb5\x2f\xfd",
    ):
        assert_contained(record)
