"""The reader against a real PostgreSQL: snapshot + stream equals the source, TOAST, deletes,
truncates, added columns, restarts, and what it says when the source is not right."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import replace

import psycopg2
import pytest

from cdc_reader.reader import FileStateStore, Reader
from cdc_reader.source_setup import SourceSetupError
from cdc_reader.source import SourceConnectionError
from change_events import Op
from tests.reader_harness import _catch_up, _run_sql
from tests.reader_harness import seeded_source  # noqa: F401  (the `seeded` fixture)
from tests.conftest import make_scratch_dir
from tests.reader_harness import (
    FAST,
    apply_events,
    current_lsn,
    running_reader,
    source_state,
    state_diff,
    wait_until_confirmed,
    with_all_columns,
)
from tests.fakes import MemorySink
from totesys.embedded import EmbeddedPostgres
from totesys.schema import TABLES, create_schema, ensure_database
from totesys.simulator import Simulator


def test_snapshot_and_stream_equal_the_source_even_with_changes_during_the_snapshot(seeded, tmp_path):
    sink = MemorySink()
    writer = Simulator(seeded, seed=12)
    changed_during_snapshot = threading.Event()

    def change_the_source_mid_snapshot(event):
        if event.op is Op.SNAPSHOT and not changed_during_snapshot.is_set():
            changed_during_snapshot.set()
            writer.run_live(rate=0, events=25)  # commits while the snapshot is being read
            _run_sql(seeded, "UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id <= 5")

    sink.on_add = change_the_source_mid_snapshot
    with running_reader(seeded, sink, tmp_path / "state.json") as reader:
        _catch_up(seeded, reader)
        sink.on_add = None
        writer.run_live(rate=0, events=40)
        _catch_up(seeded, reader)
    writer.close()

    assert changed_during_snapshot.is_set()
    snapshot = [e for e in sink.events if e.op is Op.SNAPSHOT]
    streamed = [e for e in sink.events if e.op is not Op.SNAPSHOT]
    assert snapshot and streamed
    # No overlap, no gap: the snapshot precedes every streamed change.
    assert max(e.lsn for e in snapshot) < min(e.lsn for e in streamed)
    got, want = apply_events(sink.events), source_state(seeded, TABLES)
    assert got == want, state_diff(got, want)
    ids = [e.event_id for e in sink.events]
    assert len(ids) == len(set(ids))


def test_toast_deletes_truncates_and_an_added_column(totesys_dsn, tmp_path):
    big = secrets.token_hex(40_000)  # 80 kB of incompressible text: stored out of line
    sink = MemorySink()
    with running_reader(totesys_dsn, sink, tmp_path / "state.json") as reader:
        _run_sql(
            totesys_dsn,
            "INSERT INTO design (design_name, file_location, file_name, last_updated) "
            f"VALUES ('Steel', '{big}', 'steel.json', now()), ('Soft', '/soft', 'soft.json', now())",
        )
        _run_sql(totesys_dsn, "UPDATE design SET design_name = 'Steely' WHERE design_name = 'Steel'")
        _run_sql(totesys_dsn, "DELETE FROM design WHERE design_name = 'Soft'")
        _run_sql(
            totesys_dsn,
            "ALTER TABLE design ADD COLUMN colour text",
            "INSERT INTO design (design_name, file_location, file_name, last_updated, colour) "
            "VALUES ('Cotton', '/c', 'c.json', now(), 'blue')",
        )
        _run_sql(
            totesys_dsn,
            "INSERT INTO currency (currency_code, last_updated) VALUES ('GBP', now())",
            "TRUNCATE currency CASCADE",
        )
        _catch_up(totesys_dsn, reader)

    update = next(e for e in sink.events if e.op is Op.UPDATE)
    assert update.unchanged == ("file_location",)
    assert "file_location" not in update.after
    delete = next(e for e in sink.events if e.op is Op.DELETE)
    assert delete.before == {"design_id": delete.key["design_id"]} and delete.after is None
    added = [e for e in sink.events if e.after and "colour" in e.after]
    assert [e.after["colour"] for e in added] == ["blue"]
    assert any(e.op is Op.TRUNCATE and e.table == "public.currency" for e in sink.events)

    state = with_all_columns(apply_events(sink.events))
    assert state["public.design"] == source_state(totesys_dsn, ["design"])["public.design"]
    steely = next(r for r in state["public.design"].values() if r["design_name"] == "Steely")
    assert steely["file_location"] == big
    assert state.get("public.currency", {}) == {}


def test_a_restarted_reader_resumes_from_the_slot_without_losing_a_change(seeded, tmp_path):
    sink = MemorySink()
    with Simulator(seeded, seed=5) as writer:
        with running_reader(seeded, sink, tmp_path / "state.json") as reader:
            _catch_up(seeded, reader)
        snapshot_events = sum(1 for e in sink.events if e.op is Op.SNAPSHOT)
        writer.run_live(rate=0, events=30)  # while no reader runs
        with running_reader(seeded, sink, tmp_path / "state.json") as reader:
            writer.run_live(rate=0, events=30)
            _catch_up(seeded, reader)
    assert sum(1 for e in sink.events if e.op is Op.SNAPSHOT) == snapshot_events  # no second snapshot
    assert apply_events(sink.events) == source_state(seeded, TABLES)


def test_nothing_is_confirmed_before_it_is_durable(totesys_dsn, tmp_path):
    sink = MemorySink()
    sink.hold = True  # the sink accepts but never makes anything durable
    with running_reader(totesys_dsn, sink, tmp_path / "state.json") as reader:
        _run_sql(totesys_dsn, "INSERT INTO currency (currency_code, last_updated) VALUES ('EUR', now())")
        deadline = current_lsn(totesys_dsn)
        import time

        time.sleep(1.0)
        assert reader.metrics.received_lsn >= deadline or sink.events
        assert reader.metrics.confirmed_lsn == 0
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) > 0 "
            "FROM pg_replication_slots WHERE slot_name = 'totes_cdc'"
        )
        assert cur.fetchone() == (True,)
    # A new reader gets the change again from the slot.
    again = MemorySink()
    with running_reader(totesys_dsn, again, tmp_path / "state2.json") as reader:
        _catch_up(totesys_dsn, reader)
    assert any(e.table == "public.currency" and e.after["currency_code"] == "EUR" for e in again.events)


def test_a_snapshot_durable_by_the_time_the_reader_stops_is_recorded_done(seeded, tmp_path):
    """The snapshot counts once it is durable downstream. A reader stopped just after that
    records it as done; else its state file says "handed on" and a later run trusts
    less of the lake than it could."""
    sink, state_path = MemorySink(), tmp_path / "state.json"
    sink.hold = True  # not durable at the reader's first look downstream
    rare_feedback = replace(FAST, feedback_seconds=3600)  # it stops before its next look
    with running_reader(seeded, sink, state_path, rare_feedback) as reader:
        assert reader.streaming.is_set()
        _run_sql(seeded, "INSERT INTO currency (currency_code, last_updated) VALUES ('CHF', now())")
        time.sleep(0.5)
        assert FileStateStore(state_path).load().snapshot_published and reader.metrics.confirmed_lsn == 0
        sink.hold = False
    state = FileStateStore(state_path).load()
    assert state.snapshot_done, state
    assert reader.metrics.confirmed_lsn > state.snapshot_lsn


def test_heartbeats_keep_the_slot_moving_when_our_tables_are_idle(totesys_dsn, admin_dsn, tmp_path):
    other = ensure_database(admin_dsn, "totes_test_busy_neighbour")
    _run_sql(other, "CREATE TABLE IF NOT EXISTS noise (v text)")
    sink = MemorySink()
    with running_reader(totesys_dsn, sink, tmp_path / "state.json") as reader:
        _catch_up(totesys_dsn, reader)
        for _ in range(5):  # WAL written elsewhere on the server: none of it is ours
            _run_sql(other, "INSERT INTO noise SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
        target = current_lsn(totesys_dsn)
        wait_until_confirmed(reader, target)
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = 'totes_cdc'",
            (f"{target >> 32:X}/{target & 0xFFFFFFFF:X}",),
        )
        assert cur.fetchone() == (True,)
    assert not sink.events


def test_a_dropped_slot_is_reported_in_one_sentence(totesys_dsn, tmp_path):
    sink = MemorySink()
    with running_reader(totesys_dsn, sink, tmp_path / "state.json") as reader:
        _catch_up(totesys_dsn, reader)
    _run_sql(totesys_dsn, "SELECT pg_drop_replication_slot('totes_cdc')")
    reader = Reader(totesys_dsn, sink, sink, FileStateStore(tmp_path / "state.json"), FAST)
    with pytest.raises(SourceSetupError, match="is gone .* --reset"):
        reader.run(threading.Event())


def test_wal_level_replica_is_reported_in_one_sentence(tmp_path):
    server = EmbeddedPostgres(make_scratch_dir("totes-replica-"), settings={"wal_level": "replica"})
    dsn = ensure_database(server.start())
    try:
        create_schema(dsn)
        reader = Reader(dsn, MemorySink(), MemorySink(), FileStateStore(tmp_path / "s.json"), FAST)
        with pytest.raises(SourceSetupError, match="wal_level = logical"):
            reader.run(threading.Event())
    finally:
        server.stop()


def test_missing_privileges_are_reported_in_one_sentence(totesys_dsn, admin_dsn, tmp_path):
    from psycopg2.extensions import make_dsn

    role = f"totes_weak_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    _run_sql(admin_dsn, f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    try:
        _run_sql(totesys_dsn, f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        weak = make_dsn(totesys_dsn, user=role, password=password)
        reader = Reader(weak, MemorySink(), MemorySink(), FileStateStore(tmp_path / "a.json"), FAST)
        with pytest.raises(SourceSetupError, match="may not create or change publication .*CREATE PUBLICATION"):
            reader.run(threading.Event())

        # With the publication made by its owner, the missing REPLICATION attribute is next.
        _run_sql(
            totesys_dsn,
            f"CREATE PUBLICATION totes_cdc FOR TABLE {', '.join(TABLES)} "
            "WITH (publish = 'insert, update, delete, truncate')",
        )
        reader = Reader(weak, MemorySink(), MemorySink(), FileStateStore(tmp_path / "b.json"), FAST)
        with pytest.raises(SourceConnectionError, match="may not replicate: run ALTER ROLE"):
            reader.run(threading.Event())
    finally:
        _run_sql(totesys_dsn, f'DROP OWNED BY "{role}"')
        _run_sql(admin_dsn, f'DROP ROLE "{role}"')


def test_a_slot_dropped_while_streaming_stops_the_reader_with_one_sentence(totesys_dsn, tmp_path):
    """The walsender killed and the slot dropped under a running reader: the reconnect finds
    the slot gone and the supervisor stops with SlotLostError instead of retrying forever."""
    from cdc_reader.reader import supervise
    from cdc_reader.source_setup import SlotLostError

    sink = MemorySink()
    reader = Reader(totesys_dsn, sink, sink, FileStateStore(tmp_path / "state.json"), FAST)
    stop, raised = threading.Event(), []

    def run():
        try:
            supervise(reader, stop)
        except BaseException as error:  # noqa: BLE001 - checked below
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert reader.streaming.wait(30)
    deadline = time.monotonic() + 30
    while True:  # the walsender lets go of the slot a moment after it is terminated
        try:
            _run_sql(
                totesys_dsn,
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = 'totes_cdc' AND active_pid IS NOT NULL",
                "SELECT pg_drop_replication_slot('totes_cdc')",
            )
            break
        except psycopg2.errors.ObjectInUse:
            assert time.monotonic() < deadline, "the slot stayed active"
            time.sleep(0.05)
    thread.join(30)
    stop.set()
    assert not thread.is_alive(), "the reader kept retrying a slot that is gone"
    assert len(raised) == 1 and isinstance(raised[0], SlotLostError), raised
    assert "is gone" in str(raised[0]) and "--reset" in str(raised[0])


def test_reset_after_a_lost_slot_replaces_every_table_so_rows_deleted_meanwhile_go(seeded, tmp_path):
    """`--reset`: a new slot whose snapshot begins with a truncate of every table at its
    consistent point, then the rows at that same point: replayed in (lsn, seq) order the
    stream equals the source, without the row deleted while no slot was reading."""
    sink, state_path = MemorySink(), tmp_path / "state.json"
    with running_reader(seeded, sink, state_path) as reader:
        _catch_up(seeded, reader)
    _run_sql(
        seeded,
        "SELECT pg_drop_replication_slot('totes_cdc')",
        "DELETE FROM sales_order WHERE sales_order_id = 1",
        "UPDATE sales_order SET units_sold = units_sold + 1000 WHERE sales_order_id = 2",
    )
    before = len(sink.events)
    with running_reader(seeded, sink, state_path, replace(FAST, reset=True)) as reader:
        _catch_up(seeded, reader)
    state = FileStateStore(state_path).load()
    assert state.snapshot_done and state.replaces_lost_slot
    new = sink.events[before:]
    truncates = new[: len(TABLES)]
    assert [(e.op, e.lsn, e.seq) for e in truncates] == [
        (Op.TRUNCATE, state.snapshot_lsn, i) for i in range(len(TABLES))
    ]
    assert {e.table for e in truncates} == {f"public.{t}" for t in TABLES}
    rows = [e for e in new if e.op is Op.SNAPSHOT]
    assert rows and min(e.seq for e in rows) == len(TABLES) and {e.lsn for e in rows} == {state.snapshot_lsn}
    got, want = apply_events(sink.events), source_state(seeded, TABLES)
    assert got == want, state_diff(got, want)
    assert ("1",) not in got["public.sales_order"]
