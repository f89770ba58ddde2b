"""What the pipeline costs when there is little to do: CPU, memory and lake files per minute.

    python -m bench light [--quick]

An embedded PostgreSQL seeded like `totes demo`; the pipeline `totes demo` runs
(`totes_cli.pipeline` in this process, its kinesalite, the maintenance thread, `--retain 1m`),
measured three times in a row on the same lake:

* **idle**: nothing changes at the source (the reader's heartbeats only);
* **light**: about 5 changes/s, the demo's simulated business at 1.8 events/s
  (`Simulator.run_live`, in a child process so that its CPU is not counted; an event is a
  transaction of 2.8 row changes on average, over several tables);
* **demo**: the demo's own rate, 5 business events/s (about 14 changes/s);
* **busy**: 1,000 changes/s, transactions of 10 `sales_order` updates (as `bench pipeline`).

For each: **cores** = CPU seconds of the pipeline (this process and its kinesalite) / wall
seconds; **peak RSS** = the largest sum of their resident sets, sampled every 0.5 s;
**lake files/min** = files that appeared under the lake (not `_local`) per minute (listed
every second, so a file vacuumed within a second of its birth is missed: vacuum keeps
files for the retention); **lake versions/min** = new Delta log entries per minute; and the
changes the change logs took per second. The source server and the load generator are not
counted.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import pyarrow as pa
import psycopg2

from bench import Report, Row
from totes_cli.bootstrap import StatePaths
from totes_cli.pipeline import Pipeline, PipelineConfig
from totesys.embedded import EmbeddedPostgres
from totesys.schema import create_schema, ensure_database
from totesys.simulator import Simulator

NAME = "light"
DESCRIPTION = "CPU, peak RSS and lake files per minute of the pipeline idle, at the demo's load and at 1,000 changes/s"
RETENTION = timedelta(minutes=1)


def _business(dsn: str, rate: float, stop) -> None:
    """The demo's business, in a child process."""
    with Simulator(dsn, seed=11) as simulator:
        simulator.run_live(rate, stop_event=stop)


def _updates(dsn: str, rate: float, stop) -> None:
    """`rate` sales_order updates per second, 10 per transaction, in a child process."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT sales_order_id FROM sales_order")
        ids = [row[0] for row in cur.fetchall()]
    rng = random.Random(3)
    conn = psycopg2.connect(dsn)
    interval, started, n = 10 / rate, time.monotonic(), 0
    with conn.cursor() as cur:
        while not stop.is_set():
            delay = started + n * interval - time.monotonic()
            if delay > 0:
                stop.wait(delay)
                continue
            cur.execute(
                "UPDATE sales_order SET units_sold = units_sold %% 99000 + 1001 WHERE sales_order_id = ANY(%s)",
                (rng.sample(ids, 10),),
            )
            conn.commit()
            n += 1
    conn.close()


class _Sampler:
    """CPU, RSS and lake files of the pipeline, sampled on a thread."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.lake = Path(pipeline.config.lake)
        self.files: set[str] = set()
        self.versions: set[str] = set()
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def processes(self) -> list[psutil.Process]:
        found = [psutil.Process()]
        kinesalite = self.pipeline.kinesalite
        if kinesalite is not None and kinesalite.pid:
            try:
                found.append(psutil.Process(kinesalite.pid))
            except psutil.NoSuchProcess:
                pass
        return found

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def list_lake(self) -> None:
        for folder, dirs, names in os.walk(self.lake):
            if folder == str(self.lake):
                dirs[:] = [d for d in dirs if d != StatePaths(str(self.lake)).local.name]
            for name in names:
                path = os.path.join(folder, name)
                self.files.add(path)
                if folder.endswith("_delta_log") and name.endswith(".json"):
                    self.versions.add(path)

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.5):
            rss = 0
            for process in self.processes():
                try:
                    rss += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            tick += 1
            if tick % 2 == 0:
                self.list_lake()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _logged_changes(lake: str) -> int:
    from lake.layout import CHANGES, LakeLayout

    layout = LakeLayout(lake)
    total = 0
    for table in layout.tables(CHANGES):
        delta = layout.open(layout.changes_uri(table))
        if delta is not None:
            total += sum(
                n or 0 for n in pa.table(delta.get_add_actions(flatten=True)).column("num_records").to_pylist()
            )
    return total


