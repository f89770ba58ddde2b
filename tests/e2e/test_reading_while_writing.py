"""`totes query`, `totes status` and `totes dashboard` read a DuckDB warehouse while
`totes run` writes it, and only ever see whole source transactions
(warehouse_sync/read_copy.py)."""

from __future__ import annotations

import json
import signal
import urllib.request
import subprocess
import sys
import time
from datetime import datetime

import psycopg2
import pytest

from tests.browser import dashboard_process
from tests.conftest import make_scratch_dir
from tests.cli_helpers import totes
from totesys.simulator import Simulator

PAIR_SQL = """
SELECT s.units_sold AS order_units, p.item_quantity AS purchase_quantity
FROM fact_sales_order s, fact_purchase_order p
WHERE s.is_current AND p.is_current AND s.sales_order_id = {order} AND p.purchase_order_id = {purchase}
"""


def start_run(home, dsn: str, lake: str, warehouse: str) -> subprocess.Popen:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "TOTES_"))}
    env.update({"TOTES_HOME": str(home), "TOTES_CONFIG": str(home / "none.toml")})
    log = open(home / "run.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "totes_cli", "run", "--source", dsn, "--lake", lake, "--warehouse", warehouse],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def totals(address: str) -> tuple[int, int, int]:
    """(warehouse LSN, units sold, items bought) as the dashboard shows them."""
    with urllib.request.urlopen(address + "api/business", timeout=60) as response:  # nosec B310 # our own 127.0.0.1
        data = json.load(response)
    shown = {view["name"]: view["rows"] for view in data["views"]}
    return (
        data["checkpoint_lsn"],
        sum(r["units"] for r in shown["sales-by-month"]),
        sum(r["items"] for r in shown["purchase-volumes"]),
    )


def source_totals(cur) -> int:
    cur.execute("SELECT (SELECT sum(units_sold) FROM sales_order) - (SELECT sum(item_quantity) FROM purchase_order)")
    return cur.fetchone()[0]


@pytest.mark.slow
def test_query_status_and_dashboard_read_whole_transactions_while_run_writes(totesys_dsn):
    with Simulator(totesys_dsn, seed=7) as simulator:
        simulator.seed_history(10, until=datetime(2024, 11, 15, 18))
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT min(sales_order_id) FROM sales_order")
        (order,) = cur.fetchone()
        cur.execute("SELECT min(purchase_order_id) FROM purchase_order")
        (purchase,) = cur.fetchone()
        cur.execute(
            "SELECT s.units_sold, p.item_quantity FROM sales_order s, purchase_order p "
            "WHERE s.sales_order_id = %s AND p.purchase_order_id = %s",
            (order, purchase),
        )
        first = cur.fetchone()  # the pair as the snapshot has it, before the first change
        before = source_totals(cur)  # units sold minus items bought, before the first change
    home = make_scratch_dir("totes-reading-")
    lake, warehouse = str(home / "lake"), str(home / "warehouse.duckdb")
    run = start_run(home, totesys_dsn, lake, warehouse)
    source = psycopg2.connect(totesys_dsn)
    dashboard = dashboard_process(home, home / "lake", home / "warehouse.duckdb")
    address = dashboard.__enter__()
    try:
        seen: list[tuple[int, int]] = []
        shown: list[tuple[int, int, int]] = []
        step = 0
        deadline = time.monotonic() + 150
        # Until both readers have seen the warehouse move three times (a trickle like this one is
        # gathered into few lake commits, so that takes some seconds).
        while time.monotonic() < deadline and (
            len({units for units, _ in seen if units > 1000}) < 3 or len({lsn for lsn, _, _ in shown}) < 3
        ):
            # One source transaction changes an order and a purchase together, in two tables.
            step += 1
            with source.cursor() as cur:
                cur.execute(
                    "UPDATE sales_order SET units_sold = %s, last_updated = now() WHERE sales_order_id = %s",
                    (1000 + step, order),
                )
                cur.execute(
                    "UPDATE purchase_order SET item_quantity = %s, last_updated = now() WHERE purchase_order_id = %s",
                    (1000 + step, purchase),
                )
            source.commit()
            if step == 1:
                with source.cursor() as cur:
                    after = source_totals(cur)  # ... and after it: later changes keep it
            if not (home / "warehouse.duckdb").exists():
                time.sleep(0.5)
                continue
            result = totes(
                "query",
                PAIR_SQL.format(order=order, purchase=purchase),
                "--warehouse",
                warehouse,
                "--format",
                "json",
                home=home,
            )
            assert run.poll() is None, (home / "run.log").read_text()[-3000:]
            if not seen and ("no copy for readers yet" in result.stderr or "does not exist" in result.stderr):
                continue  # the first sync has not committed yet
            assert result.returncode == 0, result.stderr[-2000:]
            rows = json.loads(result.stdout)
            if rows:
                (row,) = rows
                seen.append((row["order_units"], row["purchase_quantity"]))
            shown.append(totals(address))
        assert seen, (home / "run.log").read_text()[-3000:]
        # never one half of a transaction without the other: the snapshot's pair (a copy published
        # before the first change was synced) or both halves of one change ...
        assert all((units, quantity) == first or units == quantity for units, quantity in seen), (first, seen)
        # ... and what readers see moves on while the pipeline writes
        assert len({units for units, _ in seen if units > 1000}) >= 3, seen
        # the dashboard too: each state it showed is one between two source transactions
        assert all(units - items in (before, after) for _, units, items in shown), (before, after, shown)
        assert len({lsn for lsn, _, _ in shown}) >= 3, shown

        status = totes("status", "--dsn", totesys_dsn, home=home, timeout=60)
        assert "cannot open it now" not in status.stdout, status.stdout
        assert "warehouse  up to" in status.stdout, status.stdout + status.stderr
    finally:
        dashboard.__exit__(None, None, None)
        source.close()
        run.send_signal(signal.SIGINT)
        try:
            run.wait(90)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
