"""The pgoutput decoder, and the values it carries as the lake types them, against bytes from
a real server.

Most tests run SQL on a fresh totesys database, capture the pgoutput messages the server
emits for it (tests/pgoutput_capture.py), decode them and assemble them into change events as
the reader does (`cdc_reader.assembler`), type the values as the lake does
(`lake.arrow_types`), and compare with what was written. The last part feeds hand-built and
damaged byte strings to the decoder.
"""

from __future__ import annotations

import json
import math
import secrets
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import NamedTuple

import psycopg2
import psycopg2.extras
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_reader import pgoutput
from cdc_reader.assembler import Assembler
from cdc_reader.catalog import TypeNames
from cdc_reader.pgoutput import (
    NULL,
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    PgoutputError,
    Relation,
    Truncate,
    Type,
    Update,
    decode,
    parse_lsn,
)
from change_events import ChangeEvent
from lake.arrow_types import convert_column
from tests.pgoutput_capture import PgoutputCapture
from totesys.schema import TABLES

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


# -- every type --------------------------------------------------------------------------------

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
        "ta": (
            [
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
            ],
            [
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
            ],
        ),
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


def test_every_type_round_trips_through_insert_update_delete_truncate(cap):
    cap.execute(EVERY_TYPE_DDL)
    row = every_type_row()
    cap.execute(INSERT_EVERY, [row[c][0] for c in COLUMNS])
    with cap.conn.cursor() as cur:
        cur.execute("SELECT {} FROM every_type WHERE id = 1".format(", ".join(f"{c}::text" for c in sorted(LAKE_TEXT))))
        server_text = dict(zip(sorted(LAKE_TEXT), cur.fetchone()))
    cap.execute("INSERT INTO every_type (id) VALUES (2)")
    cap.execute("UPDATE every_type SET t = 'changed', i4 = NULL WHERE id = 1")
    cap.execute("DELETE FROM every_type WHERE id = 2")
    cap.execute("TRUNCATE every_type")
    changes = Changes(cap.changes(), cap.type_names)

    expected = {c: server_text[c] if c in LAKE_TEXT else row[c][1] for c in COLUMNS}
    ops = [(op, table) for op, table, _, _ in changes.rows]
    assert ops == [("c", "every_type"), ("c", "every_type"), ("u", "every_type"), ("d", "every_type")]

    inserted = changes.rows[0][2]
    assert inserted.unchanged == []
    assert list(inserted.values) == COLUMNS
    for column in COLUMNS:
        assert same(inserted.values[column], expected[column]), (column, inserted.values[column], expected[column])

    nulls = changes.rows[1][2]
    assert nulls.values == {"id": 2, **{c: None for c in COLUMNS[1:]}}

    updated = changes.rows[2][2]
    assert updated.values["t"] == "changed" and updated.values["i4"] is None
    for column in set(COLUMNS) - {"t", "i4"}:
        assert same(updated.values[column], expected[column]), column
    assert changes.rows[2][3] is None  # key unchanged: no old tuple under REPLICA IDENTITY DEFAULT

    assert changes.rows[3][3] == {"id": 2}

    # The enum columns' types were announced with Type messages before the Relation.
    types = {t.name: t for t in changes.of_type(Type)}
    assert {"TransactionType", "PaymentTypeName"} <= set(types)
    relation = changes.of_type(Relation)[0]
    by_name = {c.name: c for c in relation.columns}
    assert by_name["tt"].type_oid == types["TransactionType"].type_oid
    assert by_name["n102"].type_modifier == ((10 << 16) | 2) + 4
    assert by_name["vc"].type_modifier == 3 + 4
    assert by_name["id"].is_key and not by_name["t"].is_key
    assert relation.key_columns == ("id",)
    (truncate,) = changes.of_type(Truncate)
    assert truncate.relation_ids == (relation.relation_id,)


# -- property-based round trips ---------------------------------------------------------------

PROP_DDL = """
CREATE TABLE prop (
    id serial PRIMARY KEY, i2 int2, i4 int4, i8 int8, n102 numeric(10,2), n numeric,
    f8 float8, t text, by bytea, ts3 timestamp(3), tstz timestamptz, d date, ta text[],
    ia int[], j json, bo boolean, u uuid
)
"""
PROP_COLUMNS = "i2 i4 i8 n102 n f8 t by ts3 tstz d ta ia j bo u".split()
PROP_INSERT = "INSERT INTO prop ({}) VALUES ({})".format(
    ", ".join(PROP_COLUMNS),
    ", ".join(
        {"ta": "%s::text[]", "ia": "%s::int[]", "n": "%s::numeric", "u": "%s::uuid"}.get(c, "%s") for c in PROP_COLUMNS
    ),
)


