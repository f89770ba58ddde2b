"""`totes run --until-caught-up`, `totes sync` and `totes query --example` as processes, on a
simulated totesys: the one-process pipeline and the separate sync give the same warehouse."""

from __future__ import annotations

import json
from datetime import datetime

import duckdb
import pytest

from tests.conftest import make_scratch_dir
from totesys.simulator import Simulator
from warehouse_sync.examples import EXAMPLES
from tests.cli_helpers import totes

TABLES = (
    "fact_sales_order",
    "fact_purchase_order",
    "fact_payment",
    "dim_date",
    "dim_staff",
    "dim_location",
    "dim_design",
    "dim_currency",
    "dim_counterparty",
    "dim_transaction",
    "dim_payment_type",
)


def table_rows(path: str, table: str) -> list[tuple]:
    with duckdb.connect(path, read_only=True) as connection:
        return connection.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()


@pytest.mark.slow
def test_run_until_caught_up_then_sync_and_examples(totesys_dsn):
    with Simulator(totesys_dsn, seed=41) as simulator:
        simulator.seed_history(20, until=datetime(2024, 11, 15, 18))
        simulator.run_live(rate=0, events=40)
    home = make_scratch_dir("totes-run-")
    lake, warehouse = str(home / "lake"), str(home / "warehouse.duckdb")

    run = totes(
        "run", "--source", totesys_dsn, "--lake", lake, "--warehouse", warehouse, "--until-caught-up", home=home
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with duckdb.connect(warehouse, read_only=True) as connection:
        (orders,) = connection.execute("SELECT count(*) FROM fact_sales_order WHERE is_current").fetchone()
    import psycopg2

    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM sales_order")
        assert cur.fetchone() == (orders,)

    # Every stage reports in `totes status`, and a run that ended holds nothing back.
    status = totes("status", "--dsn", totesys_dsn, home=home)
    assert status.returncode == 0, status.stderr
    assert "watermark" in status.stdout and "warehouse  up to" in status.stdout
    watermark = status.stdout.split("watermark ", 1)[1].split()[0]
    assert f"warehouse  up to {watermark}" in status.stdout

    # The separate, scheduled sync builds the same warehouse from the same lake.
    other = str(home / "other.duckdb")
    once = totes("sync", "--once", "--emf", "--lake", lake, "--warehouse", other, home=home)
    assert once.returncode == 0, once.stderr[-3000:]
    assert '"SyncRuns"' in once.stdout and '"service":"sync"' in once.stdout.replace(" ", ""), once.stdout
    for table in TABLES:
        assert table_rows(other, table) == table_rows(warehouse, table), table

    for name in EXAMPLES:
        result = totes("query", "--example", name, "--warehouse", warehouse, "--format", "json", home=home)
        assert result.returncode == 0, (name, result.stderr[-2000:])
        assert json.loads(result.stdout), name
