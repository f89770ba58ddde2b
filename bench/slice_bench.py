"""`python -m bench slice [--quick]`: what one small slice costs the DuckDB sync on a small
warehouse and on a large one; the ratio is the figure (a slice's cost should follow the
slice, not the warehouse).

Two lakes, written once with the lake's own writers (as `bench sync` writes its lake): the
real snapshot `../shared/data/totesys/snapshot_2024-11-15_aidan-mooney` and N generated
sales orders at one LSN (small: 10,000; large: 1,000,000, `TOTES_BENCH_ORDERS` to change it,
200,000 with `--quick`), then one transaction of 1,000 updates of orders spread evenly over
the whole key range (`units_sold`, `unit_price`, `last_updated` change), as a stream of
updates to random orders touches them. Each lake's snapshot is synced once into a base
warehouse file.

Then, in rounds (two), for each size and each version of the code: the base warehouse is
copied, and a child process opens it, syncs up to the snapshot (nothing to do: schema and
lake types are read) and times `sync_once` of the one slice of 1,000 updates, then the
read copy's checkpoint and file copy (`read_copy.publish_copy`) apart.

`TOTES_BENCH_BEFORE=DIR` (a checkout of an earlier version, e.g. `git worktree add DIR
<commit>`) runs that code first in every round, then this one, on the same files.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from bench import Report, Row
from bench import sync_bench as lake_of

NAME = "slice"
DESCRIPTION = "one slice of 1,000 sales_order updates on a small and a large DuckDB warehouse, old code against new"
SMALL_ORDERS = 10_000
LARGE_ORDERS = 1_000_000
SLICE_UPDATES = 1_000
ROUNDS = 2
RATIO_TARGET = 1.2

CHILD = textwrap.dedent("""
    import json, os, sys, time
    from datetime import date
    code, lake, warehouse, upto, today, snapshot = sys.argv[1:7]
    if code:
        sys.path.insert(0, code)
    from warehouse_sync import open_target, sync_once
    from warehouse_sync.read_copy import publish_copy, published_path
    target = open_target(warehouse)
    sync_once(lake, target, int(snapshot), today=date.fromisoformat(today))
    started, cpu = time.perf_counter(), time.process_time()
    result = sync_once(lake, target, int(upto), today=date.fromisoformat(today))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    started = time.perf_counter()
    publish_copy(target.connection, warehouse, published_path(warehouse))
    publish = time.perf_counter() - started
    target.close()
    print(json.dumps({"events": result.events, "seconds": seconds, "cpu_seconds": cpu, "publish_seconds": publish,
                      "warehouse_mb": os.path.getsize(warehouse) / 1e6}))
""")


def _spread_updates(layout, orders: int, lsn: int) -> None:
    """One transaction at `lsn`: SLICE_UPDATES updates of orders spread over all `orders`."""
    import pyarrow as pa

    from lake.snapshot_load import TableLoad, changelog_rows
    from tests.scripted_source import SCHEMAS

    schema = SCHEMAS["sales_order"]
    stride = max(1, orders // SLICE_UPDATES)
    ids = pl.int_range(0, min(SLICE_UPDATES, orders), eager=True, dtype=pl.Int64) * stride + lake_of.FIRST_ORDER
    text = lake_of._order_text(lake_of.FIRST_ORDER, orders, 1).filter(
        pl.col("sales_order_id").cast(pl.Int64).is_in(ids.implode())
    )
    rows = changelog_rows(schema, text.to_arrow(), lsn, 0, 0, lake_of.TODAY)
    count, names = rows.num_rows, rows.column_names
    moment = datetime(2024, 11, 18, 9, tzinfo=timezone.utc) + timedelta(seconds=1)
    for name, values in (
        ("_op", pa.array(["u"] * count, pa.string())),
        ("_xid", pa.array([lsn // 0x1000] * count, pa.int64())),
        ("_commit_ts", pa.array([moment] * count, rows.schema.field("_commit_ts").type)),
        ("_shard", pa.array(["shardId-000000000000"] * count, pa.string())),
    ):
        rows = rows.set_column(names.index(name), name, values)
    TableLoad(layout, schema, lsn, fresh_appends=False).write_log(0, lsn, rows)


def build(root: Path, orders: int, say) -> dict:
    """A lake of the snapshot and `orders` orders, the slice after it, and the base warehouse."""
    from lake.layout import LakeLayout

    from warehouse_sync import open_target, sync_once

    started = time.perf_counter()
    lake_of.build_lake(root / "lake", orders, say, backlog=False)
    slice_lsn = lake_of.SNAPSHOT_LSN + 0x1000
    _spread_updates(LakeLayout(str(root / "lake")), orders, slice_lsn)
    target = open_target(str(root / "base.duckdb"))
    sync_once(str(root / "lake"), target, lake_of.SNAPSHOT_LSN, today=lake_of.TODAY)
    target.close()
    say(f"  {orders:,} orders: lake and warehouse in {time.perf_counter() - started:.0f} s")
    return {"orders": orders, "root": root, "snapshot_lsn": lake_of.SNAPSHOT_LSN, "slice_lsn": slice_lsn}


def _slice_child(code: str, size: dict) -> dict:
    work = size["root"] / "work.duckdb"
    for path in (work, Path(f"{work}.wal")):
        path.unlink(missing_ok=True)
    shutil.copyfile(size["root"] / "base.duckdb", work)
    return lake_of.sync_child(
        code, size["root"] / "lake", str(work), size["slice_lsn"], child=CHILD, after=(str(size["snapshot_lsn"]),)
    )


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    large = int(os.environ.get("TOTES_BENCH_ORDERS", 200_000 if quick else LARGE_ORDERS))
    reproduce = "`python -m bench slice" + (" --quick`" if quick else "`")
    report = Report()
    root = Path(tempfile.mkdtemp(prefix="totes-bench-slice-"))
    try:
        sizes = [build(root / "small", SMALL_ORDERS, say), build(root / "large", large, say)]
        load = os.getloadavg()[0]
        runs: dict[str, dict[str, list[dict]]] = {}
        for round_ in range(ROUNDS):
            for label, code in lake_of.versions():
                for size in sizes:
                    say(f"  round {round_ + 1}, {label}, {size['orders']:,} orders")
                    runs.setdefault(label, {}).setdefault(str(size["orders"]), []).append(_slice_child(code, size))
        for label, by_size in runs.items():
            small, big = (by_size[str(size["orders"])] for size in sizes)
            median = {
                name: statistics.median(r["seconds"] for r in rs) for name, rs in (("small", small), ("large", big))
            }
            report.rows.append(
                Row(
                    f"one slice of {SLICE_UPDATES:,} sales_order updates (spread over the keys) on a warehouse of "
                    f"{SMALL_ORDERS:,} and of {large:,} orders, DuckDB ({label})",
                    f"{median['small']:.2f} s and {median['large']:.2f} s (median of {ROUNDS}): "
                    f"{median['large'] / median['small']:.2f}x; the read copy's checkpoint and copy after it "
                    f"{statistics.median(r['publish_seconds'] for r in big):.2f} s on the large one "
                    f"({big[0]['warehouse_mb']:.0f} MB)",
                    f"large within {RATIO_TARGET:.1f}x of small",
                    reproduce,
                )
            )
        report.raw["runs"] = runs
        report.raw["load_average"] = [load, os.getloadavg()[0]]
        report.notes.append(f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report