def prop_params(row: dict) -> list:
    # psycopg2 sends Decimal('Infinity') as NaN (numeric had no infinity before PG 14) and has
    # no UUID adapter unless registered globally: send both as text.
    return [str(row[c]) if c in ("n", "u") and row[c] is not None else row[c] for c in PROP_COLUMNS]


pg_text = st.text(
    alphabet=st.one_of(
        st.sampled_from("\"\\\n\r\t,{} 'NUL"), st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
    ),
    max_size=40,
)
arbitrary_numeric = st.one_of(
    st.builds(lambda i, s: Decimal(f"{i}E-{s}"), st.integers(-(10**40), 10**40), st.integers(0, 40)),
    st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")]),
)
milliseconds = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
)
aware = st.datetimes(
    min_value=datetime(2, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=9, minutes=30))]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | pg_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(pg_text, inner, max_size=3),
    max_leaves=6,
)
prop_rows = st.fixed_dictionaries(
    {
        "i2": st.integers(-(2**15), 2**15 - 1),
        "i4": st.integers(-(2**31), 2**31 - 1),
        "i8": st.integers(-(2**63), 2**63 - 1),
        "n102": st.decimals(
            min_value=Decimal("-99999999.99"),
            max_value=Decimal("99999999.99"),
            places=2,
            allow_nan=False,
            allow_infinity=False,
        ),
        "n": arbitrary_numeric,
        "f8": st.floats(),
        "t": pg_text,
        "by": st.binary(max_size=64),
        "ts3": milliseconds,
        "tstz": aware,
        "d": st.dates(),
        "ta": st.lists(st.none() | pg_text, max_size=5),
        "ia": st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=5),
        "j": json_values.map(json.dumps),
        "bo": st.booleans(),
        "u": st.uuids(),
    }
)
nullable_rows = st.tuples(prop_rows, st.sets(st.sampled_from(PROP_COLUMNS), max_size=3)).map(
    lambda pair: {k: (None if k in pair[1] else v) for k, v in pair[0].items()}
)


PROP_LAKE_TEXT = ("n", "ta", "ia", "u")  # kept as the server's text by the lake


def expected_prop(column: str, value):
    if value is None:
        return None
    if column == "n102":
        return value.quantize(Decimal("0.01"))
    if column == "tstz":
        return value.astimezone(UTC)
    return value


@pytest.fixture
def prop_capture(cap):
    cap.execute(PROP_DDL)
    cap.changes()  # drop the DDL's (empty) transaction
    return cap, cap.type_names


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(rows=st.lists(nullable_rows, min_size=1, max_size=8))
def test_property_values_round_trip_exactly(prop_capture, rows):
    cap, type_names = prop_capture
    cap.executemany(PROP_INSERT, [prop_params(row) for row in rows])
    changes = Changes(cap.changes(), type_names)
    inserted = [r for op, _, r, _ in changes.rows if op == "c"]
    assert len(inserted) == len(rows)
    with cap.conn.cursor() as cur:
        cur.execute(
            "SELECT id, {} FROM prop WHERE id = ANY(%s)".format(", ".join(f"{c}::text" for c in PROP_LAKE_TEXT)),
            ([r.values["id"] for r in inserted],),
        )
        server_text = {row[0]: dict(zip(PROP_LAKE_TEXT, row[1:])) for row in cur.fetchall()}
    for row, got in zip(rows, inserted):
        assert got.unchanged == []
        for column in PROP_COLUMNS:
            want = (
                server_text[got.values["id"]][column]
                if column in PROP_LAKE_TEXT
                else expected_prop(column, row[column])
            )
            assert same(got.values[column], want), (column, got.values[column], want)
        # The lake's text of a numeric is its exact value, scale included.
        assert same(None if got.values["n"] is None else Decimal(got.values["n"]), row["n"])


# -- TOAST and replica identity ---------------------------------------------------------------


