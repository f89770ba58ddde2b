"""Personal data end to end: with a policy, no raw value of a policy column exists anywhere
downstream of the reader (every Kinesis record, every file of every lake version, the
warehouse file), whether it came with the snapshot or with a change; hashed columns still
join; dropped columns stay out of the publication.

Expected values come from the source database itself, read after the pipeline ran."""

from __future__ import annotations

import shutil
import threading

import duckdb
import polars as pl
import psycopg2
import pytest

from cdc_reader.personal_data import keyed_hash, parse
from change_events.kinesis import kinesis_client
from lake.delta_io import read_sql
from lake.layout import LakeLayout
from tests.conftest import make_scratch_dir
from tests.e2e_helpers import current_lsn, execute
from tests.run_process import wait_for
from tests.trace_search import folder_contents, kinesis_contents, traces, warehouse_contents
from totes_cli.pipeline import Pipeline, PipelineConfig
from totesys.simulator import Simulator

pytestmark = pytest.mark.slow

KEY = b"pipeline-test-personal-data-key!"
RULES = {
    "counterparty.commercial_contact": "drop",
    "counterparty.delivery_contact": "mask:last2",
    "department.manager": "mask",
}  # over the defaults: staff e-mail and address phone hashed
POLICY_COLUMNS = {
    "staff": ["email_address"],
    "address": ["phone"],
    "counterparty": ["commercial_contact", "delivery_contact"],
    "department": ["manager"],
}


