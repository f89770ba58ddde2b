"""`totes verify`: source, lake and warehouse compared at one LSN, chunk by chunk.

The pure core (chunk plans, hashing, drill-down) is tested over Arrow tables; the rest
against a real PostgreSQL, a real pipeline (kinesalite, Delta, DuckDB) and real planted
divergences."""

from __future__ import annotations

import threading

import duckdb
import pytest

from tests.conftest import scratch_folder
from tests.run_process import wait_for
from totes_cli.pipeline import Pipeline, PipelineConfig
from totesys.schema import TABLES
from verify.core import TableReport
from tests.run_process import _config, _plant_lake_extra, _seed


# -- against a real pipeline --------------------------------------------------------------------


@pytest.fixture
def home():
    yield from scratch_folder("totes-verify-")


class Running:
    def __init__(self, config: PipelineConfig):
        self.pipeline = Pipeline(config)
        self.thread = threading.Thread(target=self.pipeline.run, name="verify-pipeline", daemon=True)
        self.thread.start()

    def caught_up(self, dsn: str, timeout: float = 180) -> None:
        from tests.reader_harness import current_lsn

        lsn = current_lsn(dsn)
        wait_for(lambda: not self.pipeline.errors and self.pipeline.caught_up_with(lsn), timeout, "the warehouse")

    def stop(self) -> None:
        self.pipeline.stop.set()
        self.thread.join(90)
        assert not self.thread.is_alive() and not self.pipeline.errors, self.pipeline.errors


def _verify(dsn, home, **kwargs):
    from verify.run import verify

    return verify(dsn, str(home / "lake"), str(home / "warehouse.duckdb"), TABLES, chunk_rows=20, **kwargs)


def _reports(result) -> dict[tuple[str, str], TableReport]:
    return {(r.side, r.table): r for r in result.reports}


@pytest.mark.slow
def test_verify_under_a_live_workload_reports_every_table_in_sync(totesys_dsn, home, own_kinesalite):
    from totesys.simulator import Simulator

    _seed(totesys_dsn)
    running = Running(_config(totesys_dsn, home))
    try:
        running.caught_up(totesys_dsn)
        stop = threading.Event()

        def business() -> None:
            with Simulator(totesys_dsn, seed=12) as simulator:
                simulator.run_live(rate=40, stop_event=stop)

        writer = threading.Thread(target=business, daemon=True)
        writer.start()
        try:
            result = _verify(totesys_dsn, home)
        finally:
            stop.set()
            writer.join(30)
        assert result.in_sync, [
            (r.table, r.side, r.missing[:3], r.extra[:3], list(r.different.items())[:3])
            for r in result.reports
            if not r.in_sync
        ]
        reports = _reports(result)
        assert reports[("lake", "public.sales_order")].rows > 0
        assert reports[("lake", "public.sales_order")].chunks > 1  # read in key ranges
        assert {"fact_sales_order", "fact_payment", "dim_staff", "dim_counterparty"} <= {
            r.table for r in result.reports if r.side == "warehouse"
        }
    finally:
        running.stop()


@pytest.mark.slow
def test_every_planted_divergence_is_found_with_its_key_and_repaired(totesys_dsn, home, own_kinesalite):
    import psycopg2
    from deltalake import DeltaTable

    from lake.layout import LakeLayout
    from verify.repair import repair

    _seed(totesys_dsn)
    config = _config(totesys_dsn, home)
    running = Running(config)
    running.caught_up(totesys_dsn)
    running.stop()
    assert _verify_when_running(config, totesys_dsn, home).in_sync

    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT min(payment_id) FROM payment), (SELECT min(sales_order_id) FROM sales_order), "
            "(SELECT max(purchase_order_id) FROM purchase_order), (SELECT min(design_id) FROM design)"
        )
        payment, sales_order, purchase_order, design = cur.fetchone()
    conn.close()
    layout = LakeLayout(home / "lake")
    # a lake event removed
    DeltaTable(layout.changes_uri("public.payment")).delete(f"payment_id = {payment}")
    # an extra row in the lake
    _plant_lake_extra(totesys_dsn, layout, 10**6)
    warehouse = duckdb.connect(str(home / "warehouse.duckdb"))
    # a warehouse row edited, a fact version missing, a dim value wrong, an extra warehouse row
    warehouse.execute(
        f"UPDATE fact_sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = {sales_order} AND is_current"
    )
    warehouse.execute(f"DELETE FROM fact_purchase_order WHERE purchase_order_id = {purchase_order} AND is_current")
    warehouse.execute(f"UPDATE dim_design SET design_name = 'not the source''s' WHERE design_id = {design}")
    # a calendar day's value wrong, a day the transform never makes
    wrong_day = warehouse.execute("SELECT min(date_id) + 3 FROM dim_date").fetchone()[0]
    warehouse.execute("UPDATE dim_date SET day_name = 'Funday' WHERE date_id = ?", [wrong_day])
    warehouse.execute("INSERT INTO dim_date SELECT DATE '2001-02-03', 2001, 2, 3, 6, 'Saturday', 'February', 1")
    warehouse.execute(
        "INSERT INTO fact_payment SELECT * REPLACE (payment_record_id + 100000 AS payment_record_id, "
        f"2000000 AS payment_id) FROM fact_payment WHERE payment_id = {payment} AND is_current"
    )
    warehouse.close()

    found = _verify_when_running(config, totesys_dsn, home)
    reports = _reports(found)
    assert not found.in_sync
    assert reports[("lake", "public.payment")].missing == [payment]
    assert reports[("lake", "public.sales_order")].extra == [10**6]
    assert reports[("warehouse", "fact_sales_order")].different == {sales_order: ["units_sold"]}
    lost = reports[("warehouse", "fact_purchase_order")]
    assert lost.missing == [purchase_order] or list(lost.different) == [purchase_order]
    assert reports[("warehouse", "dim_design")].different == {design: ["design_name"]}
    assert reports[("warehouse", "fact_payment")].extra == [2000000]
    assert reports[("warehouse", "dim_date")].different == {wrong_day: ["day_name"]}
    assert [str(d) for d in reports[("warehouse", "dim_date")].extra] == ["2001-02-03"]
    untouched = [r for r in found.reports if r.in_sync]
    assert {("lake", "public.staff"), ("warehouse", "dim_staff")} <= {(r.side, r.table) for r in untouched}
    assert set(found.diverged_sources()) == {"payment", "sales_order", "purchase_order", "design"}

    repaired = repair(config, found.diverged_sources(), found, timeout=60, chunk_rows=20, all_tables=TABLES)
    assert repaired.in_sync, [
        (r.table, r.side, r.missing[:3], r.extra[:3], list(r.different.items())[:3])
        for r in repaired.reports
        if not r.in_sync
    ]
    assert repaired.lsn > found.lsn