def test_unchanged_toast_column_is_reported_never_null(cap):
    big = secrets.token_hex(6000)  # 12 kB of random text: stored out of line
    cap.execute("CREATE TABLE toasty (id integer PRIMARY KEY, big text, note text)")
    cap.execute("INSERT INTO toasty VALUES (1, %s, 'a')", (big,))
    cap.execute("UPDATE toasty SET note = 'b'")
    cap.execute("UPDATE toasty SET big = big || 'x', note = 'c'")
    cap.execute("ALTER TABLE toasty REPLICA IDENTITY FULL")
    cap.execute("UPDATE toasty SET note = 'd'")
    changes = Changes(cap.changes(), cap.type_names)
    insert, untouched, touched, full = [m for m in changes.messages if isinstance(m, (Insert, Update))]

    assert changes.rows[0][2].values == {"id": 1, "big": big, "note": "a"}

    assert untouched.new[1] == UNCHANGED
    row = changes.rows[1][2]
    assert row.unchanged == ["big"]
    assert row.values == {"id": 1, "note": "b"}  # absent, not None

    assert changes.rows[2][2].values == {"id": 1, "big": big + "x", "note": "c"}
    assert changes.rows[2][2].unchanged == []

    # Under REPLICA IDENTITY FULL the old row is complete, the new one still omits the value.
    assert full.old_kind == "O"
    old = changes.rows[3][3]
    assert old.values == {"id": 1, "big": big + "x", "note": "c"}
    assert changes.rows[3][2].unchanged == ["big"]
    assert changes.rows[3][2].values == {"id": 1, "note": "d"}


def test_replica_identity_default_sends_key_full_sends_old_row(cap):
    cap.execute("CREATE TABLE ident (id integer PRIMARY KEY, name text, qty integer)")
    cap.execute("INSERT INTO ident VALUES (1, 'one', 10), (2, 'two', 20), (3, 'three', 30)")
    cap.execute("UPDATE ident SET qty = 11 WHERE id = 1")
    cap.execute("UPDATE ident SET id = 4 WHERE id = 3")  # key change: old key is sent
    cap.execute("DELETE FROM ident WHERE id = 1")
    cap.execute("ALTER TABLE ident REPLICA IDENTITY FULL")
    cap.execute("UPDATE ident SET name = 'TWO' WHERE id = 2")
    cap.execute("DELETE FROM ident WHERE id = 2")
    changes = Changes(cap.changes(), cap.type_names)
    updates, deletes = changes.of_type(Update), changes.of_type(Delete)
    relations = changes.of_type(Relation)

    assert relations[0].replica_identity == "d"
    assert updates[0].old is None and updates[0].old_kind is None
    assert updates[1].old_kind == "K"
    assert updates[1].old == ((pgoutput.TEXT_KIND, b"3"), NULL, NULL)
    assert deletes[0].old_kind == "K"
    assert deletes[0].old == ((pgoutput.TEXT_KIND, b"1"), NULL, NULL)

    assert relations[-1].replica_identity == "f"
    assert updates[2].old_kind == "O"
    assert deletes[1].old_kind == "O"

    ops = [
        (op, new.values if new else None, old.values if isinstance(old, Row) else old)
        for op, _, new, old in changes.rows
    ]
    assert ops == [
        ("c", {"id": 1, "name": "one", "qty": 10}, None),
        ("c", {"id": 2, "name": "two", "qty": 20}, None),
        ("c", {"id": 3, "name": "three", "qty": 30}, None),
        ("u", {"id": 1, "name": "one", "qty": 11}, None),
        ("u", {"id": 4, "name": "three", "qty": 30}, {"id": 3}),
        ("d", None, {"id": 1}),
        ("u", {"id": 2, "name": "TWO", "qty": 20}, {"id": 2, "name": "two", "qty": 20}),
        ("d", None, {"id": 2, "name": "TWO", "qty": 20}),
    ]


# -- schema changes, truncate, messages, transactions -----------------------------------------


def test_added_column_arrives_as_new_relation_message(cap):
    cap.execute("CREATE TABLE grows (id integer PRIMARY KEY, a text)")
    cap.execute("INSERT INTO grows VALUES (1, 'x')")
    cap.execute("ALTER TABLE grows ADD COLUMN b numeric(10,2) DEFAULT 7.5")
    cap.execute("INSERT INTO grows VALUES (2, 'y', 1.25)")
    changes = Changes(cap.changes(), cap.type_names)
    relations = changes.of_type(Relation)
    assert [tuple(c.name for c in r.columns) for r in relations] == [("id", "a"), ("id", "a", "b")]
    assert relations[0].relation_id == relations[1].relation_id
    kinds = [type(m).__name__ for m in changes.messages if not isinstance(m, (Begin, Commit))]
    assert kinds == ["Relation", "Insert", "Relation", "Insert"]
    assert [r[2].values for r in changes.rows] == [{"id": 1, "a": "x"}, {"id": 2, "a": "y", "b": Decimal("1.25")}]


