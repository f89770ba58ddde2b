"""The load benchmark's source: the real snapshot (or static rows), generated orders, a backlog, the COPY limit."""

from __future__ import annotations

import json
import subprocess  # nosec B404 # fixed argv lists, never a shell
import time
from pathlib import Path

import psycopg2
from psycopg2 import sql

from bench import REAL_SNAPSHOT
from bench.orders import INSERT, query, start_generating
from totes_cli.bootstrap import StatePaths

INSERT_ROWS_PER_TRANSACTION = 500_000
UPDATE_ROWS_PER_TRANSACTION = 10_000


def start_source(root: Path, say):
    from totesys.embedded import EmbeddedPostgres
    from totesys.schema import create_schema, ensure_database

    server = EmbeddedPostgres(root / "pg")
    dsn = ensure_database(server.start(), "totesys")
    create_schema(dsn)
    if REAL_SNAPSHOT.is_dir():
        from totesys.snapshots import load_snapshot

        loaded = load_snapshot(dsn, REAL_SNAPSHOT)
        say(f"  loaded the real snapshot {REAL_SNAPSHOT.name}: {sum(loaded.values()):,} rows")
        source = REAL_SNAPSHOT.name
    else:
        from totesys.simulator import Simulator

        with Simulator(dsn, seed=20240101) as simulator:
            simulator.seed_static()
        say(f"  {REAL_SNAPSHOT} is missing: the simulator's static tables instead")
        source = "simulator static tables"
    return server, dsn, source


def row_counts(dsn: str) -> dict[str, int]:
    from totesys.schema import TABLES

    return {
        table: query(dsn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table)))[0][0]
        for table in TABLES
    }


def generate_orders(dsn: str, upto: int, say) -> float:
    """Insert generated sales orders until the table holds `upto`; returns the seconds taken."""

    started = time.perf_counter()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            ids, _ = start_generating(cur)
            cur.execute("SELECT count(*) FROM sales_order")
            have = cur.fetchone()[0]
            while have < upto:
                rows = min(INSERT_ROWS_PER_TRANSACTION, upto - have)
                cur.execute(INSERT, {**ids, "lo": have + 1, "hi": have + rows})
                conn.commit()
                have += rows
            cur.execute("ANALYZE sales_order")
            conn.commit()
    finally:
        conn.close()
    query(dsn, "CHECKPOINT")
    seconds = time.perf_counter() - started
    say(f"  sales_order holds {upto:,} rows ({seconds:.0f} s to generate)")
    return seconds


def update_backlog(dsn: str, changes: int) -> float:
    """`changes` updates of sales_order, in transactions of UPDATE_ROWS_PER_TRANSACTION."""
    started = time.perf_counter()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT min(sales_order_id) FROM sales_order")
            first = cur.fetchone()[0]
            done = 0
            while done < changes:
                rows = min(UPDATE_ROWS_PER_TRANSACTION, changes - done)
                cur.execute(
                    "UPDATE sales_order SET units_sold = units_sold %% 99000 + 1001 "
                    "WHERE sales_order_id BETWEEN %s AND %s",
                    (first + done, first + done + rows - 1),
                )
                conn.commit()
                done += rows
    finally:
        conn.close()
    return time.perf_counter() - started


def drop_slot_of(dsn: str, lake: Path) -> None:
    try:
        slot = json.loads(StatePaths(str(lake)).names.read_text())["slot"]
    except (OSError, ValueError, KeyError):
        return
    query(
        dsn,
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
        (slot,),
    )


def copy_limit(dsn: str, counts: dict[str, int]) -> dict:
    """Every table through `COPY ... TO STDOUT` in one psql session, its output to /dev/null:
    the server's rate of handing the rows out (one process start included, ~30 ms)."""
    from totesys.embedded import binary

    argv = [str(binary("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn]
    for table in counts:
        argv += ["-c", f'COPY public."{table}" TO STDOUT']
    started = time.perf_counter()
    subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # nosec B603
        check=True,
    )
    seconds = time.perf_counter() - started
    rows = sum(counts.values())
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}
