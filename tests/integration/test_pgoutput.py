"""The pgoutput decoder, and the values it carries as the lake types them, against bytes from
a real server.

Most tests run SQL on a fresh totesys database, capture the pgoutput messages the server
emits for it (tests/pgoutput_capture.py), decode them and assemble them into change events as
the reader does (`cdc_reader.assembler`), type the values as the lake does
(`lake.arrow_types`), and compare with what was written: here every type and property-based
rows; messages, TOAST, transactions and damaged bytes in test_pgoutput_messages.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_reader.pgoutput import Relation, Truncate, Type
from tests.pgoutput_helpers import EVERY_TYPE_DDL, COLUMNS, LAKE_TEXT, every_type_row, INSERT_EVERY, UTC, Changes, same


# -- every type --------------------------------------------------------------------------------


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
