"""The change-event wire format: lossless round trips, TOAST-unchanged kept apart from NULL,
and a clear reason for every record that cannot be read."""

from __future__ import annotations

import json
import struct
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from change_events import (
    ChangeEvent,
    CodecError,
    Column,
    Op,
    TableSchema,
    Watermark,
    decode,
    encode_events,
    encode_watermark,
    format_lsn,
    parse_lsn,
)
from change_events.wire import UNCHANGED, EncodedChange, encode_frame, encode_row, row_values

ORDER = TableSchema(
    "public.sales_order",
    (
        Column("sales_order_id", "integer", 23, -1, True),
        Column("unit_price", "numeric(10,2)", 1700, 655366),
        Column("agreed_delivery_date", "text", 25),
        Column("notes", "text", 25),
    ),
)
COMPOSITE = TableSchema(
    "public.line",
    (
        Column("order_id", "integer", 23, -1, True),
        Column("line_no", "integer", 23, -1, True),
        Column("qty", "bigint", 20),
    ),
)
COMMIT = datetime(2024, 11, 15, 14, 40, 10, 188000, tzinfo=timezone.utc)

text_values = st.one_of(st.none(), st.text())


def _event(op, seq, after=None, before=None, unchanged=(), schema=ORDER, key=None):
    key = key or {"sales_order_id": "1"}
    return ChangeEvent(
        schema,
        op,
        lsn=0x16B3748,
        seq=seq,
        xid=767,
        commit_ts=COMMIT,
        key=key,
        after=after,
        before=before,
        unchanged=unchanged,
    )


def test_every_kind_of_event_round_trips():
    events = [
        _event(
            Op.SNAPSHOT,
            0,
            after={"sales_order_id": "1", "unit_price": "2.50", "agreed_delivery_date": "2024-11-20", "notes": None},
        ),
        _event(
            Op.INSERT,
            1,
            after={
                "sales_order_id": "1",
                "unit_price": "3.99",
                "agreed_delivery_date": "2024-11-21",
                "notes": 'é\n"x"',
            },
        ),
        _event(
            Op.UPDATE,
            2,
            after={"sales_order_id": "1", "unit_price": "4.00", "agreed_delivery_date": "2024-12-31"},
            unchanged=("notes",),
        ),
        _event(Op.DELETE, 3, before={"sales_order_id": "1"}),
        _event(
            Op.DELETE,
            4,
            before={"sales_order_id": "1", "unit_price": "4.00", "agreed_delivery_date": "2024-12-31", "notes": None},
        ),
        ChangeEvent(ORDER, Op.TRUNCATE, lsn=0x16B3800, seq=0, xid=768, commit_ts=COMMIT, key={}),
        _event(
            Op.INSERT,
            5,
            schema=COMPOSITE,
            key={"order_id": "7", "line_no": "2"},
            after={"order_id": "7", "line_no": "2", "qty": "9223372036854775807"},
        ),
    ]
    assert decode(encode_events(events)).events == tuple(events)


def test_unchanged_toast_column_is_absent_not_null():
    event = _event(
        Op.UPDATE,
        1,
        after={"sales_order_id": "1", "unit_price": "1.00", "agreed_delivery_date": "2024-01-01"},
        unchanged=("notes",),
    )
    (decoded,) = decode(encode_events([event])).events
    assert "notes" not in decoded.after
    assert decoded.unchanged == ("notes",)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(text_values, text_values, text_values), min_size=1, max_size=40),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**32 - 1),
)
def test_arbitrary_text_values_survive(rows, lsn, xid):
    events = [
        ChangeEvent(
            ORDER,
            Op.INSERT,
            lsn=lsn,
            seq=i,
            xid=xid,
            commit_ts=COMMIT,
            key={"sales_order_id": str(i)},
            after={"sales_order_id": str(i), "unit_price": a, "agreed_delivery_date": b, "notes": c},
        )
        for i, (a, b, c) in enumerate(rows)
    ]
    assert decode(encode_events(events)).events == tuple(events)


def test_big_batches_are_compressed():
    events = [
        _event(
            Op.INSERT,
            i,
            after={
                "sales_order_id": str(i),
                "unit_price": "2.00",
                "agreed_delivery_date": "2024-11-20",
                "notes": "same text " * 5,
            },
        )
        for i in range(1000)
    ]
    record = encode_events(events)
    assert record[4] == 1  # zstd
    assert len(record) < len(str([e.after for e in events])) / 5


