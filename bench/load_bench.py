"""Initial load and catch-up against the speed of COPY, and the memory they take.

The steps in the order they run are here; the source and its COPY limit are
`bench/load_source.py`, the watched `totes run` `bench/watched.py`, the dlt peer `bench/dlt_peer.py`.

    python -m bench load [--quick]
    TOTES_BENCH_ORDERS=2000000 python -m bench load     # one size instead of 1M and 5M
    TOTES_BENCH_BACKLOG=300000 python -m bench load     # a backlog of 300k updates instead of 1M

One embedded PostgreSQL, one source, in this order:

1. **Source.** The totesys schema holding the real snapshot `../shared/data/totesys/
   snapshot_2024-11-15_aidan-mooney` (all 11 tables, 11k orders; without it the simulator's
   static tables), for the small lake's latency (step 6) first.
2. **Sizes.** Sales orders generated in SQL (`INSERT ... SELECT generate_series`, the reader
   benchmark's rows) up to each size: 1M, then 5M (`--quick`: 100k). At each size:
   * **COPY limit**: `COPY <table> TO STDOUT` of every table in one psql session, output
     to /dev/null: the server's own rate of handing rows out, rows/s = all rows / that
     session's wall time;
   * **initial load**: `totes run --until-caught-up` as a process, from nothing (a new lake,
     warehouse and slot): rows/s = the source's rows / the process's wall time (start to
     exit, kinesalite and imports included), and its ratio to the COPY rate;
   * **dlt** `sql_database` (pyarrow backend) loading the same 11 tables into a DuckDB file
     in its own process: the peer (a full copy each run, no change capture);
   * peak RSS of every process of a run (the command and its children, kinesalite's node
     included): VmHWM of each, read from /proc every 0.1 s while it runs.
   The slot of a size is dropped before the next size is generated.
3. **Backlog** (at the largest size): that lake stopped, 1M updates of `sales_order` (100k
   with `--quick`) committed in transactions of 10,000, then `totes run --until-caught-up`:
   changes/s = updates / wall time, and peak RSS.
4. **Nothing new**: `totes run --until-caught-up` three times more on that caught-up
   pipeline: the median wall time and CPU seconds.
5. **Streaming latency on the big lake**: the pipeline benchmark's measurement (1,000 changes/s
   of `sales_order` updates, commit -> warehouse) on that lake, next to
6. the same measurement on a small lake (step 1's source, before any order was generated).

Figures are for whatever the code does today; the targets are printed beside them.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import BACKLOG_TARGET, RSS_TARGET_MB, Report, Row
from bench.dlt_peer import dlt_available, dlt_load
from bench.load_source import copy_limit, drop_slot_of, generate_orders, row_counts, start_source, update_backlog
from bench.watched import totes_run

NAME = "load"
DESCRIPTION = (
    "initial load and catch-up: rows/s against COPY, peak RSS, a backlog, a catch-up with nothing "
    "new, dlt as the peer, streaming latency on a big lake"
)
REPRODUCE = "`python -m bench load`"
REPRODUCE_QUICK = "`python -m bench load --quick`"
NOTHING_NEW_RUNS = 3
LATENCY_RATE = 1_000
# The targets, printed beside the figures.
LOAD_RATIO_TARGET = 0.3
NOTHING_NEW_TARGET_S = 1.5
LATENCY_SLACK = 0.20


@dataclass(frozen=True)
class Sizes:
    orders: tuple[int, ...]
    backlog: int
    latency_seconds: float
    latency_warmup: float


FULL = Sizes(orders=(1_000_000, 5_000_000), backlog=1_000_000, latency_seconds=40.0, latency_warmup=5.0)
QUICK = Sizes(orders=(100_000,), backlog=100_000, latency_seconds=15.0, latency_warmup=3.0)
ORDERS_VARIABLE = "TOTES_BENCH_ORDERS"
"""Order counts to generate instead, comma-separated (e.g. 2000000: one size, minutes not tens)."""
BACKLOG_VARIABLE = "TOTES_BENCH_BACKLOG"
"""Updates in the backlog instead (e.g. 300000); at most the largest order count (one update per order)."""


def chosen_sizes(quick: bool, variable: str | None = None, backlog: str | None = None) -> Sizes:
    """FULL or QUICK, with the order counts of `TOTES_BENCH_ORDERS` and the backlog of
    `TOTES_BENCH_BACKLOG` when they are set."""
    sizes = _with_orders(QUICK if quick else FULL, variable)
    text = (os.environ.get(BACKLOG_VARIABLE, "") if backlog is None else backlog).replace("_", "").strip()
    if not text:
        return sizes
    if not text.isdigit() or not 0 < int(text) <= max(sizes.orders):
        raise SystemExit(
            f"{BACKLOG_VARIABLE}={text!r} is not a count of updates from 1 to the largest order count "
            f"({max(sizes.orders):,}), e.g. 300000"
        )
    return Sizes(sizes.orders, int(text), sizes.latency_seconds, sizes.latency_warmup)


def _with_orders(sizes: Sizes, variable: str | None) -> Sizes:
    text = (os.environ.get(ORDERS_VARIABLE, "") if variable is None else variable).replace("_", "").strip()
    if not text:
        return sizes
    try:
        orders = tuple(sorted(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise SystemExit(
            f"{ORDERS_VARIABLE}={text!r} is not a comma-separated list of order counts, e.g. 2000000"
        ) from None
    if not orders or orders[0] <= 0:
        raise SystemExit(f"{ORDERS_VARIABLE} needs at least one positive order count, e.g. 2000000")
    return Sizes(orders, sizes.backlog, sizes.latency_seconds, sizes.latency_warmup)


# -- streaming latency -----------------------------------------------------------------------------


def latency(dsn: str, root: Path, sizes: Sizes, say) -> dict:
    from bench.pipeline_bench import measure_latency
    from totes_cli.pipeline import DEFAULT_WINDOW

    return measure_latency(dsn, root, LATENCY_RATE, sizes.latency_seconds, sizes.latency_warmup, say, DEFAULT_WINDOW)


# -- the report --------------------------------------------------------------------------------------


def _rss_text(result: dict) -> str:
    peaks = result["peak_rss_mb"]
    return ", ".join(f"{name} {mb:,.0f} MB" for name, mb in sorted(peaks.items(), key=lambda kv: -kv[1])) or "n/a"


def _peak(result: dict) -> float:
    return max(result["peak_rss_mb"].values(), default=0.0)


def _verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    report = Report()
    sizes = chosen_sizes(quick)
    reproduce = REPRODUCE_QUICK if quick else REPRODUCE
    chosen = []
    if sizes.orders != (QUICK if quick else FULL).orders:
        chosen.append(f"{ORDERS_VARIABLE}={','.join(str(n) for n in sizes.orders)}")
    if sizes.backlog != (QUICK if quick else FULL).backlog:
        chosen.append(f"{BACKLOG_VARIABLE}={sizes.backlog}")
    if chosen:
        reproduce = f"`{' '.join(chosen)} python -m bench load{' --quick' if quick else ''}`"
    root = Path(tempfile.mkdtemp(prefix="totes-load-bench-"))
    server = None
    why_no_dlt = dlt_available()
    try:
        say("source")
        server, dsn, source = start_source(root, say)
        report.raw["source"] = source
        report.raw["load_average_at_start"] = [round(x, 1) for x in os.getloadavg()]
        say("streaming latency on the small lake")
        small = latency(dsn, root / "latency-small", sizes, say)
        drop_slot_of(dsn, root / "latency-small" / "lake")
        report.raw["latency small lake"] = small

        big_root = None
        for orders in sizes.orders:
            label = f"{orders:,} orders"
            say(f"size {label}")
            report.raw[f"generate {label}"] = generate_orders(dsn, orders, say)
            counts = row_counts(dsn)
            copy = copy_limit(dsn, counts)
            say(f"  COPY limit: {copy['rows_per_s']:,.0f} rows/s ({copy['seconds']:.1f} s)")
            big_root = root / f"load-{orders}"
            say("  initial load: totes run --until-caught-up from nothing")
            load = totes_run(dsn, big_root, "initial-load")
            load["rows"] = copy["rows"]
            load["rows_per_s"] = copy["rows"] / load["seconds"]
            load["ratio_to_copy"] = load["rows_per_s"] / copy["rows_per_s"]
            say(
                f"  initial load: {load['rows_per_s']:,.0f} rows/s ({load['seconds']:.1f} s), "
                f"{load['ratio_to_copy']:.2f}x COPY, peak RSS {_rss_text(load)}"
            )
            report.raw[f"{label}"] = {"counts": counts, "copy": copy, "initial_load": load}
            at_target_size = orders >= 5_000_000 or orders == max(sizes.orders)
            finished = "timed out" if load["timed_out"] else f"{load['seconds']:.1f} s"
            report.rows.append(
                Row(
                    f"COPY TO STDOUT of the 11 tables into /dev/null, {label} ({copy['rows']:,} rows)",
                    f"{copy['rows_per_s']:,.0f} rows/s ({copy['seconds']:.1f} s)",
                    "the limit",
                    reproduce,
                )
            )
            report.rows.append(
                Row(
                    f"initial load `totes run --until-caught-up` from nothing, {label} ({copy['rows']:,} rows)",
                    f"{load['rows_per_s']:,.0f} rows/s ({finished}, {load['cpu_seconds']:.0f} s CPU), "
                    f"{load['ratio_to_copy']:.2f}x COPY; "
                    f"peak RSS {_rss_text(load)}",
                    f">= {LOAD_RATIO_TARGET}x COPY at 5M rows"
                    f"{' (' + _verdict(load['ratio_to_copy'] >= LOAD_RATIO_TARGET) + ')' if at_target_size else ''}; "
                    f"peak RSS < {RSS_TARGET_MB} MB ({_verdict(_peak(load) < RSS_TARGET_MB)})",
                    reproduce,
                )
            )
            snapshot = load.get("phase")
            if snapshot:
                rate = copy["rows"] / snapshot["seconds"]
                say(f"  snapshot durable after {snapshot['seconds']:.1f} s: {rate:,.0f} rows/s")
                report.rows.append(
                    Row(
                        f"its snapshot phase: start -> snapshot durable in the lake watermark, {label}",
                        f"{rate:,.0f} rows/s ({snapshot['seconds']:.1f} s, {snapshot['cpu_seconds']:.0f} s CPU), "
                        f"{rate / copy['rows_per_s']:.2f}x COPY; peak RSS so far {_rss_text(snapshot)}",
                        f"peak RSS < {RSS_TARGET_MB} MB ({_verdict(_peak(snapshot) < RSS_TARGET_MB)})",
                        reproduce,
                    )
                )
            if why_no_dlt is None:
                say("  dlt sql_database (pyarrow) -> DuckDB")
                peer = dlt_load(dsn, root / f"dlt-{orders}", list(counts))
                peer["rows_per_s"] = copy["rows"] / peer["seconds"]
                peer["ratio_to_copy"] = peer["rows_per_s"] / copy["rows_per_s"]
                say(f"  dlt: {peer['rows_per_s']:,.0f} rows/s ({peer['seconds']:.1f} s)")
                report.raw[label]["dlt"] = peer
                report.rows.append(
                    Row(
                        f"peer: dlt `sql_database` (pyarrow backend) -> DuckDB, same tables, {label}",
                        f"{peer['rows_per_s']:,.0f} rows/s ({peer['seconds']:.1f} s, {peer['cpu_seconds']:.0f} s CPU), "
                        f"{peer['ratio_to_copy']:.2f}x COPY; "
                        f"peak RSS {_rss_text(peer)}",
                        "the peer (a full copy, no change capture)",
                        reproduce,
                    )
                )
                shutil.rmtree(root / f"dlt-{orders}", ignore_errors=True)
            if orders != sizes.orders[-1]:  # the next size's WAL need not be kept for this lake
                drop_slot_of(dsn, big_root / "lake")
                shutil.rmtree(big_root, ignore_errors=True)
        if why_no_dlt is not None:
            report.notes.append(f"dlt skipped: {why_no_dlt}")

        say(f"backlog of {sizes.backlog:,} updates, then catch-up")
        update_seconds = update_backlog(dsn, sizes.backlog)
        backlog = totes_run(dsn, big_root, "backlog")
        backlog["changes"] = sizes.backlog
        backlog["changes_per_s"] = sizes.backlog / backlog["seconds"]
        backlog["update_seconds"] = update_seconds
        report.raw["backlog"] = backlog
        say(f"  {backlog['changes_per_s']:,.0f} changes/s ({backlog['seconds']:.1f} s)")
        report.rows.append(
            Row(
                f"backlog of {sizes.backlog:,} updates, then `totes run --until-caught-up` "
                f"(lake of {max(sizes.orders):,} orders)",
                f"{backlog['changes_per_s']:,.0f} changes/s ({backlog['seconds']:.1f} s, {backlog['cpu_seconds']:.0f} s CPU); "
                f"peak RSS {_rss_text(backlog)}",
                f">= {BACKLOG_TARGET:,} changes/s ({_verdict(backlog['changes_per_s'] >= BACKLOG_TARGET)}); "
                f"peak RSS < {RSS_TARGET_MB} MB ({_verdict(_peak(backlog) < RSS_TARGET_MB)})",
                reproduce,
            )
        )

        say("catch-up with nothing new")
        idle = [totes_run(dsn, big_root, f"nothing-new-{n}") for n in range(NOTHING_NEW_RUNS)]
        seconds = statistics.median(r["seconds"] for r in idle)
        cpu = statistics.median(r["cpu_seconds"] for r in idle)
        report.raw["nothing new"] = idle
        report.rows.append(
            Row(
                "catch-up with nothing new (`totes run --until-caught-up` on a caught-up pipeline)",
                f"{seconds:.2f} s wall, {cpu:.2f} s CPU (median of {NOTHING_NEW_RUNS}; load average "
                f"{os.getloadavg()[0]:.1f})",
                f"<= {NOTHING_NEW_TARGET_S} s ({_verdict(seconds <= NOTHING_NEW_TARGET_S)})",
                reproduce,
            )
        )

        say(f"streaming latency on the lake of {max(sizes.orders):,} orders")
        big = latency(dsn, big_root, sizes, say)
        report.raw["latency big lake"] = big
        slower = big["p50_s"] / small["p50_s"] - 1
        report.rows.append(
            Row(
                f"commit -> warehouse latency at {LATENCY_RATE:,} changes/s, lake of {max(sizes.orders):,} orders "
                "against a lake of the real snapshot",
                f"p50 {big['p50_s']:.2f} s against {small['p50_s']:.2f} s ({slower:+.0%}) at {big['rate_achieved']:,.0f} "
                f"and {small['rate_achieved']:,.0f} changes/s achieved; p95 {big['p95_s']:.2f} s "
                f"against {small['p95_s']:.2f} s; p99 {big['p99_s']:.2f} s against {small['p99_s']:.2f} s",
                f"p50 within {LATENCY_SLACK:.0%} of the small lake's ({_verdict(slower <= LATENCY_SLACK)})",
                reproduce,
            )
        )
        report.notes.append(
            f"load average {report.raw['load_average_at_start'][0]:.1f} at the start, {os.getloadavg()[0]:.1f} at "
            f"the end, on {os.cpu_count()} cores: wall times stretch with it, CPU seconds much less"
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return report
