"""Shared by the pgoutput tests: decoding captured messages, assembling them into change events,
typing values as the lake does, and a capture of a fresh totesys database (the `cap` fixture)."""

from __future__ import annotations

import math
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import NamedTuple

import pytest

from cdc_reader.assembler import Assembler
from cdc_reader.catalog import TypeNames
from cdc_reader.pgoutput import Delete, Insert, Update, decode
from change_events import ChangeEvent
from lake.arrow_types import convert_column
from tests.pgoutput_capture import PgoutputCapture


TRICKY_TEXTS = [
    "plain",
    None,
    "with,comma",
    'with "quotes"',
    "back\\slash",
    "NULL",
    "",
    " spaced ",
    "{braces}",
    "ünï",
    "new\nline",
]
"""Text array elements that need quoting or escaping in an array literal (sent and read back as they are)."""


UTC = timezone.utc


# -- helpers ---------------------------------------------------------------------------------


def decode_all(payloads: list[bytes]) -> list:
    return [decode(p) for p in payloads]


class Row(NamedTuple):
    """A change's row as the lake types it, and the columns sent as unchanged TOAST."""

    values: dict
    unchanged: list


def typed(event: ChangeEvent, row: dict) -> dict:
    """The lake's values of `row` (text values of `event`'s table), column by column."""
    types = {c.name: c.type_name for c in event.schema.columns}
    return {name: convert_column([text], types[name], name).to_pylist()[0] for name, text in row.items()}


class Changes:
    """Decoded messages of one capture, with the typed rows of every change the reader's
    assembler makes of them. `type_names` names column types (`cdc_reader.catalog`)."""

    def __init__(self, payloads: list[bytes], type_names: TypeNames) -> None:
        self.payloads = payloads
        self.messages = decode_all(payloads)
        assembler = Assembler(type_names, lambda schema, table: ("id",))
        self.rows: list[tuple[str, str, object, object]] = []  # (op, table, new row, old)
        for m in self.messages:
            events = [e for e in assembler.feed(m) if isinstance(e, ChangeEvent)]
            if not isinstance(m, (Insert, Update, Delete)):
                continue
            (event,) = events
            table = event.table.partition(".")[2]
            new = None if event.after is None else Row(typed(event, event.after), list(event.unchanged))
            old = None
            kind = getattr(m, "old_kind", None)
            if kind == "K":
                old = typed(event, event.before)
            elif kind == "O":
                old = Row(typed(event, event.before), [])
            self.rows.append((event.op.value, table, new, old))

    def of_type(self, cls) -> list:
        return [m for m in self.messages if isinstance(m, cls)]


