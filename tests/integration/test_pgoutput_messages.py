"""The pgoutput decoder against a real server: TOAST and replica identity, schema changes,
truncate, logical messages, transactions, the real totesys tables, the replication connection,
and damaged byte strings."""

from __future__ import annotations

import secrets
from datetime import datetime
from decimal import Decimal

import psycopg2
import psycopg2.extras
import pytest

from cdc_reader import pgoutput
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
    Update,
    decode,
    parse_lsn,
)
from totesys.schema import TABLES
from tests.pgoutput_helpers import EVERY_TYPE_DDL, COLUMNS, every_type_row, INSERT_EVERY, UTC, Row, Changes


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
