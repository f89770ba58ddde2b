"""The whole pipeline killed with kill -9 (during a workload, before the first snapshot is durable,
in the middle of it) and restarted: nothing lost, nothing doubled, no deleted row seen again; what
is expected comes from the source database, as in test_end_to_end.py."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import polars as pl
import pytest

from lake.delta_io import read_sql
from lake.layout import LakeLayout
from tests.e2e_helpers import REAL_SNAPSHOT, check_workload as _check_workload
from tests.run_process import PipelineThread, _config
from tests.run_process import e2e_home  # noqa: F401  (the `home` fixture)
from tests.e2e_helpers import (
    check_against_source,
    current_lsn,
    delete_and_change_sales_orders,
    execute,
    read_source,
    seed_audited,
    utc_today,
)
from tests.run_process import RunProcess, kill_9, kinesalite_pids, slot_confirmed, wait_for
from tests.warehouse_fixtures import assert_same_warehouse, dump_warehouse, read_table_sorted
from totesys.simulator import Simulator
from totesys.snapshots import load_snapshot
from warehouse_sync import DuckDBTarget
from warehouse_sync.schema import CHECKPOINT, FACTS

pytestmark = pytest.mark.slow


# -- 3. kill -9 ---------------------------------------------------------------------------------


def _comparable(dump: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """A warehouse dump without what differs between two pipelines that saw the same history
    through different slots: the LSN of their initial snapshots (each slot has its own
    consistent point) and how far their checkpoint went past the last change."""
    snapshot = {
        lsn
        for fact in FACTS
        for lsn in dump[fact.name].filter(pl.col("source_op") == "r")["source_lsn"].unique().to_list()
    }
    assert len(snapshot) == 1, snapshot
    out = {}
    for name, frame in dump.items():
        if name == CHECKPOINT.name:
            continue
        if {"source_lsn", "source_op"} <= set(frame.columns):
            frame = frame.with_columns(
                source_lsn=pl.when(pl.col("source_op") == "r")
                .then(0)
                .otherwise(pl.col("source_lsn"))
                .cast(frame["source_lsn"].dtype)
            )
        if "_lsn" in frame.columns:
            frame = frame.with_columns(
                _lsn=pl.when(pl.col("_lsn").is_in(list(snapshot)))
                .then(0)
                .otherwise(pl.col("_lsn"))
                .cast(frame["_lsn"].dtype)
            )
        out[name] = frame
    return out


def test_totes_run_killed_with_sigkill_during_a_workload_then_caught_up_loses_and_doubles_nothing(
    totesys_dsn, home, own_kinesalite
):
    """`totes run` starts its own kinesalite with its data in `<lake>/_local/kinesis` (no
    AWS_ENDPOINT_URL* in its environment): that is the local default, and the kill is meant to
    hit that too: the orphaned server must go and its LevelDB must serve the next run.

    An uninterrupted in-process pipeline (its own lake, slot, kinesalite and warehouse) follows
    the same source meanwhile: both warehouses must end up identical, lineage included."""
    baseline, first_day, start = seed_audited(totesys_dsn, seed=51, days=3)
    run = RunProcess(totesys_dsn, home / "killed", slot="e2e_kill")
    run.home.mkdir()
    kinesis_dir = run.lake / "_local" / "kinesis"
    reference = PipelineThread(_config(totesys_dsn, home / "uninterrupted", personal_data=run.policy))
    try:
        reference.wait_caught_up(start, 120)
    except BaseException:
        reference.stop()
        raise

    process = run.start()
    processes = [process]
    stop = threading.Event()
    business = Simulator(totesys_dsn, seed=52)
    worker = threading.Thread(
        target=business.run_live,
        name="e2e-business",
        kwargs={"rate": 40, "stop_event": stop, "chaos": True, "chaos_every": 6},
    )
    rng = random.Random()
    kills = []
    try:
        # The slot's first confirmed LSN is its consistent point; the reader confirms more only
        # once the snapshot is durable in the lake. From then on every change is streamed.
        created = wait_for(
            lambda: slot_confirmed(totesys_dsn, run.slot), 60, "the slot", process, run.log_tail, interval=0.05
        )
        assert created >= start
        wait_for(
            lambda: slot_confirmed(totesys_dsn, run.slot) > created,
            120,
            "the snapshot to be durable",
            process,
            run.log_tail,
        )
        worker.start()
        for _ in range(3):
            time.sleep(rng.uniform(1.0, 5.0))
            assert process.poll() is None, run.log_tail()
            servers = kinesalite_pids(kinesis_dir)  # none yet if the kill lands during start-up
            assert len(servers) <= 1, servers
            kill_9(process)
            kills.append(servers)
            process = run.start()  # restarted at once, as a supervisor would
            processes.append(process)
            wait_for(
                lambda: not set(servers) & set(kinesalite_pids(kinesis_dir)),
                30,
                f"the orphaned kinesalite {servers} to exit",
            )
        time.sleep(rng.uniform(1.0, 3.0))
        assert process.poll() is None, run.log_tail()
    except BaseException:
        reference.stop()
        raise
    finally:
        stop.set()
        if worker.is_alive():
            worker.join(60)
        business.close()
        for p in processes:
            if p.poll() is None:
                kill_9(p)
    assert len(kills) == 3 and any(kills) and business.stats.events > 0, kills
    assert business.stats.counts().get("bulk_import"), business.stats.counts()

    final = run.start("--until-caught-up")
    try:
        reference.wait_caught_up(current_lsn(totesys_dsn), 180)
        final.wait(240)
    finally:
        reference.stop()
        if final.poll() is None:
            kill_9(final)
    assert final.returncode == 0, run.log_tail()
    assert kinesalite_pids(kinesis_dir) == []
    # the snapshot was durable before the first kill: every restart resumed the slot
    assert "starting over" not in run.log_tail(10**9), run.log_tail()

    with DuckDBTarget(run.warehouse) as target:
        summary = _check_workload(target, totesys_dsn, baseline, (first_day, utc_today()), run.policy)
        for fact in FACTS:
            facts = read_table_sorted(target, fact.name)
            # the ids an uninterrupted run assigns: 1..N in (lsn, seq, key) order
            assert facts[fact.key].to_list() == list(range(1, facts.height + 1)), fact.name
            order = facts.sort("source_lsn", "source_seq", fact.business_key, maintain_order=True)[fact.key]
            assert order.to_list() == facts[fact.key].to_list(), fact.name
        killed = dump_warehouse(target)
    assert summary["audited"] > 1000, summary
    with DuckDBTarget(home / "uninterrupted" / "warehouse.duckdb") as target:
        uninterrupted = dump_warehouse(target)
    assert_same_warehouse(_comparable(killed), _comparable(uninterrupted))
    _check_lake_exactly_once(run.lake)


def _check_lake_exactly_once(lake) -> None:
    """The lake's change logs hold every event position once (writers are idempotent)."""
    layout = LakeLayout(str(lake))
    for table in layout.tables():
        uri = layout.changes_uri(table)
        dataset = layout.open(uri).to_pyarrow_dataset(filesystem=layout.subtree(uri))
        frame = pl.from_arrow(dataset.to_table(columns=["_lsn", "_seq"]))
        doubled = frame.height - frame.unique().height
        assert doubled == 0, f"{table}: {doubled} event positions logged twice"


