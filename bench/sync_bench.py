"""`python -m bench sync [--quick]`: the warehouse sync alone, from a lake into DuckDB and into
PostgreSQL: an initial load of snapshot events, then a backlog of updates.

The lake is written once, straight with the lake's own writers (no source, no Kinesis):

* **snapshot**: the real snapshot `../shared/data/totesys/snapshot_2024-11-15_aidan-mooney`
  (all 11 tables) as the reader's `op='r'` events at one LSN, and N generated sales orders
  (1,000,000; 100,000 with `--quick`) at the same LSN in chunks of 100,000, as the bulk
  snapshot writes them (`lake.snapshot_load.changelog_rows`);
* **backlog**: N updates of those orders (every order once: `units_sold`, `unit_price`,
  `last_updated` change), in transactions of 10,000 (one LSN each).

Then, for each engine, a child process per step runs `sync_once` on a fresh warehouse: up
to the snapshot's LSN (events/s = snapshot events / wall time), then up to the backlog's
end (changes/s = updates / wall time). Each child reports its wall and CPU seconds (all its
threads: DuckDB's too) and its peak RSS (VmHWM); the PostgreSQL server's CPU is not counted.

`TOTES_BENCH_BEFORE=DIR` (a checkout of an earlier version, e.g. `git worktree add DIR
<commit>`) runs every step with that code first, then with this one, back to back on the
same lake and machine load: the comparison the bench/README rows quote.
`TOTES_BENCH_ENGINES=duckdb` runs one engine only (default: `duckdb,postgresql`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess  # nosec B404 # fixed argv lists, never a shell
import sys
import tempfile
import textwrap
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from bench import BACKLOG_TARGET, REAL_SNAPSHOT, RSS_TARGET_MB, Report, Row

NAME = "sync"
DESCRIPTION = "warehouse sync alone: snapshot events and a backlog of updates from a lake into DuckDB and PostgreSQL"
SNAPSHOT_LSN = 0x1_0000_0000
FIRST_ORDER = 1_000_001
CHUNK_ROWS = 100_000
UPDATES_PER_TRANSACTION = 10_000
TODAY = date(2024, 11, 18)

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from datetime import date
    code, lake, warehouse, upto, today = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    if code:
        sys.path.insert(0, code)
    from warehouse_sync import open_target, sync_once
    target = open_target(warehouse)
    started, cpu = time.perf_counter(), time.process_time()
    result = sync_once(lake, target, upto, today=date.fromisoformat(today))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    target.close()
    hwm = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    print(json.dumps({"events": result.events, "slices": [n for _, n in result.slices], "seconds": seconds,
                      "cpu_seconds": cpu, "peak_rss_mb": hwm}))
""")


# -- the lake ------------------------------------------------------------------------------


def _order_text(first: int, count: int, version: int, ids: pl.Series | None = None) -> pl.DataFrame:
    """Sales orders `first…first+count-1` (or those of `ids`, numbered from `first`) as COPY's
    text columns (version 1: updated)."""
    order = ids if ids is not None else pl.int_range(first, first + count, eager=True, dtype=pl.Int64)
    frame = pl.DataFrame({"id": order})
    minute = pl.col("id") - first

    def stamp(expr: pl.Expr) -> pl.Expr:
        return expr.dt.strftime("%Y-%m-%d %H:%M:%S%.3f")

    created = pl.datetime(2024, 5, 1, 9) + pl.duration(minutes=minute)
    return frame.select(
        sales_order_id=pl.col("id").cast(pl.String),
        created_at=stamp(created),
        last_updated=stamp(created + pl.duration(seconds=version)),
        design_id=(1 + pl.col("id") % 12).cast(pl.String),
        staff_id=(1 + pl.col("id") % 20).cast(pl.String),
        counterparty_id=(1 + pl.col("id") % 20).cast(pl.String),
        units_sold=(1000 + (pl.col("id") * 37 + version * 11) % 99000).cast(pl.String),
        unit_price=((200 + (pl.col("id") + version) % 200) / 100).round(2).cast(pl.String),
        currency_id=(1 + pl.col("id") % 3).cast(pl.String),
        agreed_delivery_date=pl.lit("2024-06-") + (1 + pl.col("id") % 28).cast(pl.String).str.zfill(2),
        agreed_payment_date=pl.lit("2024-07-") + (1 + (pl.col("id") + version) % 28).cast(pl.String).str.zfill(2),
        agreed_delivery_location_id=(1 + pl.col("id") % 30).cast(pl.String),
    )


