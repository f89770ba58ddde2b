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
3.-5. `totes run` killed with -9 and restarted: test_end_to_end_kill.py.
"""

from __future__ import annotations

import threading

import polars as pl
import pytest

from tests.e2e_helpers import REAL_SNAPSHOT, check_workload as _check_workload
from tests.run_process import PipelineThread, _config
from tests.run_process import e2e_home  # noqa: F401  (the `home` fixture)
from tests.e2e_helpers import (
    FACT_SOURCES,
    check_against_source,
    current_lsn,
    execute,
    read_source,
    seed_audited,
    utc_today,
)
from tests.run_process import wait_for
from tests.warehouse_fixtures import read_table_sorted
from totes_cli.pipeline import Pipeline
from totesys.simulator import Simulator
from totesys.snapshots import load_snapshot
from warehouse_sync import DuckDBTarget
from warehouse_sync.schema import FACTS

pytestmark = pytest.mark.slow

REAL_ROWS = {"sales_order": 11_187, "purchase_order": 4_649, "payment": 15_836}


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


def test_mixed_live_workload_with_chaos_reaches_the_warehouse_version_by_version(totesys_dsn, home, own_kinesalite):
    baseline, first_day, start = seed_audited(totesys_dsn, seed=41, days=4)

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