def _reader_state(run: RunProcess) -> dict:
    path = run.lake / "_local" / "reader" / f"{run.slot}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _lake_snapshot_keys(lake, table: str) -> set[str]:
    """Keys of `table` the lake's change log holds (the bulk snapshot writes it directly)."""
    delta = LakeLayout(lake).open(LakeLayout(lake).changes_uri(f"public.{table}"))
    if delta is None:
        return set()
    rows = read_sql(delta, f"SELECT {table}_id FROM t")
    return {str(v) for v in rows.column(0).to_pylist()}


@contextmanager
def _killed_at_the_end(run: RunProcess) -> Iterator[subprocess.Popen]:
    """`run` started in its own new home and killed with SIGKILL when the block ends; then
    its orphaned kinesalite is waited out."""
    run.home.mkdir()
    process = run.start()
    try:
        yield process
    finally:
        kill_9(process)
    wait_for(lambda: not kinesalite_pids(run.lake / "_local" / "kinesis"), 30, "the orphaned kinesalite to exit")


def test_kill_9_before_the_first_snapshot_is_durable_keeps_no_row_deleted_before_the_restart(totesys_dsn, home):
    """`totes run` killed after its first snapshot reached the lake but before the lake
    watermark confirmed it; rows deleted; `totes run --until-caught-up`: the deleted rows must not stay
    live in the warehouse, as they would not after an uninterrupted run.

    Taking the snapshot again here would be wrong: the first snapshot's rows still reach the
    lake, a second snapshot would lack the deleted rows, and no event would ever delete them.
    Once every snapshot row is in the lake, the reader records it and a restart resumes from
    the slot, which streams the deletes."""
    with Simulator(totesys_dsn, seed=61) as simulator:
        simulator.seed_history(2)
    for attempt in range(5):
        run = RunProcess(totesys_dsn, home / f"attempt-{attempt}", slot=f"e2e_early_{attempt}")
        with _killed_at_the_end(run) as process:
            # The kill lands as soon as the reader records the snapshot as written to the lake:
            # the snapshot goes straight there in well under a second, so a fixed delay missed it.
            wait_for(
                lambda: _reader_state(run).get("snapshot_published") or _reader_state(run).get("snapshot_done"),
                60,
                "the snapshot in the lake",
                process,
                run.log_tail,
                interval=0.005,
            )
        state = _reader_state(run)
        if state.get("snapshot_done"):
            continue  # too late: the snapshot was confirmed
        published = _lake_snapshot_keys(run.lake, "sales_order")
        if published and state.get("snapshot_published"):
            break
        execute(totesys_dsn, "SELECT pg_drop_replication_slot(%s)", (run.slot,))
    else:
        pytest.fail("no kill landed between the snapshot's publication and its confirmation")

    gone = sorted(published, key=int)[:3]
    assert execute(totesys_dsn, "DELETE FROM sales_order WHERE sales_order_id = ANY(%s::int[])", (gone,)) == 3
    _catch_up_without_ghosts(totesys_dsn, run, gone, timeout=180)


