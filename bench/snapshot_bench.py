"""`python -m bench snapshot`: `totes run --until-caught-up` from nothing on a large
sales_order, against COPY of the same table.

A fresh embedded totesys gets its static data and 1,000,000 generated sales orders (100,000
with --quick) in one transaction; then `totes run --until-caught-up` starts on an empty lake
and warehouse, takes the initial snapshot (straight into the lake: cdc_reader/bulk_snapshot.py),
streams, syncs the warehouse and exits. Reported: source rows per second of that whole run
and the `totes run` process's peak RSS, beside `COPY sales_order TO STDOUT` into nothing.

`TOTES_BENCH_CODE=DIR` runs `totes run` from another checkout (its folder first on
PYTHONPATH, e.g. `git worktree add DIR <commit>`), to measure a version before beside this one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

from bench import Report, Row
from bench.reader_bench import Source, generate_load

NAME = "snapshot"
DESCRIPTION = "snapshot: totes run --until-caught-up from nothing on a large sales_order, rows/s and peak RSS"


def _copy_rows_per_second(dsn: str) -> tuple[int, float]:
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


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run_until_caught_up(dsn: str, root: Path, say) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOTES_")}
    code = os.environ.get("TOTES_BENCH_CODE")
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    env["TOTES_HOME"] = str(root / "home")
    args = [sys.executable, "-m", "totes_cli", "run", "--source", dsn, "--lake", str(root / "lake"),
            "--warehouse", str(root / "warehouse.duckdb"), "--until-caught-up"]
    started = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               cwd=code or None)
    peak = [0]
    phases: dict[str, dict] = {}

    def watch() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], _peak_rss(process.pid))
            state = _reader_state(root / "lake")
            for flag in ("snapshot_published", "snapshot_done"):
                if state.get(flag) and flag not in phases:
                    phases[flag] = {"seconds": round(time.perf_counter() - started, 2), "peak_rss_bytes": peak[0]}
                    say(f"{flag}: {phases[flag]['seconds']:.1f} s, peak RSS {peak[0] / 2**20:.0f} MB")
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, stderr = process.communicate(timeout=3600)
    seconds = time.perf_counter() - started
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"totes run exited {process.returncode}: {stderr[-2000:]}")
    say(f"totes run --until-caught-up: {seconds:.1f} s, peak RSS {peak[0] / 2**20:.0f} MB")
    return {"seconds": round(seconds, 2), "peak_rss_bytes": peak[0], "code": code or "this checkout", **phases}


def _reader_state(lake: Path) -> dict:
    """The reader's state file in the lake's _local folder (its flags: published, done)."""
    for path in (lake / "_local" / "reader").glob("*.json"):
        if not path.name.endswith(".status.json"):
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return {}
    return {}


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    rows = 100_000 if quick else 1_000_000
    root = Path(tempfile.mkdtemp(prefix="totes-bench-snapshot-"))
    source = Source(root)
    try:
        source.start()
        say(f"generating {rows:,} sales orders")
        generate_load(source, 0, rows, rows, updates=False)
        total = _source_rows(source.dsn)
        copied, copy_seconds = _copy_rows_per_second(source.dsn)
        say(f"COPY sales_order: {copied:,} rows in {copy_seconds:.2f} s")
        result = _run_until_caught_up(source.dsn, root / "run", say)
    finally:
        source.stop()
        shutil.rmtree(root, ignore_errors=True)
    per_second = total / result["seconds"]
    copy_rate = copied / copy_seconds
    report = Report(raw={"rows": total, "sales_order": copied, "copy_seconds": round(copy_seconds, 3),
                         "copy_rows_per_second": round(copy_rate), "run": result,
                         "run_rows_per_second": round(per_second)})
    done = result.get("snapshot_done")
    if done:
        report.rows.append(Row(
            f"initial snapshot durable in the lake (reader state `snapshot_done`), {copied:,}-row sales_order",
            f"{total / done['seconds']:,.0f} rows/s ({done['seconds']:.1f} s from start, peak RSS so far "
            f"{done['peak_rss_bytes'] / 2**20:.0f} MB)", "the speed of COPY", "`python -m bench snapshot`"))
    report.rows.append(Row(
        f"`totes run --until-caught-up` from nothing, {copied:,}-row sales_order ({total:,} source rows)",
        f"{per_second:,.0f} rows/s ({result['seconds']:.1f} s, peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MB); "
        f"COPY alone {copy_rate:,.0f} rows/s",
        "the speed of COPY; memory flat", "`python -m bench snapshot`"))
    return report