def _policy_values(dsn: str, policy_columns: dict[str, list[str]] = POLICY_COLUMNS) -> set[str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            values = set()
            for table, columns in policy_columns.items():
                for column in columns:
                    cur.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL")  # nosec B608
                    values |= {v for (v,) in cur.fetchall()}
            return values
    finally:
        conn.close()


@pytest.fixture
def home(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_KINESIS", raising=False)  # the pipeline's own kinesalite
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    path = make_scratch_dir("totes-pii-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_no_raw_policy_value_reaches_kinesis_the_lake_or_the_warehouse(totesys_dsn, home):
    Simulator(totesys_dsn, seed=11).seed_history(2)
    raw = _policy_values(totesys_dsn)
    policy = parse(RULES, KEY)
    pipeline = Pipeline(
        PipelineConfig(
            source_dsn=totesys_dsn,
            lake=str(home / "lake"),
            warehouse=str(home / "warehouse.duckdb"),
            personal_data=policy,
        )
    )
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:

        def caught_up(lsn):
            assert not pipeline.errors, pipeline.errors
            return pipeline.caught_up_with(lsn)

        lsn = current_lsn(totesys_dsn)
        wait_for(lambda: caught_up(lsn), 180, "the snapshot in the warehouse")
        # changes on the stream: new values, and old values that must not come back either
        execute(
            totesys_dsn,
            "INSERT INTO staff (first_name, last_name, department_id, email_address, last_updated) "
            "VALUES ('Pat', 'Doe', 1, 'pat.doe.secret@terrifictotes.com', now())",
        )
        execute(totesys_dsn, "UPDATE address SET phone = '0999 111222', last_updated = now() WHERE address_id = 1")
        execute(
            totesys_dsn,
            "UPDATE counterparty SET commercial_contact = 'Zed Secretary', "
            "delivery_contact = 'Yvonne Hidden', last_updated = now() WHERE counterparty_id = 1",
        )
        execute(
            totesys_dsn, "UPDATE department SET manager = 'Quentin Boss', last_updated = now() WHERE department_id = 1"
        )
        execute(totesys_dsn, "DELETE FROM staff WHERE email_address = 'pat.doe.secret@terrifictotes.com'")
        raw |= _policy_values(totesys_dsn) | {"pat.doe.secret@terrifictotes.com"}
        lsn = current_lsn(totesys_dsn)
        wait_for(lambda: caught_up(lsn), 120, "the changes in the warehouse")
        records = list(kinesis_contents(kinesis_client(endpoint_url=pipeline.kinesalite.endpoint_url), "totes-cdc"))
    finally:
        pipeline.stop.set()
        thread.join(90)
    assert not pipeline.errors, pipeline.errors
    assert len(records) > 4 and any("(decoded)" in where and data for where, data in records)
    assert {"Zed Secretary", "Yvonne Hidden", "Quentin Boss", "0999 111222"} <= raw and len(raw) > 60

    # the search finds what is there: a kept value of the change (Doe) and of the snapshot (Leds)
    assert traces(records, ["Doe"]) and traces(folder_contents(home / "lake"), ["Doe", "Leds"])
    assert traces(warehouse_contents(home / "warehouse.duckdb"), ["Leds"])
    assert traces(records, raw) == []
    assert traces(folder_contents(home / "lake"), raw) == []
    assert traces(warehouse_contents(home / "warehouse.duckdb"), raw) == []

    # what did arrive: hashes of the source's values, masks, and no dropped column
    conn = psycopg2.connect(totesys_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT staff_id, email_address FROM staff ORDER BY staff_id")
        emails = cur.fetchall()
        cur.execute("SELECT attnames FROM pg_publication_tables WHERE tablename = 'counterparty'")
        (published,) = cur.fetchone()
        cur.execute(
            "SELECT c.counterparty_id, a2.address_id FROM counterparty c "
            "JOIN address a ON a.address_id = c.legal_address_id JOIN address a2 ON a2.phone = a.phone"
        )
        phone_pairs = set(cur.fetchall())
    conn.close()
    assert "commercial_contact" not in published and "delivery_contact" in published
    layout = LakeLayout(str(home / "lake"))
    staff = pl.from_arrow(
        read_sql(
            layout.open(layout.state_uri("public.staff")),
            "SELECT staff_id, email_address FROM t WHERE email_address IS NOT NULL",
        )
    )
    assert sorted(staff.rows()) == [(i, keyed_hash(KEY, e)) for i, e in emails]
    counterparty = pl.from_arrow(
        read_sql(layout.open(layout.state_uri("public.counterparty")), "SELECT * FROM t WHERE counterparty_id = 1")
    )
    assert "commercial_contact" not in counterparty.columns
    assert counterparty["delivery_contact"].to_list() == ["***en"]
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as wh:
        # a hashed value joins: every counterparty's legal phone finds the locations of that phone
        joined = set(
            wh.execute(
                "SELECT c.counterparty_id, l.location_id FROM dim_counterparty c JOIN dim_location l "
                "ON l.phone = c.counterparty_legal_phone_number"
            ).fetchall()
        )
        staff_emails = dict(wh.execute("SELECT staff_id, email_address FROM dim_staff").fetchall())
    assert joined == phone_pairs and len(joined) >= 20
    assert staff_emails == {i: keyed_hash(KEY, e) for i, e in emails}


def test_the_snapshot_changes_and_re_reads_through_the_stream_follow_the_policy(totesys_dsn, tmp_path):
    """Without a lake the snapshot and a re-read go through the stream as events (snapshot.py,
    resnapshot.py): they carry the hashes and no dropped column either."""
    from dataclasses import replace

    from change_events import Op
    from tests.reader_harness import FAST, running_reader, wait_until_confirmed
    from tests.fakes import MemorySink

    Simulator(totesys_dsn, seed=12).seed_history(1)
    policy = parse({"address.phone": "drop", "department.manager": "mask"}, KEY)
    sink = MemorySink()
    config = replace(FAST, resnapshot=("staff",), personal_data=policy)
    columns = {"staff": ["email_address"], "address": ["phone"], "department": ["manager"]}
    raw = _policy_values(totesys_dsn, columns)
    assert len(raw) > 40
    with running_reader(totesys_dsn, sink, tmp_path / "state.json", config) as reader:
        execute(
            totesys_dsn,
            "UPDATE staff SET email_address = 'changed.secret@terrifictotes.com', "
            "last_updated = now() WHERE staff_id = 1",
        )
        execute(totesys_dsn, "UPDATE address SET phone = '0999 000111', last_updated = now() WHERE address_id = 2")
        wait_for(lambda: "public.staff" in reader.reread, 120, "the re-read of staff")
        wait_until_confirmed(reader, current_lsn(totesys_dsn))
    raw |= {"changed.secret@terrifictotes.com", "0999 000111"}
    events = sink.events
    staff = [e for e in events if e.table == "public.staff"]
    initial = min(e.lsn for e in events)
    assert {e.op for e in staff} >= {Op.SNAPSHOT, Op.UPDATE}
    assert any(e.op is Op.SNAPSHOT and e.lsn > initial for e in staff)  # the re-read
    assert all("phone" not in e.schema.column_names for e in events if e.table == "public.address")
    assert any(e.op is Op.UPDATE for e in events if e.table == "public.address")
    texts = {str(v) for e in events for row in (e.after or {}, e.before or {}) for v in row.values()}
    assert not raw & texts
    assert any(t.startswith("***") for t in texts)  # the managers' masks
    emails = {e.after["email_address"] for e in staff if e.after and "email_address" in e.after}
    assert keyed_hash(KEY, "changed.secret@terrifictotes.com") in emails and all(len(v) == 64 for v in emails)


def test_the_publication_column_list_follows_the_drops_as_they_change(totesys_dsn):
    from cdc_reader.source_setup import ensure_publication

    def published() -> dict[str, list[str]]:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename, attnames FROM pg_publication_tables WHERE pubname = 'pii_pub'")
            found = dict(cur.fetchall())
        conn.commit()
        return found

    conn = psycopg2.connect(totesys_dsn)
    try:
        tables = ("staff", "counterparty")
        assert ensure_publication(
            conn,
            "pii_pub",
            "public",
            tables,
            dropped={"counterparty": frozenset({"commercial_contact", "delivery_contact"})},
        )
        first = published()
        assert "commercial_contact" not in first["counterparty"] and "counterparty_legal_name" in first["counterparty"]
        assert "email_address" in first["staff"]
        ensure_publication(conn, "pii_pub", "public", tables, dropped={"counterparty": frozenset({"delivery_contact"})})
        assert "commercial_contact" in published()["counterparty"]
        assert "delivery_contact" not in published()["counterparty"]
        ensure_publication(conn, "pii_pub", "public", tables, dropped={})
        assert "delivery_contact" in published()["counterparty"]
        with conn.cursor() as cur:
            cur.execute("ALTER TABLE staff REPLICA IDENTITY FULL")  # a list must cover a FULL identity
        conn.commit()
        ensure_publication(conn, "pii_pub", "public", tables, dropped={"staff": frozenset({"email_address"})})
        assert "email_address" in published()["staff"]  # the reader drops it itself
    finally:
        conn.close()
