"""Exactly-once: whatever the interruptions, repetitions or split of the work, the warehouse
ends identical to one uninterrupted sync: every table, record ids included, compared whole.

Record ids can be compared because the sync assigns them itself (max + row number in event
order) inside its transaction: a rolled-back sync consumes nothing."""

from __future__ import annotations

import shutil
import threading

import psycopg2
import pytest

import warehouse_sync.position as position_module
import warehouse_sync.steps as steps_module
from tests.run_process import wait_for
from tests.warehouse_fixtures import assert_same_warehouse, dump_warehouse
from tests.scripted_source import duplicate_logged_events, write_lake
from warehouse_sync import DuckDBTarget, PostgresTarget, checkpoint_lsn, sync_once
from tests.warehouse_fixtures import Crash, TODAY, _sync


def test_syncing_in_steps_equals_one_sync(history_of_every_kind, history_lake, exactly_once_reference):
    by_points, by_commits = DuckDBTarget(), DuckDBTarget()
    for lsn, _ in history_of_every_kind.points:
        _sync(history_lake, by_points, lsn)
    for lsn in history_of_every_kind.source.commits:
        _sync(history_lake, by_commits, lsn)
    assert_same_warehouse(dump_warehouse(by_points), exactly_once_reference)
    assert_same_warehouse(dump_warehouse(by_commits), exactly_once_reference)


def test_a_rerun_with_the_same_watermark_changes_nothing(history_of_every_kind, history_lake, exactly_once_reference):
    target = DuckDBTarget()
    _sync(history_lake, target, history_of_every_kind.points[2][0])
    before = dump_warehouse(target)
    result = _sync(history_lake, target, history_of_every_kind.points[2][0])
    assert (result.applied, result.events) == (False, 0)
    assert _sync(history_lake, target, history_of_every_kind.points[1][0]).events == 0  # an older watermark too
    assert_same_warehouse(dump_warehouse(target), before)
    _sync(history_lake, target, history_of_every_kind.final_lsn)
    assert_same_warehouse(dump_warehouse(target), exactly_once_reference)


@pytest.mark.parametrize(
    "module, step",
    [(position_module, "_advance_checkpoint"), (steps_module, "_write_facts"), (steps_module, "_delete_dimensions")],
)
def test_a_crash_before_commit_leaves_nothing_and_the_rerun_completes(
    history_of_every_kind, history_lake, exactly_once_reference, monkeypatch, module, step
):
    target = DuckDBTarget()
    _sync(history_lake, target, history_of_every_kind.points[1][0])
    before = dump_warehouse(target)

    def crash(*args, **kwargs):
        original(*args, **kwargs)  # the step's writes happen, then the process dies
        raise Crash(step)

    original = getattr(module, step)
    monkeypatch.setattr(module, step, crash)
    with pytest.raises(Crash):
        sync_once(history_lake, target, history_of_every_kind.points[3][0], today=TODAY)
    assert_same_warehouse(dump_warehouse(target), before)
    monkeypatch.undo()
    _sync(history_lake, target, history_of_every_kind.points[3][0])
    _sync(history_lake, target, history_of_every_kind.final_lsn)
    assert_same_warehouse(dump_warehouse(target), exactly_once_reference)


def test_duplicated_events_in_the_change_log_count_once(
    history_of_every_kind, history_lake, exactly_once_reference, tmp_path
):
    shutil.copytree(history_lake.root, tmp_path / "lake")
    doubled = write_lake(tmp_path / "lake", [])
    for table in ("sales_order", "payment", "staff", "department", "address"):
        assert duplicate_logged_events(doubled, table) > 0
    one, steps = DuckDBTarget(), DuckDBTarget()
    _sync(doubled, one, history_of_every_kind.final_lsn)
    for lsn, _ in history_of_every_kind.points:
        _sync(doubled, steps, lsn)
    assert_same_warehouse(dump_warehouse(one), exactly_once_reference)
    assert_same_warehouse(dump_warehouse(steps), exactly_once_reference)


def test_postgres_crash_and_rerun_equal_the_duckdb_reference(
    history_of_every_kind, history_lake, exactly_once_reference, empty_database, monkeypatch
):
    target = PostgresTarget(empty_database)
    try:
        _sync(history_lake, target, history_of_every_kind.points[1][0])
        before = dump_warehouse(target)
        original = position_module._advance_checkpoint

        def crash(*args):
            original(*args)
            raise Crash()

        monkeypatch.setattr(position_module, "_advance_checkpoint", crash)
        with pytest.raises(Crash):
            sync_once(history_lake, target, history_of_every_kind.final_lsn, today=TODAY)
        assert_same_warehouse(dump_warehouse(target), before)
        monkeypatch.undo()
        _sync(history_lake, target, history_of_every_kind.final_lsn)
        assert checkpoint_lsn(target) == history_of_every_kind.final_lsn
        assert_same_warehouse(dump_warehouse(target), exactly_once_reference)
    finally:
        target.close()


def _blocked_sync_backend(dsn: str, other_than: int | None = None) -> int | None:
    """The pid of the sync's session while it waits for a lock, else None."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'totes-sync' AND wait_event_type = 'Lock' AND pid <> %s",
                (other_than or 0,),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def test_postgres_dropping_the_connection_mid_sync_is_retried_with_nothing_doubled(
    history_of_every_kind, history_lake, exactly_once_reference, empty_database
):
    """The warehouse's backend is terminated (pg_terminate_backend) in the middle of a sync's
    transaction, after it wrote mirrors and dimensions: the sync reconnects, runs again from
    the checkpoint and ends identical to one uninterrupted sync."""
    target = PostgresTarget(empty_database)
    locker = psycopg2.connect(empty_database)
    try:
        _sync(history_lake, target, history_of_every_kind.points[1][0])
        with locker.cursor() as cur:  # the sync's fact writes wait here, its earlier writes done
            cur.execute("LOCK TABLE fact_sales_order IN EXCLUSIVE MODE")
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = sync_once(history_lake, target, history_of_every_kind.final_lsn, today=TODAY)
            except BaseException as error:  # noqa: BLE001 - reported below
                outcome["error"] = error

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        first = wait_for(lambda: _blocked_sync_backend(empty_database), 60, "the sync to wait for the lock")
        with psycopg2.connect(empty_database) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (first,))
            assert cur.fetchone()[0]
        admin.close()
        wait_for(
            lambda: _blocked_sync_backend(empty_database, other_than=first) or "error" in outcome,
            60,
            "the sync to run again on a new connection",
        )
        locker.rollback()
        worker.join(120)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].to_lsn == history_of_every_kind.final_lsn
        assert checkpoint_lsn(target) == history_of_every_kind.final_lsn
        assert_same_warehouse(dump_warehouse(target), exactly_once_reference)
    finally:
        locker.close()
        target.close()
