"""End to end: how long from a commit in totesys until the row is in the warehouse, and how
many changes per second the whole pipeline sustains, with every stage on this machine.

    python -m bench pipeline [--quick]

1. **Latency at a steady rate.** An embedded PostgreSQL with a seeded totesys; the pipeline
   (`totes run`'s code: reader, kinesalite, processor, lake, sync to a DuckDB file) running
   in this process; a writer committing transactions of 10 `sales_order` updates (each one a
   new fact version) at a steady rate; a watcher polling the warehouse every 20 ms for new
   fact rows. Latency of a row = when the watcher first saw it - its source commit time
   (`valid_from`, from the WAL; same machine, same clock). The first seconds (warm-up) are
   left out. It runs with `totes run`'s default processor window, then with 1 s and 0.2 s,
   and counts the change log commits per table per second. Where the time goes comes from
   what the lake records anyway (`_stages`): Delta commit times and `_progress` rows.
2. **Sustained throughput.** With the pipeline stopped, a backlog of updates is committed;
   then the pipeline starts (default window) and the clock runs until the warehouse holds
   all of it.
   changes/s = backlog / that time.
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import duckdb
import psycopg2

from bench import Report, Row
from lake.layout import LakeLayout
from lake.progress import Progress
from lake.timetravel import history
from totes_cli.pipeline import DEFAULT_WINDOW, Pipeline, PipelineConfig, windowed
from totesys.embedded import EmbeddedPostgres
from totesys.schema import create_schema, ensure_database
from totesys.simulator import Simulator

NAME = "pipeline"
DESCRIPTION = "end to end: commit -> warehouse latency p50/p95/p99 at a steady rate, and sustained changes/s"
UPDATES_PER_TRANSACTION = 10


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _pipeline(dsn: str, root: Path, window: float = DEFAULT_WINDOW) -> Pipeline:
    return Pipeline(
        windowed(
            PipelineConfig(source_dsn=dsn, lake=str(root / "lake"), warehouse=str(root / "warehouse.duckdb")), window
        )
    )


def _commits_per_second(lake: str, table: str, since: float, until: float) -> float:
    """Commits to the change log of `table` per second between two wall-clock times."""
    commits = [
        c
        for c in history(LakeLayout(lake), table, "changes")
        if since <= c.timestamp.timestamp() <= until and c.lsn_min is not None
    ]
    return len(commits) / max(until - since, 1e-9)


def _stages(layout: LakeLayout, rows: list[tuple[float, float, int]]) -> dict[str, float]:
    """Where the latency goes, from the times the lake records itself: the median of commit ->
    change log commit (the Delta commit timestamps of `changes/public.sales_order` whose LSN
    range holds the row's transaction, the latest of them, as a transaction's rows go to
    several shards), commit -> lake watermark (the `_progress` row that took the last shard
    past the transaction), and lake watermark -> visible in the warehouse."""
    commits = [
        (c.timestamp.timestamp(), c.lsn_min, c.lsn_max)
        for c in history(layout, "public.sales_order", "changes")
        if c.lsn_min is not None
    ]
    markers: dict[str, list[tuple[int, float]]] = {}
    for row in Progress(layout).history().to_pylist():
        markers.setdefault(row["shard"], []).append((row["marker_lsn"], row["recorded_at"].timestamp()))
    times: dict[int, tuple[float | None, float | None]] = {}  # lsn -> (in the change log, past the watermark)

    def stages(lsn: int) -> tuple[float | None, float | None]:
        if lsn not in times:
            in_lake = [at for at, low, high in commits if low <= lsn <= high]
            passed = [min((at for marker, at in shard if marker >= lsn), default=None) for shard in markers.values()]
            times[lsn] = (max(in_lake) if in_lake else None, None if not passed or None in passed else max(passed))
        return times[lsn]

    logged, watermarked, visible = [], [], []
    for committed, lag, lsn in rows:
        in_lake, passed = stages(lsn)
        if in_lake is None or passed is None:
            continue
        logged.append(in_lake - committed)
        watermarked.append(passed - committed)
        visible.append(committed + lag - passed)
    if not logged:
        return {}
    return {
        "commit -> change log": statistics.median(logged),
        "commit -> lake watermark": statistics.median(watermarked),
        "lake watermark -> warehouse": statistics.median(visible),
    }


def _stages_text(stages: dict[str, float]) -> str:
    return "medians " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items())


def _wait_caught_up(pipeline: Pipeline, timeout: float = 600) -> float:
    target = pipeline.source_lsn()
    started = time.monotonic()
    while not pipeline.caught_up_with(target):
        if pipeline.errors:
            raise RuntimeError(f"{pipeline.errors[0][0]} failed: {pipeline.errors[0][1]!r}")
        if time.monotonic() - started > timeout:
            raise TimeoutError("the pipeline did not catch up")
        time.sleep(0.02)
    return time.monotonic() - started


def _order_ids(dsn: str) -> list[int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT sales_order_id FROM sales_order")
        return [row[0] for row in cur.fetchall()]


def measure_latency(dsn: str, root: Path, rate: int, seconds: float, warmup: float, say, window: float) -> dict:
    pipeline = _pipeline(dsn, root, window)
    pipeline.start()
    try:
        _wait_caught_up(pipeline)
        ids = _order_ids(dsn)
        rng = random.Random(1)
        seen: dict[int, tuple[float, float, int]] = {}  # record id -> (committed at, latency, lsn)
        stop = threading.Event()

        def watch() -> None:
            connection = duckdb.connect(pipeline.config.warehouse)
            newest = 0
            while not stop.is_set():
                rows = connection.execute(
                    "SELECT sales_record_id, epoch_ms(valid_from), source_lsn FROM fact_sales_order "
                    "WHERE sales_record_id > ? AND valid_from IS NOT NULL",
                    [newest],
                ).fetchall()
                now = time.time()
                for record_id, committed_ms, lsn in rows:
                    seen[record_id] = (committed_ms / 1000, now - committed_ms / 1000, lsn)
                    newest = max(newest, record_id)
                stop.wait(0.02)
            connection.close()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        transactions = int(rate * seconds / UPDATES_PER_TRANSACTION)
        interval = UPDATES_PER_TRANSACTION / rate
        conn = psycopg2.connect(dsn)
        say(f"  writing {transactions * UPDATES_PER_TRANSACTION:,} updates at {rate:,}/s for {seconds:.0f} s")
        started = time.monotonic()
        commit_times: list[float] = []
        with conn.cursor() as cur:
            for n in range(transactions):
                delay = started + n * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                chosen = rng.sample(ids, UPDATES_PER_TRANSACTION)
                cur.execute(
                    "UPDATE sales_order SET units_sold = units_sold %% 99000 + 1001 WHERE sales_order_id = ANY(%s)",
                    (chosen,),
                )
                conn.commit()
                commit_times.append(time.time())
        achieved = transactions * UPDATES_PER_TRANSACTION / (time.monotonic() - started)
        steady = (commit_times[0] + warmup, commit_times[-1])
        conn.close()
        _wait_caught_up(pipeline)
        time.sleep(0.5)
        stop.set()
        watcher.join()
    finally:
        pipeline.shutdown()
    steady_from = commit_times[0] + warmup
    steady_rows = [row for row in seen.values() if row[0] >= steady_from]
    latencies = [lag for _, lag, _ in steady_rows]
    result = {
        "rate_target": rate,
        "rate_achieved": achieved,
        "rows_seen": len(latencies),
        "p50_s": _percentile(latencies, 0.50),
        "p95_s": _percentile(latencies, 0.95),
        "p99_s": _percentile(latencies, 0.99),
        "max_s": max(latencies),
        "mean_s": statistics.fmean(latencies),
        "window": window,
        "commits_per_table_per_s": _commits_per_second(pipeline.config.lake, "public.sales_order", *steady),
        "stages_p50_s": _stages(LakeLayout(pipeline.config.lake), steady_rows),
    }
    return result


def measure_throughput(dsn: str, root: Path, changes: int, say) -> dict:
    ids = _order_ids(dsn)
    per_transaction = 1_000
    say(f"  committing a backlog of {changes:,} updates while the pipeline is stopped")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        done = 0
        while done < changes:
            chosen = ids[(done % len(ids)) : (done % len(ids)) + per_transaction] or ids[:per_transaction]
            cur.execute(
                "UPDATE sales_order SET units_sold = units_sold %% 99000 + 1001 WHERE sales_order_id = ANY(%s)",
                (chosen,),
            )
            conn.commit()
            done += len(chosen)
    conn.close()
    pipeline = _pipeline(dsn, root)
    started = time.monotonic()
    pipeline.start()
    try:
        _wait_caught_up(pipeline)
        elapsed = time.monotonic() - started  # from start(): connecting and kinesalite included
    finally:
        pipeline.shutdown()
    return {"changes": done, "seconds": elapsed, "changes_per_s": done / elapsed}


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    report = Report()
    root = Path(tempfile.mkdtemp(prefix="totes-pipeline-bench-"))
    server = EmbeddedPostgres(root / "pg")
    try:
        dsn = ensure_database(server.start())
        create_schema(dsn)
        with Simulator(dsn, seed=1) as simulator:
            simulator.seed_history(60 if quick else 365, until=datetime(2024, 11, 15, 18))
        seconds, warmup = (15.0, 3.0) if quick else (40.0, 5.0)
        for window in (DEFAULT_WINDOW, 1.0, 0.2):
            label = f"--window {window:g}" + (" (the default)" if window == DEFAULT_WINDOW else "")
            say(f"pipeline latency, {label}")
            run_root = root / f"latency-{len(report.raw)}"
            result = measure_latency(dsn, run_root, 1_000, seconds, warmup, say, window)
            report.raw[f"latency {label}"] = result
            report.rows.append(
                Row(
                    f"commit -> warehouse latency at {result['rate_achieved']:,.0f} changes/s, {label}",
                    f"p50 {result['p50_s']:.2f} s, p95 {result['p95_s']:.2f} s, p99 {result['p99_s']:.2f} s "
                    f"({result['rows_seen']:,} fact rows; {result['commits_per_table_per_s']:.1f} lake commits "
                    f"per table per second)",
                    "p50 <= 1 s, p99 <= 3 s at 1,000 changes/s",
                    "`python -m bench pipeline`",
                )
            )
            if result["stages_p50_s"]:
                report.notes.append(f"where the latency goes, {label}: {_stages_text(result['stages_p50_s'])}")
        say("pipeline throughput")
        result = measure_throughput(dsn, root / "throughput", 30_000 if quick else 200_000, say)
        report.raw["throughput"] = result
        report.rows.append(
            Row(
                f"sustained end to end, backlog of {result['changes']:,} changes, all stages in one process",
                f"{result['changes_per_s']:,.0f} changes/s ({result['seconds']:.1f} s)",
                ">= 10,000 changes/s",
                "`python -m bench pipeline`",
            )
        )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return report