def _catch_up_without_ghosts(dsn: str, run, gone: list[str], timeout: float) -> None:
    """`totes run --until-caught-up` exits 0, and the warehouse equals the source with none of
    the sales orders `gone` (deleted at the source) live in it."""
    final = run.start("--until-caught-up")
    try:
        final.wait(timeout)
    finally:
        if final.poll() is None:
            kill_9(final)
    assert final.returncode == 0, run.log_tail()

    with DuckDBTarget(run.warehouse) as target:
        check_against_source(target, read_source(dsn), policy=run.policy, gone=gone)


def test_kill_9_in_the_middle_of_the_first_snapshot_keeps_no_row_deleted_before_the_restart(
    totesys_dsn, shared_snapshot, home
):
    """`totes run` killed while its first snapshot is being read, part of it already in the
    lake; rows of that part deleted or changed; `totes run --until-caught-up`: the warehouse
    equals the source, the deleted rows are not live there.

    A new snapshot from a new slot would lack the deleted rows while the first one's rows are
    in the lake already. The reader keeps the slot, which streams the deletes, reads the
    chunks the lake lacks under a new snapshot, and lets the warehouse move on only once the
    lake holds them."""
    load_snapshot(totesys_dsn, shared_snapshot(REAL_SNAPSHOT))
    for attempt in range(6):
        run = RunProcess(totesys_dsn, home / f"attempt-{attempt}", slot=f"e2e_midway_{attempt}")
        with _killed_at_the_end(run) as process:
            wait_for(
                lambda: _reader_state(run).get("snapshot_lsn"), 60, "the slot", process, run.log_tail, interval=0.02
            )
            wait_for(
                lambda: _lake_snapshot_keys(run.lake, "sales_order"),
                60,
                "sales orders in the lake",
                process,
                run.log_tail,
                interval=0.02,
            )
        state = _reader_state(run)
        if not (state.get("snapshot_published") or state.get("snapshot_done")):
            published = _lake_snapshot_keys(run.lake, "sales_order")
            if len(published) >= 6:
                break
        execute(totesys_dsn, "SELECT pg_drop_replication_slot(%s)", (run.slot,))
    else:
        pytest.fail("no kill landed in the middle of the first snapshot")

    gone, _ = delete_and_change_sales_orders(totesys_dsn, sorted(published, key=int))
    _catch_up_without_ghosts(totesys_dsn, run, gone, timeout=300)
    after = _reader_state(run)  # the same slot, its snapshot made whole
    assert after.get("snapshot_done") and after.get("snapshot_lsn") == state["snapshot_lsn"], after
