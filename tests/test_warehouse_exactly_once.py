"""Exactly-once: whatever the interruptions, repetitions or split of the work, the warehouse
ends identical to one uninterrupted sync: every table, record ids included, compared whole.

Record ids can be compared because the sync assigns them itself (max + row number in event
order) inside its transaction: a rolled-back sync consumes nothing."""

from __future__ import annotations

import shutil
import threading
from datetime import date

import psycopg2
import pytest

import warehouse_sync.apply as apply_module
from tests.e2e_helpers import wait_for
from tests.warehouse_fixtures import (
    assert_same_warehouse,
    duplicate_logged_events,
    dump_warehouse,
    mixed_history,
    write_lake,
)
from warehouse_sync import (
    DuckDBTarget,
    PostgresTarget,
    checkpoint_lsn,
    dangling_references,
    duplicate_current_rows,
    sync_once,
)

TODAY = date(2024, 11, 18)


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def history():
    return mixed_history()


@pytest.fixture(scope="module")
def lake(history, tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("lake"), history.source.events)


@pytest.fixture(scope="module")
def reference(history, lake):
    """The warehouse after one sync of the whole history."""
    target = DuckDBTarget()
    sync_once(lake, target, history.final_lsn, today=TODAY)
    tables = dump_warehouse(target)
    target.close()
    return tables


def _sync(lake, target, lsn):
    result = sync_once(lake, target, lsn, today=TODAY)
    assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
    return result


def test_syncing_in_steps_equals_one_sync(history, lake, reference):
    by_points, by_commits = DuckDBTarget(), DuckDBTarget()
    for lsn, _ in history.points:
        _sync(lake, by_points, lsn)
    for lsn in history.source.commits:
        _sync(lake, by_commits, lsn)
    assert_same_warehouse(dump_warehouse(by_points), reference)
    assert_same_warehouse(dump_warehouse(by_commits), reference)


def test_a_rerun_with_the_same_watermark_changes_nothing(history, lake, reference):
    target = DuckDBTarget()
    _sync(lake, target, history.points[2][0])
    before = dump_warehouse(target)
    result = _sync(lake, target, history.points[2][0])
    assert (result.applied, result.events) == (False, 0)
    assert _sync(lake, target, history.points[1][0]).events == 0  # an older watermark too
    assert_same_warehouse(dump_warehouse(target), before)
    _sync(lake, target, history.final_lsn)
    assert_same_warehouse(dump_warehouse(target), reference)


@pytest.mark.parametrize("step", ["_advance_checkpoint", "_write_facts", "_delete_dimensions"])
def test_a_crash_before_commit_leaves_nothing_and_the_rerun_completes(history, lake, reference, monkeypatch, step):
    target = DuckDBTarget()
    _sync(lake, target, history.points[1][0])
    before = dump_warehouse(target)

    def crash(*args, **kwargs):
        original(*args, **kwargs)  # the step's writes happen, then the process dies
        raise Crash(step)

    original = getattr(apply_module, step)
    monkeypatch.setattr(apply_module, step, crash)
    with pytest.raises(Crash):
        sync_once(lake, target, history.points[3][0], today=TODAY)
    assert_same_warehouse(dump_warehouse(target), before)
    monkeypatch.undo()
    _sync(lake, target, history.points[3][0])
    _sync(lake, target, history.final_lsn)
    assert_same_warehouse(dump_warehouse(target), reference)


def test_duplicated_events_in_the_change_log_count_once(history, lake, reference, tmp_path):
    shutil.copytree(lake.root, tmp_path / "lake")
    doubled = write_lake(tmp_path / "lake", [])
    for table in ("sales_order", "payment", "staff", "department", "address"):
        assert duplicate_logged_events(doubled, table) > 0
    one, steps = DuckDBTarget(), DuckDBTarget()
    _sync(doubled, one, history.final_lsn)
    for lsn, _ in history.points:
        _sync(doubled, steps, lsn)
    assert_same_warehouse(dump_warehouse(one), reference)
    assert_same_warehouse(dump_warehouse(steps), reference)


def test_postgres_crash_and_rerun_equal_the_duckdb_reference(history, lake, reference, empty_database, monkeypatch):
    target = PostgresTarget(empty_database)
    try:
        _sync(lake, target, history.points[1][0])
        before = dump_warehouse(target)
        original = apply_module._advance_checkpoint

        def crash(*args):
            original(*args)
            raise Crash()

        monkeypatch.setattr(apply_module, "_advance_checkpoint", crash)
        with pytest.raises(Crash):
            sync_once(lake, target, history.final_lsn, today=TODAY)
        assert_same_warehouse(dump_warehouse(target), before)
        monkeypatch.undo()
        _sync(lake, target, history.final_lsn)
        assert checkpoint_lsn(target) == history.final_lsn
        assert_same_warehouse(dump_warehouse(target), reference)
    finally:
        target.close()


def _blocked_sync_backend(dsn: str, other_than: int | None = None) -> int | None:
    """The pid of the sync's session while it waits for a lock, else None."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = 'totes-sync' AND wait_event_type = 'Lock' AND pid <> %s",
                        (other_than or 0,))
            row = cur.fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def test_postgres_dropping_the_connection_mid_sync_is_retried_with_nothing_doubled(
        history, lake, reference, empty_database):
    """The warehouse's backend is terminated (pg_terminate_backend) in the middle of a sync's
    transaction, after it wrote mirrors and dimensions: the sync reconnects, runs again from
    the checkpoint and ends identical to one uninterrupted sync."""
    target = PostgresTarget(empty_database)
    locker = psycopg2.connect(empty_database)
    try:
        _sync(lake, target, history.points[1][0])
        with locker.cursor() as cur:  # the sync's fact writes wait here, its earlier writes done
            cur.execute("LOCK TABLE fact_sales_order IN EXCLUSIVE MODE")
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = sync_once(lake, target, history.final_lsn, today=TODAY)
            except BaseException as error:  # noqa: BLE001 - reported below
                outcome["error"] = error

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        first = wait_for(lambda: _blocked_sync_backend(empty_database), 60, "the sync to wait for the lock")
        with psycopg2.connect(empty_database) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (first,))
            assert cur.fetchone()[0]
        admin.close()
        wait_for(lambda: _blocked_sync_backend(empty_database, other_than=first) or "error" in outcome, 60,
                 "the sync to run again on a new connection")
        locker.rollback()
        worker.join(120)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].to_lsn == history.final_lsn
        assert checkpoint_lsn(target) == history.final_lsn
        assert_same_warehouse(dump_warehouse(target), reference)
    finally:
        locker.close()
        target.close()
