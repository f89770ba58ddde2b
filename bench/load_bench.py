"""Initial load and catch-up against the speed of COPY, and the memory they take.

Why one file (~600 lines): one benchmark run over one source, its steps in the order they
run (generate, COPY limit, load, peer, backlog, nothing new, latency); its /proc helpers
and dlt child go with it.

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

import json
import os
import resource
import shutil
import statistics
import subprocess  # nosec B404 # fixed argv lists, never a shell
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg2
from psycopg2 import sql

from bench import Report, Row
from bench.orders import INSERT, query, reference_ids
from totes_cli.bootstrap import StatePaths

NAME = "load"
DESCRIPTION = (
    "initial load and catch-up: rows/s against COPY, peak RSS, a backlog, a catch-up with nothing "
    "new, dlt as the peer, streaming latency on a big lake"
)
SNAPSHOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "totesys" / "snapshot_2024-11-15_aidan-mooney"
REPRODUCE = "`python -m bench load`"
REPRODUCE_QUICK = "`python -m bench load --quick`"
INSERT_ROWS_PER_TRANSACTION = 500_000
UPDATE_ROWS_PER_TRANSACTION = 10_000
RUN_TIMEOUT = 4 * 3600.0
NOTHING_NEW_RUNS = 3
LATENCY_RATE = 1_000
# The targets, printed beside the figures.
LOAD_RATIO_TARGET = 0.3
BACKLOG_TARGET = 100_000
RSS_TARGET_MB = 500
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


# -- the source ------------------------------------------------------------------------------


def start_source(root: Path, say):
    from totesys.embedded import EmbeddedPostgres
    from totesys.schema import create_schema, ensure_database

    server = EmbeddedPostgres(root / "pg")
    dsn = ensure_database(server.start(), "totesys")
    create_schema(dsn)
    if SNAPSHOT.is_dir():
        from totesys.snapshots import load_snapshot

        loaded = load_snapshot(dsn, SNAPSHOT)
        say(f"  loaded the real snapshot {SNAPSHOT.name}: {sum(loaded.values()):,} rows")
        source = SNAPSHOT.name
    else:
        from totesys.simulator import Simulator

        with Simulator(dsn, seed=20240101) as simulator:
            simulator.seed_static()
        say(f"  {SNAPSHOT} is missing: the simulator's static tables instead")
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
            cur.execute("SET session_replication_role = replica")
            ids = reference_ids(cur)
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


# -- the limit: COPY ---------------------------------------------------------------------------


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


# -- a watched process -------------------------------------------------------------------------


def _hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _tree_cpu_seconds(tree) -> float:
    total = 0.0
    for member in tree:
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def run_watched(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    timeout: float = RUN_TIMEOUT,
    *,
    phase: Callable[[], bool] | None = None,
    cwd: str | None = None,
) -> dict:
    """Run `argv`; the wall time, its CPU seconds and those of its children, and the peak RSS
    (VmHWM) of every process of its tree, sampled every 0.1 s. `phase`: the first time it
    returns true, the same three figures so far are kept as `phase` (e.g. the snapshot
    durable in the lake, well before the run exits)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("w") as output:
        process = psutil.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output, cwd=cwd)
    peaks: dict[int, tuple[str, float]] = {}
    cpu: dict[int, float] = {}
    at_phase: dict | None = None
    timed_out = False
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
        except psutil.Error:
            tree = [process]
        for member in tree:
            hwm = _hwm_mb(member.pid)
            if hwm is None:
                continue
            try:
                name = member.name()
            except psutil.Error:
                name = "?"
            if hwm >= peaks.get(member.pid, ("", 0.0))[1]:
                peaks[member.pid] = (name, hwm)
            cpu[member.pid] = max(cpu.get(member.pid, 0.0), _tree_cpu_seconds([member]))
        if phase is not None and at_phase is None and phase():
            at_phase = {
                "seconds": time.perf_counter() - started,
                "cpu_seconds": sum(cpu.values()),
                "peak_rss_mb": _by_name(peaks),
            }
        if time.perf_counter() - started > timeout:
            timed_out = True
            for member in tree[::-1]:
                try:
                    member.kill()
                except psutil.Error:
                    pass
            process.wait()
            break
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "seconds": seconds,
        "exit_code": process.returncode,
        "timed_out": timed_out,
        "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mb": _by_name(peaks),
        "phase": at_phase,
        "log_tail": log.read_text(errors="replace")[-1500:],
    }