@pytest.mark.slow
def test_verify_compares_a_postgresql_warehouse_and_finds_what_differs_in_it(
    totesys_dsn, empty_database, home, own_kinesalite
):
    import psycopg2

    _seed(totesys_dsn)
    config = PipelineConfig(source_dsn=totesys_dsn, lake=str(home / "lake"), warehouse=empty_database)
    running = Running(config)
    running.caught_up(totesys_dsn)
    running.stop()
    in_sync = _verify_when_running(config, totesys_dsn, home)
    assert in_sync.in_sync, [
        (r.table, r.side, r.missing[:3], r.extra[:3], list(r.different.items())[:3])
        for r in in_sync.reports
        if not r.in_sync
    ]
    assert {"fact_sales_order", "fact_payment", "dim_design", "dim_staff", "dim_date"} <= {
        r.table for r in in_sync.reports if r.side == "warehouse"
    }
    assert in_sync.warehouse_lsn is not None and in_sync.warehouse_lsn >= in_sync.lsn

    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT (SELECT min(sales_order_id) FROM sales_order), (SELECT min(design_id) FROM design)")
        sales_order, design = cur.fetchone()
    conn.close()
    with psycopg2.connect(empty_database) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE fact_sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = %s AND is_current",
            (sales_order,),
        )
        cur.execute("UPDATE dim_design SET design_name = 'not the source''s' WHERE design_id = %s", (design,))
        cur.execute("SELECT min(date_id) FROM dim_date")
        first_day = cur.fetchone()[0]
        cur.execute("UPDATE dim_date SET month_name = 'Smarch' WHERE date_id = %s", (first_day,))
    conn.close()

    found = _verify_when_running(config, totesys_dsn, home)
    reports = _reports(found)
    assert reports[("warehouse", "fact_sales_order")].different == {sales_order: ["units_sold"]}
    assert reports[("warehouse", "dim_design")].different == {design: ["design_name"]}
    assert reports[("warehouse", "dim_date")].different == {first_day: ["month_name"]}
    assert {(r.side, r.table) for r in found.reports if not r.in_sync} == {
        ("warehouse", "fact_sales_order"),
        ("warehouse", "dim_design"),
        ("warehouse", "dim_date"),
    }


def _verify_when_running(config, dsn, home):
    from verify.repair import verify_with_pipeline

    return verify_with_pipeline(config, TABLES, timeout=60, chunk_rows=20)


@pytest.mark.slow
def test_totes_verify_prints_json_and_exits_0_in_sync_and_one_sentence_when_the_pipeline_is_not_running(
    totesys_dsn, home, own_kinesalite, monkeypatch
):
    import json

    from typer.testing import CliRunner

    from totes_cli.app import app

    monkeypatch.setenv("TOTES_HOME", str(home))
    args = [
        "verify",
        "--source",
        totesys_dsn,
        "--lake",
        str(home / "lake"),
        "--warehouse",
        str(home / "warehouse.duckdb"),
        "--chunk-rows",
        "25",
    ]
    _seed(totesys_dsn)
    from totes_cli.personal_data_config import personal_data_policy

    # the pipeline under the policy the command reads too (the totesys defaults, the lake's own key):
    # the source is compared as the reader lets it leave, hashed e-mails and phones included
    running = Running(_config(totesys_dsn, home, personal_data=personal_data_policy(str(home / "lake"))))
    try:
        running.caught_up(totesys_dsn)
        result = CliRunner().invoke(app, [*args, "--json"], env={"COLUMNS": "200"})
    finally:
        running.stop()
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["in_sync"] and report["mismatched"] == 0
    assert {t["table"] for t in report["tables"]} >= {"public.sales_order", "fact_sales_order", "dim_staff"}
    assert all(t["rows"] > 0 for t in report["tables"] if t["table"] == "public.sales_order")

    stopped = CliRunner().invoke(app, [*args, "--timeout", "1"], env={"COLUMNS": "200"})
    assert stopped.exit_code == 2
    lines = stopped.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is the pipeline running?" in lines[0], stopped.output