def build_lake(root: Path, orders: int, say, backlog: bool = True) -> dict:
    """The snapshot and (`backlog`) the backlog in the lake at `root`; returns their LSNs and sizes."""
    import pyarrow as pa

    from lake.schemas import source_fields
    from lake.snapshot_load import TableLoad, changelog_rows
    from tests.scripted_source import SCHEMAS, snapshot_events, write_lake

    if not REAL_SNAPSHOT.is_dir():
        raise SystemExit(f"{REAL_SNAPSHOT} is missing: the orders refer to its staff, counterparties and designs")
    started = time.perf_counter()
    real = snapshot_events(REAL_SNAPSHOT, SNAPSHOT_LSN)
    layout = write_lake(root, real)
    schema = SCHEMAS["sales_order"]
    load = TableLoad(layout, schema, SNAPSHOT_LSN, fresh_appends=False)
    written_on = TODAY
    first_seq = len(real)
    load.prepare(source_fields(schema))
    for chunk, start in enumerate(range(0, orders, CHUNK_ROWS)):
        count = min(CHUNK_ROWS, orders - start)
        text = _order_text(FIRST_ORDER + start, count, 0).to_arrow()
        load.write_log(
            chunk, SNAPSHOT_LSN, changelog_rows(schema, text, SNAPSHOT_LSN, first_seq + start, chunk, written_on)
        )
    say(f"  snapshot in the lake: {len(real):,} real rows + {orders:,} orders ({time.perf_counter() - started:.0f} s)")
    if not backlog:
        return {"snapshot_lsn": SNAPSHOT_LSN, "snapshot_events": len(real) + orders}
    updates = TableLoad(layout, schema, SNAPSHOT_LSN + 1, fresh_appends=False)
    lsn = SNAPSHOT_LSN
    clock = datetime(2024, 11, 18, 9, tzinfo=timezone.utc)
    for batch, start in enumerate(range(0, orders, UPDATES_PER_TRANSACTION)):
        lsn += 0x1000
        count = min(UPDATES_PER_TRANSACTION, orders - start)
        rows = changelog_rows(schema, _order_text(FIRST_ORDER + start, count, 1).to_arrow(), lsn, 0, batch, written_on)
        names = rows.column_names
        rows = rows.set_column(names.index("_op"), "_op", pa.array(["u"] * count, pa.string()))
        rows = rows.set_column(names.index("_xid"), "_xid", pa.array([lsn // 0x1000] * count, pa.int64()))
        moment = pa.array([clock + timedelta(seconds=batch)] * count, rows.schema.field("_commit_ts").type)
        rows = rows.set_column(names.index("_commit_ts"), "_commit_ts", moment)
        rows = rows.set_column(names.index("_shard"), "_shard", pa.array(["shardId-000000000000"] * count, pa.string()))
        updates.write_log(batch, lsn, rows)
    say(
        f"  backlog in the lake: {orders:,} updates in transactions of {UPDATES_PER_TRANSACTION:,} "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return {"snapshot_lsn": SNAPSHOT_LSN, "snapshot_events": len(real) + orders, "end_lsn": lsn, "updates": orders}


# -- one sync in a child process -------------------------------------------------------------


def sync_child(code: str, lake: Path, warehouse: str, upto: int, child: str = CHILD, after: tuple = ()) -> dict:
    """Run `child` (argv: code, lake, warehouse, upto, today, *after) with `code` first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOTES_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (code, str(Path(__file__).resolve().parents[1])) if p)
    done = subprocess.run(
        [sys.executable, "-c", child, code, str(lake), warehouse, str(upto), TODAY.isoformat(), *after],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )  # nosec B603 # fixed argv
    if done.returncode != 0:
        raise RuntimeError(f"the sync failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def versions() -> list[tuple[str, str]]:
    before = os.environ.get("TOTES_BENCH_BEFORE")
    here = ("this version", str(Path(__file__).resolve().parents[1]))
    return ([("before", str(Path(before).resolve()))] if before else []) + [here]


def _load_text(run: dict, unit: str) -> str:
    rate = run["events"] / run["seconds"]
    return (
        f"{rate:,.0f} {unit}/s ({run['seconds']:.1f} s, {run['cpu_seconds']:.1f} s CPU); peak RSS "
        f"{run['peak_rss_mb']:.0f} MB; {len(run['slices'])} slices, largest {max(run['slices'] or [0]):,} events"
    )


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    from totesys.embedded import EmbeddedPostgres
    from totesys.schema import ensure_database

    orders = 100_000 if quick else 1_000_000
    reproduce = "`python -m bench sync" + (" --quick`" if quick else "`")
    report = Report()
    root = Path(tempfile.mkdtemp(prefix="totes-bench-sync-"))
    server = None
    try:
        lake = root / "lake"
        sizes = build_lake(lake, orders, say)
        report.raw["lake"] = sizes
        server = EmbeddedPostgres(root / "pg")
        admin = server.start()
        load = os.getloadavg()[0]
        for engine in os.environ.get("TOTES_BENCH_ENGINES", "duckdb,postgresql").split(","):
            for label, code in versions():
                name = f"{engine}, {label}"
                slug = label.replace(" ", "_")
                warehouse = (
                    str(root / f"{slug}.duckdb") if engine == "duckdb" else ensure_database(admin, f"warehouse_{slug}")
                )
                say(f"  {name}: snapshot")
                snapshot = sync_child(code, lake, warehouse, sizes["snapshot_lsn"])
                say(f"  {name}: backlog")
                backlog = sync_child(code, lake, warehouse, sizes["end_lsn"])
                report.raw[name] = {"snapshot": snapshot, "backlog": backlog}
                report.rows.append(
                    Row(
                        f"sync of {snapshot['events']:,} snapshot events into {engine} ({label})",
                        _load_text(snapshot, "events"),
                        f"peak RSS < {RSS_TARGET_MB} MB",
                        reproduce,
                    )
                )
                report.rows.append(
                    Row(
                        f"sync of a backlog of {backlog['events']:,} sales_order updates into {engine} ({label})",
                        _load_text(backlog, "changes"),
                        f">= {BACKLOG_TARGET:,} changes/s; peak RSS < {RSS_TARGET_MB} MB",
                        reproduce,
                    )
                )
        report.raw["load_average"] = [load, os.getloadavg()[0]]
        report.notes.append(f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return report
