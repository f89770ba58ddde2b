"""The pgoutput decoder, and the values it carries as the lake types them, against bytes from
a real server.

Most tests run SQL on a fresh totesys database, capture the pgoutput messages the server
emits for it (tests/pgoutput_capture.py), decode them and assemble them into change events as
the reader does (`cdc_reader.assembler`), type the values as the lake does
(`lake.arrow_types`), and compare with what was written. The last part feeds hand-built and
damaged byte strings to the decoder.
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone

import pytest

from cdc_reader import pgoutput
from cdc_reader.pgoutput import (
    NULL,
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgoutputError,
    Relation,
    Truncate,
    Type,
    Update,
    decode,
    format_lsn,
    parse_lsn,
    pg_timestamp,
)

UTC = timezone.utc


# -- hand-built and damaged messages ----------------------------------------------------------


def pg_ts(value: datetime) -> int:
    return (value - pgoutput.PG_EPOCH) // timedelta(microseconds=1)


def test_every_message_kind_from_hand_built_bytes():
    ts = datetime(2025, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
    t = pg_ts(ts)
    cases = [
        (b"B" + struct.pack(">QqI", 0x16B374D848, t, 4000000000), Begin(0x16B374D848, ts, 4000000000)),
        (b"C" + struct.pack(">BQQq", 0, 10, 20, t), Commit(0, 10, 20, ts)),
        (b"O" + struct.pack(">Q", 99) + b"origin-1\0", Origin(99, "origin-1")),
        (b"Y" + struct.pack(">I", 16500) + b"public\0mood\0", Type(16500, "public", "mood")),
        (
            b"R"
            + struct.pack(">I", 16400)
            + b"sch\0tbl\0i"
            + struct.pack(">h", 2)
            + b"\x01id\0"
            + struct.pack(">Ii", 23, -1)
            + b"\x00n\0"
            + struct.pack(">Ii", 1700, 655366),
            Relation(16400, "sch", "tbl", "i", (Column(1, "id", 23, -1), Column(0, "n", 1700, 655366))),
        ),
        (
            b"I"
            + struct.pack(">I", 16400)
            + b"N"
            + struct.pack(">h", 4)
            + b"t"
            + struct.pack(">i", 2)
            + b"42"
            + b"n"
            + b"u"
            + b"b"
            + struct.pack(">i", 0),
            Insert(16400, (("t", b"42"), NULL, UNCHANGED, ("b", b""))),
        ),
        (
            b"U" + struct.pack(">I", 7) + b"O" + struct.pack(">h", 1) + b"n" + b"N" + struct.pack(">h", 1) + b"u",
            Update(7, (NULL,), "O", (UNCHANGED,)),
        ),
        (b"U" + struct.pack(">I", 7) + b"N" + struct.pack(">h", 0), Update(7, None, None, ())),
        (
            b"D" + struct.pack(">I", 7) + b"K" + struct.pack(">h", 1) + b"t" + struct.pack(">i", 1) + b"9",
            Delete(7, (("t", b"9"),), "K"),
        ),
        (b"T" + struct.pack(">IBII", 2, 3, 5, 6), Truncate((5, 6), True, True)),
        (b"M" + struct.pack(">BQ", 1, 77) + b"p\0" + struct.pack(">i", 3) + b"abc", Message(True, 77, "p", b"abc")),
    ]
    for payload, expected in cases:
        assert decode(payload) == expected, payload
        assert decode(memoryview(payload)) == expected


def test_lsn_and_timestamp_helpers():
    assert format_lsn(0x16B374D848) == "16/B374D848"
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert parse_lsn(format_lsn(2**64 - 1)) == 2**64 - 1
    assert pg_timestamp(0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert pg_timestamp(-1) == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_lsn("nope")


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"", "empty"),
        (b"Z\x00\x01", "b'Z'"),
        (b"\xff", "0xff"),
        (b"S" + struct.pack(">IB", 5, 1), "unknown pgoutput message type b'S'"),  # protocol v2's
        (b"B" + b"\x00" * 10, "truncated"),
        (b"B" + b"\x00" * 21, "trailing"),
        (b"I" + struct.pack(">I", 1) + b"X" + struct.pack(">h", 0), "expected 'N'"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"q", "kind b'q'"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", 9) + b"ab", "runs past"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", -5), "runs past"),
        (b"D" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 0), "expected 'K' or 'O'"),
        (b"Y" + struct.pack(">I", 1) + b"no-terminator", "malformed"),
        (b"Y" + struct.pack(">I", 1) + b"\xff\xfe\0x\0", "malformed"),
        (b"M" + struct.pack(">BQ", 1, 1) + b"p\0" + struct.pack(">i", 10) + b"abc", "runs past"),
    ],
)
def test_malformed_input_raises_pgoutput_error(payload, fragment):
    with pytest.raises(PgoutputError) as err:
        decode(payload)
    assert fragment in str(err.value)
