"""The initial snapshot: COPY text parsed exactly, and read under the slot's exported snapshot
so that changes committed after the slot was created are not in it."""

from __future__ import annotations

import psycopg2
import psycopg2.extras
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_reader.catalog import read_table_schema
from cdc_reader.snapshot import parse_copy_line, read_snapshot
from cdc_reader.source_setup import SourceSetupError, create_slot, ensure_publication, slot_state
from change_events import Op
from totesys.schema import TABLES


@pytest.fixture
def conn(totesys_dsn):
    connection = psycopg2.connect(totesys_dsn)
    yield connection
    connection.close()


def _seed_static(cur):
    cur.execute("""
        INSERT INTO address (address_line_1, city, postal_code, country, phone, last_updated)
        VALUES ('1 Tote St', 'Leeds', 'LS1', 'UK', '0113 000000', now());
        INSERT INTO department (department_name, location, last_updated) VALUES ('Dispatch', 'Leds', now());
        INSERT INTO design (design_name, file_location, file_name, last_updated)
        SELECT 'Wooden', '/usr/' || g, 'wooden-' || g || '.json', now() FROM generate_series(1, 50) g;
    """)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
        ),
        min_size=1,
        max_size=20,
    )
)
def test_copy_text_parses_back_to_the_exact_values(admin_dsn, values):
    with psycopg2.connect(admin_dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t (i int, v text)")
        psycopg2.extras.execute_values(cur, "INSERT INTO t VALUES %s", list(enumerate(values)))
        lines = []

        class Sink:
            def write(self, data):
                lines.append(data)

        cur.copy_expert("COPY (SELECT i, v FROM t ORDER BY i) TO STDOUT", Sink())
        text = "".join(d.decode() if isinstance(d, bytes) else d for d in lines)
        parsed = [parse_copy_line(line) for line in text.split("\n")[:-1]]
        assert [row[1] for row in parsed] == values
        conn.rollback()


def test_schema_from_catalog_has_key_and_exact_types(conn):
    schema = read_table_schema(conn, "public", "sales_order")
    assert schema.table == "public.sales_order"
    assert schema.key_names == ("sales_order_id",)
    types = {c.name: c.type_name for c in schema.columns}
    assert types["unit_price"] == "numeric(10,2)"
    assert types["created_at"] == "timestamp(3) without time zone"
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE design REPLICA IDENTITY FULL")
    assert read_table_schema(conn, "public", "design").key_names == ("design_id",)


def test_publication_is_created_once_and_then_verified(conn):
    assert ensure_publication(conn, "totes_cdc", "public", TABLES) is True
    assert ensure_publication(conn, "totes_cdc", "public", TABLES) is False
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'totes_cdc'")
        assert cur.fetchone() == (len(TABLES),)


def test_a_foreign_publication_missing_a_table_is_reported_not_altered(conn):
    with conn.cursor() as cur:
        cur.execute("CREATE PUBLICATION theirs FOR TABLE address")
    conn.commit()
    with pytest.raises(SourceSetupError, match='ALTER PUBLICATION "theirs" ADD TABLE "public"."design"'):
        ensure_publication(conn, "theirs", "public", ("address", "design"))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'theirs'")
        assert cur.fetchone() == (1,)


def test_snapshot_sees_exactly_what_committed_before_the_slot(totesys_dsn, conn):
    with conn.cursor() as cur:
        _seed_static(cur)
    conn.commit()
    ensure_publication(conn, "totes_cdc", "public", TABLES)

    replication = psycopg2.connect(totesys_dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        slot = create_slot(replication.cursor(), "totes_test_slot")
        # Committed after the slot: must not be in the snapshot.
        with conn.cursor() as cur:
            cur.execute("UPDATE design SET file_location = '/moved' WHERE design_id = 1")
            cur.execute("DELETE FROM design WHERE design_id = 2")
            cur.execute(
                "INSERT INTO design (design_name, file_location, file_name, last_updated) "
                "VALUES ('Steel', '/new', 'steel.json', now())"
            )
        conn.commit()

        reader = psycopg2.connect(totesys_dsn)
        schemas = [read_table_schema(reader, "public", t) for t in ("address", "department", "design")]
        chunks: list[list] = []
        progress: list[tuple[str, int]] = []
        count = read_snapshot(
            reader,
            slot.snapshot_name,
            schemas,
            slot.consistent_lsn,
            chunks.append,
            chunk_rows=7,
            progress=lambda t, n: progress.append((t, n)),
        )
        reader.close()
    finally:
        replication.close()

    events = [e for chunk in chunks for e in chunk]
    assert count == len(events) == 1 + 1 + 50
    assert max(len(c) for c in chunks) <= 7  # handed on in chunks, not all at once
    assert [e.seq for e in events] == list(range(count))
    assert {e.op for e in events} == {Op.SNAPSHOT} and {e.lsn for e in events} == {slot.consistent_lsn}
    designs = {int(e.key["design_id"]): e.after for e in events if e.table == "public.design"}
    assert sorted(designs) == list(range(1, 51))
    assert designs[1]["file_location"] == "/usr/1"
    assert designs[1]["design_name"] == "Wooden"
    dispatch = next(e for e in events if e.table == "public.department")
    assert dispatch.after["location"] == "Leds" and dispatch.after["manager"] is None
    assert progress[-1] == ("public.design", 50)

    state = slot_state(conn, "totes_test_slot")
    assert state is not None and state.plugin == "pgoutput" and not state.active