def _phase(pipeline: Pipeline, sampler: _Sampler, name: str, seconds: float, load, say) -> dict:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    child = (
        context.Process(target=load[0], args=(pipeline.config.source_dsn, load[1], stop), daemon=True) if load else None
    )
    sampler.list_lake()
    files, versions = len(sampler.files), len(sampler.versions)
    changes = _logged_changes(pipeline.config.lake)
    if child is not None:
        child.start()
        time.sleep(2.0)  # its imports and connection, not counted
    sampler.peak_rss = 0
    cpu, started = sampler.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    wall, used = time.monotonic() - started, sampler.cpu_seconds() - cpu
    sampler.list_lake()
    if child is not None:
        stop.set()
        child.join(30)
    if pipeline.errors:
        raise RuntimeError(f"{pipeline.errors[0][0]} failed: {pipeline.errors[0][1]!r}")
    minutes = wall / 60
    result = {
        "seconds": round(wall, 1),
        "cores": round(used / wall, 3),
        "peak_rss_mb": round(sampler.peak_rss / 1e6),
        "lake_files_per_min": round((len(sampler.files) - files) / minutes, 1),
        "lake_versions_per_min": round((len(sampler.versions) - versions) / minutes, 1),
        "changes_per_s": round((_logged_changes(pipeline.config.lake) - changes) / wall, 1),
        "maintenance_rounds": pipeline.maintenance.rounds,
    }
    say(f"  {name}: {result}")
    return result


def measure(dsn: str, root: Path, seconds: dict[str, float], say) -> dict:
    config = PipelineConfig(
        source_dsn=dsn, lake=str(root / "lake"), warehouse=str(root / "warehouse.duckdb"), retention=RETENTION
    )
    pipeline = Pipeline(config)
    pipeline.start()
    sampler = _Sampler(pipeline)
    sampler.start()
    results = {}
    try:
        while pipeline.sync.synced_upto == 0 and not pipeline.errors:  # the snapshot is in
            time.sleep(0.5)
        time.sleep(5.0)  # the snapshot's state merges and the first maintenance round settle
        results["idle"] = _phase(pipeline, sampler, "idle", seconds["idle"], None, say)
        results["light"] = _phase(pipeline, sampler, "light", seconds["light"], (_business, 1.8), say)
        results["demo"] = _phase(pipeline, sampler, "demo", seconds["demo"], (_business, 5.0), say)
        results["busy"] = _phase(pipeline, sampler, "busy", seconds["busy"], (_updates, 1000.0), say)
    finally:
        sampler.stop()
        pipeline.shutdown()
    return results


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    report = Report()
    root = Path(tempfile.mkdtemp(prefix="totes-light-bench-"))
    server = EmbeddedPostgres(root / "pg")
    seconds = (
        {"idle": 30.0, "light": 60.0, "demo": 60.0, "busy": 30.0}
        if quick
        else {"idle": 60.0, "light": 180.0, "demo": 180.0, "busy": 60.0}
    )
    try:
        dsn = ensure_database(server.start())
        create_schema(dsn)
        with Simulator(dsn, seed=1) as simulator:
            simulator.seed_history(60, until=datetime(2024, 11, 15, 18))
        say(
            f"light: idle {seconds['idle']:.0f} s, business at 1.8 events/s {seconds['light']:.0f} s, "
            f"at 5 events/s {seconds['demo']:.0f} s, 1,000 changes/s {seconds['busy']:.0f} s"
        )
        results = measure(dsn, root / "run", seconds, say)
        report.raw["light"] = results
        labels = {
            "idle": "idle (heartbeats only)",
            "light": "the demo's business at 1.8 events/s",
            "demo": "the demo's business at 5 events/s",
            "busy": "1,000 changes/s (10-row transactions)",
        }
        targets = {
            "idle": "about nothing",
            "light": "< 0.2 cores, < 400 MB (at 5 changes/s)",
            "demo": "measured",
            "busy": "measured",
        }
        for name, result in results.items():
            report.rows.append(
                Row(
                    f"pipeline cost, {labels[name]}: {result['changes_per_s']:g} changes/s into the lake",
                    f"{result['cores']:.2f} cores, peak RSS {result['peak_rss_mb']} MB, "
                    f"{result['lake_files_per_min']:g} lake files/min, {result['lake_versions_per_min']:g} versions/min",
                    targets[name],
                    "`python -m bench light`",
                )
            )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return report