def test_watermark_round_trips():
    marker = Watermark(lsn=2**40 + 5, emitted_at=COMMIT)
    decoded = decode(encode_watermark(marker))
    assert decoded.watermark == marker and decoded.watermark.emitted_at == COMMIT
    assert decoded.events == ()


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"", "shorter than"),
        (b"XX" + bytes(7), "not a totes-cdc record"),
        (struct.pack(">2sBBBI", b"TC", 99, 1, 0, 2) + b"{}", "newer than"),
        (struct.pack(">2sBBBI", b"TC", 2, 1, 7, 2) + b"{}", "unknown compression"),
        (struct.pack(">2sBBBI", b"TC", 2, 1, 1, 100) + b"not zstd at all", "corrupt"),
        (struct.pack(">2sBBBI", b"TC", 2, 1, 0, 5) + b"{oops", "malformed"),
        (struct.pack(">2sBBBI", b"TC", 2, 1, 0, 2) + b"{}", "malformed"),
        (struct.pack(">2sBBBI", b"TC", 2, 9, 0, 2) + b"{}", "unknown record kind"),
    ],
)
def test_unreadable_records_raise_codec_error_with_a_reason(record, reason):
    with pytest.raises(CodecError, match=reason):
        decode(record)


def _v2_body(frame: bytes, schema_index: int = 0) -> bytes:
    head = b'[["public.sales_order",[["sales_order_id","integer",23,-1,true]]]]'
    body = struct.pack(">I", len(head)) + head + struct.pack(">IHI", 1, schema_index, len(frame)) + frame
    return struct.pack(">2sBBBI", b"TC", 2, 1, 0, len(body)) + body


@pytest.mark.parametrize(
    ("frame", "schema_index", "reason"),
    [
        (b"c" + bytes(10), 0, "shorter than its header"),
        (struct.pack(">cQIqqB", b"x", 1, 0, -1, 0, 0), 0, "unknown op"),
        (struct.pack(">cQIqqB", b"c", 1, 0, -1, 0, 1) + struct.pack(">h", 1) + b"t\x00\x00\x00\x09ab", 0, "runs past"),
        (struct.pack(">cQIqqB", b"c", 1, 0, -1, 0, 1) + struct.pack(">h", 2) + b"nn", 0, "2 values for 1 columns"),
        (struct.pack(">cQIqqB", b"c", 1, 0, -1, 0, 1) + struct.pack(">h", 1) + b"q", 0, "unknown value kind"),
        (struct.pack(">cQIqqB", b"c", 1, 0, -1, 0, 1) + struct.pack(">h", 1) + b"n!", 0, "left over"),
        (struct.pack(">cQIqqB", b"c", 1, 0, -1, 0, 0), 0, "without a row"),
        (struct.pack(">cQIqqB", b"c", 1, 0, -1, 0, 1) + struct.pack(">h", 1) + b"n", 3, "IndexError"),
    ],
)
def test_malformed_event_frames_raise_codec_error_with_a_reason(frame, schema_index, reason):
    with pytest.raises(CodecError, match=reason):
        decode(_v2_body(frame, schema_index))


def test_version_1_records_are_refused_with_a_reason():
    """v1 was written only before the first deployment; such a record is a dead letter that
    says why, never events read wrongly."""
    body = json.dumps(
        {
            "s": [["public.sales_order", [["sales_order_id", "integer", 23, -1, True]]]],
            "e": [[0, "d", 8, 0, 769, None, ["1"], None, 1, ["1"], []]],
        }
    ).encode()
    record = struct.pack(">2sBBBI", b"TC", 1, 1, 0, len(body)) + body
    with pytest.raises(CodecError, match="format v1 is no longer read"):
        decode(record)


def test_an_encoded_change_is_the_event_it_holds():
    event = _event(
        Op.UPDATE,
        2,
        after={"sales_order_id": "1", "unit_price": "4.00", "agreed_delivery_date": "2024-12-31"},
        unchanged=("notes",),
    )
    encoded = EncodedChange(ORDER, event.lsn, event.route_hash, encode_frame(event))
    assert encoded == event and event == encoded and encoded.partition_key == "public.sales_order/1"
    assert (encoded.op, encoded.seq, encoded.key, encoded.unchanged) == (event.op, event.seq, event.key, ("notes",))
    assert decode(encode_events([encoded, event])).events == (event, event)
    assert row_values(encode_row(["1", None, UNCHANGED, "x"]), 0, (0, 2, 3)) == ("1", UNCHANGED, "x")


def test_lsn_text_form():
    assert format_lsn(0x16B3748) == "0/16B3748"
    assert parse_lsn("1/0") == 2**32
    assert parse_lsn(format_lsn(2**63 + 12345)) == 2**63 + 12345
    with pytest.raises(ValueError):
        parse_lsn("16B3748")
