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
from cdc_reader.personal_data import NO_POLICY, Policy, keyed_hash, parse
from change_events import ChangeEvent, decode, encode_events
from change_events.wire import EncodedChange
from tests.pgoutput_capture import PgoutputCapture


def _assembler(policy: Policy = NO_POLICY) -> Assembler:
    return Assembler(
        lambda oid, typmod: "text" if oid == 25 else f"type {oid}/{typmod}",
        lambda schema, table: ("id",),
        policy=policy,
    )


def both_paths(
    payloads: list[bytes], policy: Policy = NO_POLICY
) -> tuple[list[ChangeEvent], list[EncodedChange | ChangeEvent]]:
    """Events of `payloads` through feed() alone, and through encoded() where it applies."""
    slow, fast = _assembler(policy), _assembler(policy)
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
        (
            "CREATE TABLE fast (id integer PRIMARY KEY, big text, note text, price numeric(10,2), "
            "seen timestamp(3), tags text[], doc jsonb)",
            None,
        ),
        (
            "INSERT INTO fast VALUES (1, %s, 'a', 1.50, '2024-11-15 14:40:10.188', '{x,\"y z\"}', '{\"k\": [1]}')",
            (big,),
        ),
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


def test_a_policy_rewrites_both_paths_alike_and_no_raw_value_leaves(cap):
    key = b"assembler-test-key-0123456789abc"
    policy = parse({"pii.email": "hash", "pii.phone": "mask:last4", "pii.secret": "drop"}, key, defaults={})
    for statement in [
        "CREATE TABLE pii (id integer PRIMARY KEY, email text, phone text, secret text, n integer)",
        "INSERT INTO pii VALUES (1, 'ann@x.example', '0161 496001', 'sesame-1', 1), (2, NULL, NULL, NULL, 2)",
        "UPDATE pii SET n = 5, email = 'bob@x.example'",
        "UPDATE pii SET id = 3 WHERE id = 2",  # old key: slow path
        "ALTER TABLE pii REPLICA IDENTITY FULL",
        "UPDATE pii SET phone = '0161 496002' WHERE id = 1",  # old row: slow path
        "DELETE FROM pii",  # old row, fast path
        "CREATE TABLE plain (id integer PRIMARY KEY, email text)",
        "INSERT INTO plain VALUES (1, 'ann@x.example')",
    ]:
        cap.execute(statement)
    decoded, mixed = both_paths(cap.changes(), policy)
    assert_same(decoded, mixed)
    assert sum(isinstance(e, EncodedChange) for e in mixed) >= 5
    pii = [e for e in mixed if e.table == "public.pii"]
    assert all(e.schema.column_names == ("id", "email", "phone", "n") for e in pii)
    frames = b"".join(e.frame for e in mixed if isinstance(e, EncodedChange) and e.table == "public.pii")
    records = encode_events([e for e in mixed if e.table == "public.pii"])
    for raw in (b"ann@x.example", b"bob@x.example", b"0161 496001", b"0161 496002", b"sesame-1", b"496"):
        assert raw not in frames and raw not in decode_all(records)
    first = next(e for e in pii if e.op.value == "c")
    assert first.after == {"id": "1", "email": keyed_hash(key, "ann@x.example"), "phone": "***6001", "n": "1"}
    assert [e.after for e in mixed if e.table == "public.plain"] == [{"id": "1", "email": "ann@x.example"}]


def decode_all(record: bytes) -> bytes:
    """Every text of every event a record holds, as bytes to search."""
    texts = []
    for event in decode(record).events:
        for row in (event.after or {}, event.before or {}):
            texts += [str(v) for v in row.values()]
    return "\n".join(texts).encode()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))),
            st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
        ),
        min_size=1,
        max_size=20,
    )
)
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