def test_truncate_carries_relation_ids_and_options(cap):
    cap.execute("CREATE TABLE parent (id integer PRIMARY KEY)")
    cap.execute("CREATE TABLE child (id serial PRIMARY KEY, parent_id integer REFERENCES parent)")
    cap.execute("CREATE TABLE lone (id integer PRIMARY KEY)")
    cap.execute("INSERT INTO parent VALUES (1); INSERT INTO child (parent_id) VALUES (1)")
    cap.execute("INSERT INTO lone VALUES (1)")
    cap.execute("TRUNCATE parent, lone RESTART IDENTITY CASCADE")
    cap.execute("TRUNCATE lone")
    changes = Changes(cap.changes(), cap.type_names)
    ids = {r.name: r.relation_id for r in changes.of_type(Relation)}
    first, second = changes.of_type(Truncate)
    assert set(first.relation_ids) == {ids["parent"], ids["child"], ids["lone"]}
    assert first.cascade and first.restart_identity
    assert second.relation_ids == (ids["lone"],)
    assert not second.cascade and not second.restart_identity


def test_logical_decoding_messages_arrive(cap):
    cap.execute("SELECT pg_logical_emit_message(true, 'totes', 'x')")
    # Non-transactional messages are not flushed to WAL on their own: without `flush` (PG 17+)
    # a reader would only see one once some later commit flushes the WAL past it.
    cap.execute("SELECT pg_logical_emit_message(false, 'totes-heartbeat', '\\x00ff'::bytea, true)")
    changes = Changes(cap.changes(), cap.type_names)
    transactional, immediate = changes.of_type(Message)
    assert transactional.transactional and transactional.prefix == "totes"
    assert transactional.content == b"x"
    assert not immediate.transactional and immediate.prefix == "totes-heartbeat"
    assert immediate.content == b"\x00\xff"
    assert 0 < transactional.lsn < immediate.lsn
    # A transactional message sits inside its Begin/Commit, a non-transactional one outside.
    kinds = [type(m).__name__ for m in changes.messages]
    assert kinds == ["Begin", "Message", "Commit", "Message"]


def test_begin_and_commit_match_the_transaction(cap):
    cap.execute("CREATE TABLE tx (id integer PRIMARY KEY)")
    cap.changes()
    with cap.conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO tx VALUES (1), (2)")
        cur.execute("SELECT txid_current() % 4294967296, now()")
        xid, started = cur.fetchone()
        cur.execute("COMMIT")
        cur.execute("SELECT pg_current_wal_lsn()::text, clock_timestamp()")
        wal_after, after = cur.fetchone()
    changes = Changes(cap.changes(), cap.type_names)
    (begin,), (commit,) = changes.of_type(Begin), changes.of_type(Commit)
    assert [type(m) for m in changes.messages] == [Begin, Relation, Insert, Insert, Commit]
    assert begin.xid == xid
    assert begin.final_lsn == commit.commit_lsn < commit.end_lsn <= parse_lsn(wal_after)
    assert begin.commit_ts == commit.commit_ts
    assert commit.commit_ts.tzinfo is UTC
    assert started <= commit.commit_ts <= after
    assert commit.flags == 0


