"""`python -m bench snapshot`: `totes run --until-caught-up` from nothing on a large
sales_order, against COPY of the same table.

A fresh embedded totesys gets its static data and 1,000,000 generated sales orders (100,000
with --quick) in one transaction; then `totes run --until-caught-up` starts on an empty lake
and warehouse, takes the initial snapshot (straight into the lake: cdc_reader/bulk_snapshot.py),
streams, syncs the warehouse and exits. Reported for the snapshot phase (start -> the reader's
state says the snapshot is durable in the lake watermark) and for the whole run: source rows
per second, the ratio to `COPY sales_order TO STDOUT` into nothing, CPU seconds and the peak
RSS of every process (bench/watched.py's `run_watched`).

`TOTES_BENCH_BEFORE=DIR` first runs the same on the same source from another checkout (its
folder first on PYTHONPATH; `git worktree add DIR <commit>` and a `node_modules` link), so a
version before is measured back to back with this one, at the same machine load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg2

from bench import RSS_TARGET_MB, Report, Row
from bench.load_source import drop_slot_of
from bench.watched import totes_run
from bench.orders import generate_load
from bench.source import Source

NAME = "snapshot"
DESCRIPTION = "snapshot: totes run --until-caught-up from nothing on a large sales_order, rows/s and peak RSS"


def _copy_seconds(dsn: str) -> tuple[int, float]:
    class Nothing:
        def write(self, data):
            return len(data)

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM sales_order")
            rows = cur.fetchone()[0]
            started = time.perf_counter()
            cur.copy_expert("COPY sales_order TO STDOUT", Nothing())
            seconds = time.perf_counter() - started
    finally:
        conn.close()
    return rows, seconds


def _source_rows(dsn: str) -> int:
    from totesys.schema import TABLES

    conn = psycopg2.connect(dsn)
    total = 0
    try:
        with conn.cursor() as cur:
            for table in TABLES:
                cur.execute(f'SELECT count(*) FROM "{table}"')  # nosec B608 # the fixed totesys table names
                total += cur.fetchone()[0]
    finally:
        conn.close()
    return total


def _rss(peaks: dict[str, float]) -> str:
    return ", ".join(f"{name} {mb:,.0f} MB" for name, mb in sorted(peaks.items(), key=lambda kv: -kv[1])) or "n/a"


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    orders = 100_000 if quick else 1_000_000
    root = Path(tempfile.mkdtemp(prefix="totes-bench-snapshot-"))
    source = Source(root)
    before = os.environ.get("TOTES_BENCH_BEFORE")
    versions = ([("before", before)] if before else []) + [("this checkout", None)]
    report = Report()
    try:
        source.start()
        say(f"generating {orders:,} sales orders")
        generate_load(source, 0, orders, orders, updates=False)
        total = _source_rows(source.dsn)
        report.raw.update(rows=total, load_average_at_start=[round(x, 1) for x in os.getloadavg()])
        for label, code in versions:
            copied, copy_seconds = _copy_seconds(source.dsn)
            copy_rate = copied / copy_seconds
            say(f"COPY sales_order: {copied:,} rows in {copy_seconds:.2f} s")
            result = totes_run(source.dsn, root / label.replace(" ", "-"), "run", code=code)
            drop_slot_of(source.dsn, root / label.replace(" ", "-") / "lake")
            shutil.rmtree(root / label.replace(" ", "-"), ignore_errors=True)
            result.pop("log_tail", None)
            report.raw[label] = {"code": code or "this checkout", "copy_rows_per_s": round(copy_rate), **result}
            snapshot = result["phase"]
            name = f"{label} ({code})" if code else label
            if snapshot:
                rate = total / snapshot["seconds"]
                say(f"{name}: snapshot durable after {snapshot['seconds']:.1f} s")
                report.rows.append(
                    Row(
                        f"{name}: start -> snapshot durable in the lake watermark, {copied:,}-row sales_order "
                        f"({total:,} source rows)",
                        f"{rate:,.0f} rows/s ({snapshot['seconds']:.1f} s, {snapshot['cpu_seconds']:.1f} s CPU), "
                        f"{rate / copy_rate:.2f}x COPY ({copy_rate:,.0f} rows/s); peak RSS so far {_rss(snapshot['peak_rss_mb'])}",
                        f"the speed of COPY; peak RSS < {RSS_TARGET_MB} MB",
                        "`python -m bench snapshot`",
                    )
                )
            per_second = total / result["seconds"]
            say(f"{name}: exits after {result['seconds']:.1f} s")
            report.rows.append(
                Row(
                    f"{name}: `totes run --until-caught-up` from nothing to exit, same rows",
                    f"{per_second:,.0f} rows/s ({result['seconds']:.1f} s, {result['cpu_seconds']:.1f} s CPU), "
                    f"{per_second / copy_rate:.2f}x COPY; peak RSS {_rss(result['peak_rss_mb'])}",
                    f"the speed of COPY; peak RSS < {RSS_TARGET_MB} MB",
                    "`python -m bench snapshot`",
                )
            )
        report.raw["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    finally:
        source.stop()
        shutil.rmtree(root, ignore_errors=True)
    return report
