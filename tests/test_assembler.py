"""The assembler's two paths give the same events: `encoded()` copies pgoutput's row bytes
into wire frames, `feed()` decodes them into dicts; on real server bytes they must agree
event for event, and so must the records each becomes."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_reader import pgoutput
from cdc_reader.assembler import Assembler
from change_events import ChangeEvent, decode, encode_events
from change_events.wire import EncodedChange
from tests.pgoutput_capture import PgoutputCapture


def _assembler() -> Assembler:
    return Assembler(lambda oid, typmod: f"type {oid}/{typmod}", lambda schema, table: ("id",))


def both_paths(payloads: list[bytes]) -> tuple[list[ChangeEvent], list[EncodedChange | ChangeEvent]]:
    """Events of `payloads` through feed() alone, and through encoded() where it applies."""
    slow, fast = _assembler(), _assembler()
    decoded: list[ChangeEvent] = []
    mixed: list = []
    for payload in payloads:
        decoded.extend(e for e in slow.feed(pgoutput.decode(payload)) if isinstance(e, ChangeEvent))
        change = fast.encoded(payload)
        if change is not None:
            mixed.append(change)
        else:
            mixed.extend(e for e in fast.feed(pgoutput.decode(payload)) if isinstance(e, ChangeEvent))
    return decoded, mixed


def assert_same(decoded: list[ChangeEvent], mixed: list) -> None:
    assert len(decoded) == len(mixed)
    for expected, got in zip(decoded, mixed):
        assert got == expected
        assert got.partition_key == expected.partition_key
        assert got.route_hash == expected.route_hash
    assert decode(encode_events(mixed)).events == tuple(decoded)


@pytest.fixture
def cap(totesys_dsn):
    with PgoutputCapture(totesys_dsn) as capture:
        yield capture


def test_fast_path_equals_decoding_on_every_kind_of_row_change(cap):
    big = secrets.token_hex(6000)  # stored out of line: unchanged TOAST in later updates
    for statement, params in [
        ("CREATE TABLE fast (id integer PRIMARY KEY, big text, note text, price numeric(10,2), "
         "seen timestamp(3), tags text[], doc jsonb)", None),
        ("INSERT INTO fast VALUES (1, %s, 'a', 1.50, '2024-11-15 14:40:10.188', '{x,\"y z\"}', '{\"k\": [1]}')", (big,)),
        ("INSERT INTO fast (id) VALUES (2)", None),
        ("UPDATE fast SET note = 'é\n\"quoted\"' WHERE id = 1", None),  # big unchanged
        ("UPDATE fast SET id = 3 WHERE id = 2", None),  # key change: old key sent, slow path
        ("DELETE FROM fast WHERE id = 3", None),
        ("ALTER TABLE fast REPLICA IDENTITY FULL", None),
        ("UPDATE fast SET note = NULL WHERE id = 1", None),  # old row sent, slow path
        ("DELETE FROM fast WHERE id = 1", None),
        ("CREATE TABLE pairs (a integer, b text, n integer, PRIMARY KEY (a, b))", None),
        ("INSERT INTO pairs VALUES (1, 'x', 1), (1, 'y', NULL)", None),
        ("UPDATE pairs SET n = 5", None),
        ("DELETE FROM pairs WHERE b = 'x'", None),
        ("CREATE TABLE keyless (v text)", None),
        ("INSERT INTO keyless VALUES ('only inserts are published without a key')", None),
        ("ALTER TABLE pairs ADD COLUMN extra text DEFAULT 'added'", None),
        ("INSERT INTO pairs VALUES (2, 'z', 3)", None),
        ("TRUNCATE pairs", None),
    ]:
        cap.execute(statement, params)
    decoded, mixed = both_paths(cap.changes())

    assert sum(isinstance(e, EncodedChange) for e in mixed) >= 10  # the fast path did the bulk
    assert any(e.unchanged == ("big",) for e in decoded)
    assert_same(decoded, mixed)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",),
                                                                      blacklist_characters="\x00"))),
                          st.one_of(st.none(), st.integers(-2**31, 2**31 - 1))),
                min_size=1, max_size=20))
def test_fast_path_equals_decoding_for_arbitrary_values(prop_cap, rows):
    for n, (text, number) in enumerate(rows):
        prop_cap.execute("INSERT INTO prop_fast VALUES (%s, %s, %s)", (n, text, number))
    prop_cap.execute("UPDATE prop_fast SET t = coalesce(t, '') || '!'")
    prop_cap.execute("DELETE FROM prop_fast")
    payloads = prop_cap.changes()
    decoded, mixed = both_paths(_with_relations(prop_cap, payloads))
    assert len(decoded) == 3 * len(rows)
    assert_same(decoded, mixed)


@pytest.fixture
def prop_cap(cap):
    cap.execute("CREATE TABLE prop_fast (id integer PRIMARY KEY, t text, i integer)")
    cap.relations = []
    return cap


def _with_relations(cap, payloads: list[bytes]) -> list[bytes]:
    """pgoutput sends a Relation once per session: keep the first, replay it before later batches."""
    cap.relations.extend(p for p in payloads if p[:1] == b"R")
    return [*cap.relations[:1], *(p for p in payloads if p[:1] != b"R")]