def _by_name(peaks: dict[int, tuple[str, float]]) -> dict[str, float]:
    by_name: dict[str, float] = {}
    for name, hwm in peaks.values():
        by_name[name] = max(by_name.get(name, 0.0), hwm)
    return by_name


def snapshot_durable(lake: Path) -> Callable[[], bool]:
    """Whether the reader's state (in the lake's _local folder) says the initial snapshot is
    durable in the lake watermark."""

    def durable() -> bool:
        for path in StatePaths(str(lake)).reader_dir.glob("*.json"):
            if not path.name.endswith(".status.json"):
                try:
                    return bool(json.loads(path.read_text()).get("snapshot_done"))
                except (OSError, ValueError):
                    return False
        return False

    return durable


def _environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "TOTES_"))}
    env.update({"TOTES_HOME": str(home), "TOTES_CONFIG": str(home / "none.toml"), "COLUMNS": "200"})
    return env


def totes_run(dsn: str, root: Path, log_name: str, *, code: str | None = None) -> dict:
    """`totes run --until-caught-up` on the lake and warehouse under `root`, with the moment
    the snapshot is durable as its `phase`. `code`: another checkout to run it from (its
    folder first on PYTHONPATH), to measure a version before beside this one."""
    root.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "totes_cli",
        "run",
        "--source",
        dsn,
        "--lake",
        str(root / "lake"),
        "--warehouse",
        str(root / "warehouse.duckdb"),
        "--until-caught-up",
    ]
    env = _environment(root)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    result = run_watched(argv, env, root / f"{log_name}.log", phase=snapshot_durable(root / "lake"), cwd=code)
    if result["exit_code"] != 0 and not result["timed_out"]:
        raise RuntimeError(f"totes run failed ({result['exit_code']}):\n{result['log_tail']}")
    return result


# -- the peer: dlt ---------------------------------------------------------------------------------

DLT_SCRIPT = textwrap.dedent("""
    import os, sys, json, time
    import psycopg2, sqlalchemy, dlt
    from dlt.sources.sql_database import sql_database

    dsn, path, work = sys.argv[1], sys.argv[2], sys.argv[3]
    engine = sqlalchemy.create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn))
    source = sql_database(engine, schema="public", backend="pyarrow", table_names=sys.argv[4].split(","))
    pipeline = dlt.pipeline(pipeline_name="bench_load", pipelines_dir=work,
                            destination=dlt.destinations.duckdb(path), dataset_name="totesys")
    pipeline.run(source, write_disposition="replace")
""")


def dlt_available() -> str | None:
    """None if dlt can run here, else why not."""
    try:
        import dlt  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as error:
        return f'dlt is not installed ({error.name}): pip install -c constraints.txt -e ".[bench]"'
    return None


def dlt_load(dsn: str, root: Path, tables: list[str]) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    script = root / "dlt_load.py"
    script.write_text(DLT_SCRIPT)
    env = _environment(root)
    env.update({"RUNTIME__DLTHUB_TELEMETRY": "false", "DLT_DATA_DIR": str(root / "dlt-data")})
    result = run_watched(
        [sys.executable, str(script), dsn, str(root / "dlt.duckdb"), str(root / "dlt-work"), ",".join(tables)],
        env,
        root / "dlt.log",
    )
    if result["exit_code"] != 0:
        raise RuntimeError(f"dlt failed ({result['exit_code']}):\n{result['log_tail']}")
    return result


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
