"""The whole pipeline end to end, through real threads and processes: a real PostgreSQL
source, a real kinesalite, a real Delta lake folder and a real DuckDB warehouse file.

What is expected always comes from the SOURCE DATABASE, never from the pipeline's own
output: its tables read back as text and transformed by the test's own SQL
(`tests.expected_warehouse`), and for history an audit trail of every version of every
sales_order, purchase_order and payment row, kept by triggers inside the source
(`tests.e2e_helpers`).

1. The real 2024-11-15 totesys snapshot, loaded into PostgreSQL, run until caught up:
   every warehouse table equals the transform of the source, one fact row per source row.
2. A mixed live workload with chaos and SQL edits while the pipeline runs: dimensions,
   current facts, deletions and every fact version agree with the source and its audit.
3. `totes run` killed with -9 at random moments during a live workload, then run with
   `--until-caught-up`: the warehouse is the one an uninterrupted run gives (same checks as 2,
   plus contiguous record ids in LSN order and a change log without doubles), the orphaned
   kinesalite goes away and its data directory serves the next run.
4. `totes run` killed after its first snapshot was acknowledged by the stream but before the
   lake confirmed it, a few rows deleted, then run again: the rows deleted meanwhile must not stay
   live in the warehouse.
5. The same with the kill in the middle of the first snapshot, part of it in the stream.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time

import polars as pl
import pytest

from cdc_reader.personal_data import NO_POLICY, Policy
from lake.delta_io import read_sql
from lake.layout import LakeLayout
from tests.conftest import make_scratch_dir
from tests.e2e_helpers import (
    FACT_SOURCES,
    audit_trail,
    check_against_source,
    check_deleted_rows_visible,
    check_versions,
    current_lsn,
    execute,
    install_audit,
    read_source,
    utc_today,
)
from tests.run_process import RunProcess, kill_9, kinesalite_pids, slot_confirmed, wait_for
from tests.warehouse_fixtures import assert_same_warehouse, dump_warehouse, read_table_sorted
from totes_cli.pipeline import Pipeline, PipelineConfig
from totesys.simulator import Simulator
from totesys.snapshots import load_snapshot
from warehouse_sync import DuckDBTarget
from warehouse_sync.schema import CHECKPOINT, FACTS

pytestmark = pytest.mark.slow

REAL_SNAPSHOT = "snapshot_2024-11-15_aidan-mooney"
REAL_ROWS = {"sales_order": 11_187, "purchase_order": 4_649, "payment": 15_836}


@pytest.fixture
def home():
    """A scratch folder for one pipeline's lake and warehouse (short path: kinesalite and
    PostgreSQL sockets dislike long ones), removed afterwards unless TOTES_E2E_KEEP is set."""
    path = make_scratch_dir("totes-e2e-")
    yield path
    if os.environ.get("TOTES_E2E_KEEP"):
        print(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


class PipelineThread:
    """`Pipeline.run()` in a thread, stopped on demand; stage errors fail the test."""

    def __init__(self, config: PipelineConfig):
        self.pipeline = Pipeline(config)
        self.thread = threading.Thread(target=self.pipeline.run, name="e2e-pipeline", daemon=True)
        self.thread.start()

    def wait_caught_up(self, lsn: int, timeout: float) -> None:
        def done():
            assert not self.pipeline.errors, self.pipeline.errors
            assert self.thread.is_alive(), "the pipeline stopped"
            return self.pipeline.caught_up_with(lsn)

        wait_for(done, timeout, f"the warehouse to reach {lsn:X}")

    def stop(self) -> None:
        self.pipeline.stop.set()
        self.thread.join(90)
        assert not self.thread.is_alive(), "the pipeline did not shut down"
        assert not self.pipeline.errors, self.pipeline.errors


def _config(dsn: str, home, **overrides) -> PipelineConfig:
    return PipelineConfig(
        source_dsn=dsn, lake=str(home / "lake"), warehouse=str(home / "warehouse.duckdb"), **overrides
    )


# -- 1. real data -------------------------------------------------------------------------------


def test_real_snapshot_through_the_whole_pipeline_equals_a_transform_of_the_source(
    totesys_dsn, shared_snapshot, home, own_kinesalite
):
    loaded = load_snapshot(totesys_dsn, shared_snapshot(REAL_SNAPSHOT))
    assert {t: loaded[t] for t in REAL_ROWS} == REAL_ROWS
    first_day = utc_today()
    pipeline = Pipeline(_config(totesys_dsn, home))
    runner = threading.Thread(target=pipeline.run, kwargs={"until_caught_up": True}, daemon=True)
    runner.start()
    runner.join(240)
    if runner.is_alive():
        pipeline.stop.set()
        runner.join(60)
        pytest.fail("the pipeline did not catch up within 240 s")
    assert not pipeline.errors, pipeline.errors
    assert pipeline.reader.metrics.snapshot_events == sum(loaded.values())

    rows = read_source(totesys_dsn)
    with DuckDBTarget(home / "warehouse.duckdb") as target:
        check_against_source(target, rows, (first_day, utc_today()))
        for fact in FACTS:
            facts = read_table_sorted(target, fact.name)
            # one version per source row, all current, all from the snapshot, ids 1..N
            assert facts.height == len(rows[FACT_SOURCES[fact.name]]) == REAL_ROWS[FACT_SOURCES[fact.name]]
            assert facts.select("is_current", "is_deleted", "source_op").unique().rows() == [(True, False, "r")]
            assert facts[fact.key].to_list() == list(range(1, facts.height + 1))
        assert "Leds" in read_table_sorted(target, "dim_staff")["location"].to_list()


# -- 2. a mixed live workload -------------------------------------------------------------------


def _sql_edits(dsn: str, label: str) -> dict[str, int]:
    """A department rename and an address change (reaching dim_staff, dim_location and
    dim_counterparty), a silent update and a settlement of a few payments, each in its own
    transaction, as the back office would type them."""
    now = "(now() AT TIME ZONE 'UTC')::timestamp(3)"
    return {
        "department": execute(
            dsn,
            f"UPDATE department SET department_name = department_name || ' {label}', "
            f"last_updated = {now} WHERE department_id = "
            "(SELECT department_id FROM staff ORDER BY staff_id LIMIT 1)",
        ),
        "address": execute(
            dsn,
            f"UPDATE address SET city = 'E2E City {label}', address_line_2 = NULL, "
            f"last_updated = {now} WHERE address_id = "
            "(SELECT legal_address_id FROM counterparty ORDER BY counterparty_id LIMIT 1)",
        ),
        "silent": execute(
            dsn,
            "UPDATE sales_order SET agreed_delivery_date = "
            "(agreed_delivery_date::date + 3)::text WHERE sales_order_id = "
            "(SELECT min(sales_order_id) FROM sales_order)",
        ),
        "settled": execute(
            dsn,
            f"UPDATE payment SET paid = true, last_updated = {now} WHERE payment_id IN "
            "(SELECT payment_id FROM payment WHERE NOT paid ORDER BY payment_id DESC LIMIT 3)",
        ),
    }


def _check_workload(target, dsn: str, baseline, days, policy: Policy = NO_POLICY) -> dict[str, int]:
    rows = read_source(dsn)
    trail = audit_trail(dsn)
    check_against_source(target, rows, days, policy)
    deleted = check_deleted_rows_visible(target, rows, trail)
    checked = check_versions(target, baseline, trail)
    return {"deleted": deleted, **checked, "audited": sum(len(v) for t in trail.values() for v in t.values())}


def test_mixed_live_workload_with_chaos_reaches_the_warehouse_version_by_version(totesys_dsn, home, own_kinesalite):
    with Simulator(totesys_dsn, seed=41) as simulator:
        simulator.seed_history(4)
    install_audit(totesys_dsn)
    baseline = read_source(totesys_dsn)
    first_day = utc_today()
    start = current_lsn(totesys_dsn)

    # Lake maintenance every second, beside the writers and the sync: it must change nothing.
    runner = PipelineThread(
        _config(totesys_dsn, home, heartbeat_seconds=1.0, batch_window=0.3, sync_interval=0.5, maintain_every=1.0)
    )
    try:
        runner.wait_caught_up(start, 120)  # the initial snapshot is in: what follows is streamed
        business = Simulator(totesys_dsn, seed=42)
        try:
            business.run_live(rate=0, events=30, chaos=True, chaos_every=4)
            edits = _sql_edits(totesys_dsn, "(renamed)")
            rounds = runner.pipeline.maintenance.rounds
            wait_for(lambda: runner.pipeline.maintenance.rounds > rounds, 60, "a round of lake maintenance")
            business.run_live(rate=0, events=30, chaos=True, chaos_every=4)
            edits_2 = _sql_edits(totesys_dsn, "(again)")
        finally:
            business.close()
        kinds = business.stats.counts()
        runner.wait_caught_up(current_lsn(totesys_dsn), 180)
    finally:
        runner.stop()
    maintained = runner.pipeline.maintenance
    assert maintained.files_compacted > 0, maintained
    assert all(edits.values()) and all(edits_2.values()), (edits, edits_2)
    assert {"toast_insert", "toast_update", "delete_payment", "delete_sales_order", "add_column", "bulk_import"} <= set(
        kinds
    ), kinds

    with DuckDBTarget(home / "warehouse.duckdb") as target:
        summary = _check_workload(target, totesys_dsn, baseline, (first_day, utc_today()))
        staff = read_table_sorted(target, "dim_staff").sort("staff_id")
        assert staff["department_name"][0].endswith("(renamed) (again)")
        assert (
            read_table_sorted(target, "dim_counterparty").sort("counterparty_id")["counterparty_legal_city"][0]
            == "E2E City (again)"
        )
        toasted = read_table_sorted(target, "dim_design").filter(pl.col("file_location").str.len_bytes() > 8000)
        assert toasted.height >= 1
    assert summary["deleted"] >= 2 and summary["fact_sales_order"] > 700, summary


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
    with Simulator(totesys_dsn, seed=51) as simulator:
        simulator.seed_history(3)
    install_audit(totesys_dsn)
    baseline = read_source(totesys_dsn)
    first_day = utc_today()
    start = current_lsn(totesys_dsn)
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
        run.home.mkdir()
        kinesis_dir = run.lake / "_local" / "kinesis"
        process = run.start()
        try:
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
        finally:
            kill_9(process)
        wait_for(lambda: not kinesalite_pids(kinesis_dir), 30, "the orphaned kinesalite to exit")
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
        facts = read_table_sorted(target, "fact_sales_order")
        ghosts = facts.filter(
            pl.col("is_current") & ~pl.col("is_deleted") & pl.col("sales_order_id").is_in([int(k) for k in gone])
        )
        assert ghosts.height == 0, f"sales orders deleted at the source are live in the warehouse:\n{ghosts}"
        check_against_source(target, read_source(dsn), policy=run.policy)


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
        run.home.mkdir()
        kinesis_dir = run.lake / "_local" / "kinesis"
        process = run.start()
        try:
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
        finally:
            kill_9(process)
        wait_for(lambda: not kinesalite_pids(kinesis_dir), 30, "the orphaned kinesalite to exit")
        state = _reader_state(run)
        if not (state.get("snapshot_published") or state.get("snapshot_done")):
            published = _lake_snapshot_keys(run.lake, "sales_order")
            if len(published) >= 6:
                break
        execute(totesys_dsn, "SELECT pg_drop_replication_slot(%s)", (run.slot,))
    else:
        pytest.fail("no kill landed in the middle of the first snapshot")

    ids = sorted(published, key=int)
    gone, changed = ids[:3], ids[3:6]
    assert execute(totesys_dsn, "DELETE FROM sales_order WHERE sales_order_id = ANY(%s::int[])", (gone,)) == 3
    assert (
        execute(
            totesys_dsn,
            "UPDATE sales_order SET units_sold = units_sold + 1000 WHERE sales_order_id = ANY(%s::int[])",
            (changed,),
        )
        == 3
    )
    _catch_up_without_ghosts(totesys_dsn, run, gone, timeout=300)
    after = _reader_state(run)  # the same slot, its snapshot made whole
    assert after.get("snapshot_done") and after.get("snapshot_lsn") == state["snapshot_lsn"], after