def same(a, b) -> bool:
    """Equality that also holds for NaN and checks Decimal scale and value types."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, Decimal):
        if a.is_nan():
            return b.is_nan()
        return a == b and a.as_tuple().exponent == b.as_tuple().exponent
    if isinstance(a, (datetime, time)) and a.tzinfo is not None:
        return a == b and a.utcoffset() == b.utcoffset()
    return a == b


@pytest.fixture
def cap(totesys_dsn):
    with PgoutputCapture(totesys_dsn) as capture:
        capture.type_names = TypeNames(capture.conn)
        yield capture


# -- a table of every type ---------------------------------------------------------------------

EVERY_TYPE_DDL = """
CREATE TABLE every_type (
    id    integer PRIMARY KEY,
    i2    int2, i4 int4, i8 int8,
    n102  numeric(10,2), n numeric,
    f4    float4, f8 float8,
    t     text, vc varchar(3), bp char(5), bo boolean,
    ts3   timestamp(3), ts timestamp, tstz timestamptz, d date, tm time, tmtz timetz,
    u     uuid, j json, jb jsonb, by bytea,
    ia    int[], ta text[], na numeric[], iaa int[][], da date[],
    tt    "TransactionType", pt "PaymentTypeName",
    iv    interval, nm name, ch "char", o oid, ip inet
)
"""

COLUMNS = (
    "id i2 i4 i8 n102 n f4 f8 t vc bp bo ts3 ts tstz d tm tmtz u j jb by ia ta na iaa da tt pt iv nm ch o ip"
).split()

TRICKY_TEXT = 'it\'s a "quoted" \\ back\\\\slash,\nnew line\ttab {brace} ünïcødé 🎉'
JSON_TEXT = '{"b": 1,   "a": [1, 2.50], "s": "x\\"y"}'
ROW_UUID = uuid.UUID("6f1f8ac2-4f5e-4c43-9d1b-3f1a2b3c4d5e")


# Columns the lake keeps as the server's text (lake/arrow_types): their expected value is
# what the server itself renders for the stored row (`column::text`).
LAKE_TEXT = {"n", "tm", "tmtz", "u", "ia", "ta", "na", "iaa", "da"}


def every_type_row():
    """(value to insert, value expected back) for every column; for the LAKE_TEXT columns
    the value psycopg2 reads, whose text form the lake keeps."""
    tz = timezone(timedelta(hours=5, minutes=30))
    return {
        "id": (1, 1),
        "i2": (-32768, -32768),
        "i4": (2147483647, 2147483647),
        "i8": (-9223372036854775808, -9223372036854775808),
        "n102": (Decimal("12345678.9"), Decimal("12345678.90")),
        "n": (
            Decimal("-123456789012345678901234567890.123456789012345678901234567890"),
            Decimal("-123456789012345678901234567890.123456789012345678901234567890"),
        ),
        "f4": (1.5, 1.5),
        "f8": (0.1, 0.1),
        "t": (TRICKY_TEXT, TRICKY_TEXT),
        "vc": ("abc", "abc"),
        "bp": ("ab", "ab   "),
        "bo": (True, True),
        "ts3": (datetime(2024, 5, 1, 12, 34, 56, 789000), datetime(2024, 5, 1, 12, 34, 56, 789000)),
        "ts": (datetime(2024, 5, 1, 12, 34, 56, 123456), datetime(2024, 5, 1, 12, 34, 56, 123456)),
        "tstz": (
            datetime(2024, 5, 1, 12, 34, 56, 123456, tzinfo=tz),
            datetime(2024, 5, 1, 7, 4, 56, 123456, tzinfo=UTC),
        ),
        "d": (date(2024, 2, 29), date(2024, 2, 29)),
        "tm": (time(23, 59, 59, 999999), time(23, 59, 59, 999999)),
        "tmtz": ("10:11:12.5-03:30", time(10, 11, 12, 500000, tzinfo=timezone(-timedelta(hours=3, minutes=30)))),
        "u": (str(ROW_UUID), ROW_UUID),
        "j": (JSON_TEXT, JSON_TEXT),  # json keeps the exact text, spacing included
        "jb": ('{"b": 1,   "a": [1, 2.50]}', '{"a": [1, 2.50], "b": 1}'),
        "by": (bytes(range(256)), bytes(range(256))),
        "ia": ([1, None, -3], [1, None, -3]),
        "ta": (TRICKY_TEXTS, TRICKY_TEXTS),
        "na": (
            [Decimal("1.10"), None, Decimal("NaN"), Decimal("-0.001")],
            [Decimal("1.10"), None, Decimal("NaN"), Decimal("-0.001")],
        ),
        "iaa": ([[1, 2], [3, None]], [[1, 2], [3, None]]),
        "da": ([date(2024, 1, 31), None], [date(2024, 1, 31), None]),
        "tt": ("SALE", "SALE"),
        "pt": ("PURCHASE_REFUND", "PURCHASE_REFUND"),
        "iv": ("1 year 2 mons 3 days 04:05:06.5", "1 year 2 mons 3 days 04:05:06.5"),
        "nm": ("a_name", "a_name"),
        "ch": ("x", "x"),
        "o": (12345, 12345),
        "ip": ("192.168.0.1/24", "192.168.0.1/24"),
    }


CASTS = {
    "u": "::uuid",
    "tmtz": "::timetz",
    "ip": "::inet",
    "iv": "::interval",
    "tt": '::"TransactionType"',
    "pt": '::"PaymentTypeName"',
    "iaa": "::int[]",
    "ia": "::int[]",
    "na": "::numeric[]",
    "da": "::date[]",
    "ta": "::text[]",
}
INSERT_EVERY = "INSERT INTO every_type ({}) VALUES ({})".format(
    ", ".join(COLUMNS), ", ".join("%s" + CASTS.get(c, "") for c in COLUMNS)
)