def test_totesys_tables_round_trip_like_psycopg2_reads_them(cap):
    inserts = [
        (
            "INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name, logs) "
            "VALUES ('m1', 'abc', '2024-05-01 10:00:00.123456+02', 'init', NULL)"
        ),
        (
            "INSERT INTO address (address_line_1, address_line_2, district, city, postal_code, "
            "country, phone, created_at, last_updated) VALUES ('6826 Herzog Via', NULL, 'Avon', "
            "'New Patienceburgh', '28441', 'Turkey', '1803 637401', '2022-11-03 14:20:49.962', "
            "'2022-11-03 14:20:49.962')"
        ),
        (
            "INSERT INTO currency (currency_code, created_at, last_updated) VALUES "
            "('GBP', '2022-11-03 14:20:49.962', '2022-11-03 14:20:49.962')"
        ),
        (
            "INSERT INTO department (department_name, location, manager, last_updated) VALUES "
            "('Sales', 'Manchester', 'Richard Roma', '2022-11-03 14:20:49.962')"
        ),
        (
            "INSERT INTO design (design_name, file_location, file_name, last_updated) VALUES "
            "('Wooden', '/usr', 'wooden-20220717-npgz.json', '2022-11-03 14:20:49.962')"
        ),
        (
            "INSERT INTO staff (first_name, last_name, department_id, email_address, last_updated) "
            "VALUES ('Jeremie', 'Franey', 1, 'jeremie.franey@terrifictotes.com', now())"
        ),
        (
            "INSERT INTO counterparty (counterparty_legal_name, legal_address_id, commercial_contact, "
            "delivery_contact, last_updated) VALUES ('Fahey and Sons', 1, 'Micheal Toy', "
            "'Mrs. Lucy Runolfsdottir', '2022-11-03 14:20:51.563')"
        ),
        (
            "INSERT INTO payment_type (payment_type_name, last_updated) VALUES "
            "('SALES_RECEIPT', '2022-11-03 14:20:49.962')"
        ),
        (
            "INSERT INTO sales_order (last_updated, design_id, staff_id, counterparty_id, units_sold, "
            "unit_price, currency_id, agreed_delivery_date, agreed_payment_date, "
            "agreed_delivery_location_id) VALUES ('2022-11-03 14:20:52.186', 1, 1, 1, 84754, 2.43, "
            "1, '2022-11-10', '2022-11-03', 1)"
        ),
        (
            "INSERT INTO purchase_order (last_updated, staff_id, counterparty_id, item_code, "
            "item_quantity, item_unit_price, currency_id, agreed_delivery_date, agreed_payment_date, "
            "agreed_delivery_location_id) VALUES ('2022-11-03 14:20:52.187', 1, 1, 'ZDOI5EA', 371, "
            "361.39, 1, '2022-11-09', '2022-11-07', 1)"
        ),
        (
            'INSERT INTO "transaction" (transaction_type, sales_order_id, purchase_order_id, '
            "last_updated) VALUES ('PURCHASE', NULL, 1, '2022-11-03 14:20:52.186')"
        ),
        (
            "INSERT INTO payment (last_updated, transaction_id, counterparty_id, payment_amount, "
            "currency_id, payment_type_id, paid, payment_date, company_ac_number, "
            "counterparty_ac_number) VALUES ('2022-11-03 14:20:52.187', 1, 1, 552548.62, 1, 1, "
            "false, '2022-11-03', 67305075, 31622269)"
        ),
    ]
    cap.transaction((statement, None) for statement in inserts)
    changes = Changes(cap.changes(), cap.type_names)
    decoded = {table: row.values for op, table, row, _ in changes.rows}
    assert set(decoded) == set(TABLES) | {"_prisma_migrations"}
    with cap.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        for table in decoded:
            cur.execute(f'SELECT * FROM "{table}"')
            (stored,) = cur.fetchall()
            assert list(decoded[table]) == list(stored), table
            for column, want in stored.items():
                got = decoded[table][column]
                assert type(got) is type(want) and got == want, (table, column, got, want)
    assert decoded["sales_order"]["unit_price"].as_tuple().exponent == -2
    assert decoded["transaction"]["transaction_type"] == "PURCHASE"
    assert decoded["payment"]["paid"] is False
    assert decoded["address"]["created_at"] == datetime(2022, 11, 3, 14, 20, 49, 962000)
    assert decoded["_prisma_migrations"]["finished_at"] == datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=UTC)


# -- the replication connection --------------------------------------------------------------


def test_replication_connection_streams_the_same_bytes(cap):
    cap.execute("CREATE TABLE streamed (id integer PRIMARY KEY, t text)")
    cap.execute("INSERT INTO streamed VALUES (1, 'a'), (2, NULL)")
    cap.execute("SELECT pg_logical_emit_message(true, 'totes', 'wm')")
    cap.execute("DELETE FROM streamed")
    peeked = cap.peek()
    assert len(peeked) >= 10
    assert cap.stream(len(peeked)) == peeked
    assert cap.changes() == peeked  # peeking and streaming without confirming consumed nothing


def test_every_truncation_of_real_messages_is_rejected(cap):
    cap.execute(EVERY_TYPE_DDL)
    row = every_type_row()
    cap.execute(INSERT_EVERY, [row[c][0] for c in COLUMNS])
    cap.execute("ALTER TABLE every_type REPLICA IDENTITY FULL")
    cap.execute("UPDATE every_type SET i2 = 1")
    cap.execute("DELETE FROM every_type")
    cap.execute("TRUNCATE every_type")
    cap.execute("SELECT pg_logical_emit_message(false, 'totes', 'heartbeat', true)")
    payloads = cap.changes()
    assert {chr(p[0]) for p in payloads} >= set("BCRYIUDTM")
    for payload in payloads:
        decode(payload)
        for cut in range(len(payload)):
            with pytest.raises(PgoutputError):
                decode(payload[:cut])
        with pytest.raises(PgoutputError, match="trailing"):
            decode(payload + b"\0")
