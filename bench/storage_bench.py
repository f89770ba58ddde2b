"""Storage: lake bytes against live bytes while the demo's load runs, with maintenance.

    python -m bench storage [--quick]

An embedded PostgreSQL seeded like `totes demo` (a year of history; 60 days with --quick),
the pipeline as `totes demo` runs it (reader, kinesalite, processor, lake, sync, and the
maintenance thread with its cadence, `--retain 1m`, the demo's default), and the demo's
simulated business (`Simulator.run_live`) accelerated four times: 20 events/s for 15 minutes
are the business events of an hour of the demo (5 events/s); --quick runs 4 minutes.
Every `SAMPLE_SECONDS` it measures every lake table: bytes stored (every file under the
table, `_delta_log` included) and live bytes (the data files of the current version), as
`totes status` shows them.

What the numbers mean: stored ≈ live + what was written during the last `retention`
(superseded files and log entries that time travel inside the window needs) + what the
last compaction replaced. So amplification = stored / live ≈ 1 + W·R / L, with W the bytes
the pipeline writes per second, R the retention and L the live bytes. W is set mostly by
the number of commits (each processor window commits a small file and a log entry per table
and shard, whatever the rate), L by the data. The run reports W (from the growth between
samples before anything could be reclaimed) so the bound can be worked out for any R.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from bench import Report, Row
from lake.maintenance import DEMO_RETENTION, format_retention, lake_sizes
from totes_cli.pipeline import Pipeline, PipelineConfig
from totesys.embedded import EmbeddedPostgres
from totesys.schema import create_schema, ensure_database
from totesys.simulator import Simulator

NAME = "storage"
DESCRIPTION = "lake bytes stored vs live bytes over time under the demo's load, with maintenance"
SAMPLE_SECONDS = 15.0
BOUND = 3.0


def _measure(lake: str) -> tuple[int, int]:
    from lake.layout import LakeLayout

    sizes = lake_sizes(LakeLayout(lake))
    return sum(s.stored_bytes for s in sizes), sum(s.live_bytes for s in sizes)


def composition(lake: str) -> dict[str, int]:
    """Bytes stored by kind of table (change logs, state tables, the rest) and by what they are
    (data files, `_delta_log`): where the amplification comes from."""
    from collections import Counter

    from lake.layout import LakeLayout

    layout = LakeLayout(lake)
    found: Counter = Counter()
    for size in lake_sizes(layout):
        kind = size.uri.removeprefix(layout.root + "/").split("/")[0]
        log, _ = layout.stored_bytes(f"{size.uri}/_delta_log")
        found[f"{kind} data"] += size.stored_bytes - log
        found[f"{kind} log"] += log
        found[f"{kind} live"] += size.live_bytes
    return dict(found)


def measure(dsn: str, root: Path, rate: float, seconds: float, retention: timedelta, say) -> dict:
    config = PipelineConfig(
        source_dsn=dsn, lake=str(root / "lake"), warehouse=str(root / "warehouse.duckdb"), retention=retention
    )
    pipeline = Pipeline(config)
    stop = threading.Event()
    business = Simulator(dsn, seed=7)
    worker = threading.Thread(target=lambda: business.run_live(rate, stop_event=stop), daemon=True)
    samples = []
    pipeline.start()
    try:
        while pipeline.sync.synced_upto == 0 and not pipeline.errors:  # the snapshot is in
            time.sleep(0.5)
        started = time.monotonic()
        worker.start()
        while time.monotonic() - started < seconds and not pipeline.errors:
            time.sleep(SAMPLE_SECONDS)
            stored, live = _measure(config.lake)
            samples.append(
                {
                    "t_s": round(time.monotonic() - started),
                    "stored_bytes": stored,
                    "live_bytes": live,
                    "amplification": round(stored / live, 2) if live else None,
                    "events": business.stats.events,
                    "maintenance_rounds": pipeline.maintenance.rounds,
                }
            )
            say(
                f"  {samples[-1]['t_s']:>5} s  stored {stored / 2**20:7.2f} MiB  live {live / 2**20:6.2f} MiB  "
                f"x{samples[-1]['amplification']}  ({business.stats.events:,} business events, "
                f"{pipeline.maintenance.rounds} maintenance rounds)"
            )
        at_end = composition(config.lake)
    finally:
        stop.set()
        worker.join(timeout=30)
        business.close()
        pipeline.shutdown()
    if pipeline.errors:
        raise RuntimeError(f"{pipeline.errors[0][0]} failed: {pipeline.errors[0][1]!r}")
    settled = [s for s in samples if s["t_s"] >= retention.total_seconds() + SAMPLE_SECONDS]
    first = samples[0] if samples else None
    # Before the first window has passed nothing can be reclaimed: the growth then is what
    # the pipeline writes (a lower bound: compaction shrinks live files meanwhile).
    early = [s for s in samples if s["t_s"] <= retention.total_seconds()]
    written = (
        (early[-1]["stored_bytes"] - early[0]["stored_bytes"]) / max(early[-1]["t_s"] - early[0]["t_s"], 1)
        if len(early) >= 2
        else None
    )
    return {
        "rate_events_per_s": rate,
        "seconds": seconds,
        "retention": format_retention(retention),
        "samples": samples,
        "first_live_bytes": first["live_bytes"] if first else None,
        "max_amplification_after_first_window": max((s["amplification"] for s in settled), default=None),
        "final_amplification": samples[-1]["amplification"] if samples else None,
        "written_bytes_per_s": round(written) if written else None,
        "composition_at_end": at_end,
    }


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    report = Report()
    root = Path(tempfile.mkdtemp(prefix="totes-storage-bench-"))
    server = EmbeddedPostgres(root / "pg")
    rate, seconds = (20.0, 240.0) if quick else (20.0, 900.0)
    retention = DEMO_RETENTION
    try:
        dsn = ensure_database(server.start())
        create_schema(dsn)
        with Simulator(dsn, seed=1) as simulator:
            simulator.seed_history(60 if quick else 365, until=datetime(2024, 11, 15, 18))
        say(f"storage: {rate:g} business events/s for {seconds:.0f} s, --retain {format_retention(retention)}")
        result = measure(dsn, root / "run", rate, seconds, retention, say)
        report.raw["storage"] = result
        worst, final = result["max_amplification_after_first_window"], result["final_amplification"]
        report.rows.append(
            Row(
                f"lake stored / live bytes, demo load x4 ({rate:g} business events/s for {seconds / 60:.0f} min "
                f"= {rate * seconds / 5 / 60:.0f} min of the demo's events), "
                f"--retain {result['retention']}",
                f"at most {worst}x after the first window, {final}x at the end "
                f"({result['samples'][-1]['stored_bytes'] / 2**20:.1f} MiB stored, "
                f"{result['samples'][-1]['live_bytes'] / 2**20:.1f} MiB live); the pipeline wrote about "
                f"{(result['written_bytes_per_s'] or 0) / 1024:.0f} KiB/s",
                f"<= {BOUND:g}x",
                "`python -m bench storage`",
            )
        )
        report.notes.append(
            "amplification ~ 1 + W*R/L (W bytes written per second, R the retention, L live "
            "bytes): see bench/README.md for the bound at other retentions."
        )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return report
