"""Reader benchmarks: decode + publish throughput against pg_recvlogical, and memory through
a one-million-row transaction.

The runs and their reports are here; the source is `bench/source.py`, one drain of a slot
(pg_recvlogical, or a Reader in its own process) `bench/reader_runs.py`, and that process
`bench/reader_child.py`.

Everything runs on a private embedded PostgreSQL and a private kinesalite, both in one
scratch directory under the system temp dir that is removed at the end.

1. Throughput. Static totesys data is seeded, the publication `totes_cdc` is created for the
   11 tables, then several pgoutput slots are created at the same point. A known WAL load
   follows: N sales_order inserts then N updates of those rows, in transactions of
   `txn_rows` rows, and a final transactional logical message (the end marker). Each slot is
   then drained once, one after the other:
     * slots A1-A3 by `pg_recvlogical` (the server's own decoding speed, written to
       /dev/null; three times, as one run takes only a second or two; the median counts);
     * slot B by the Reader into a real Publisher on kinesalite (4 shards), until Kinesis
       acknowledged the end marker's transaction;
     * slot C by the Reader into a sink that counts events and drops them (decode cost only);
     * slot P like C with a personal-data policy on sales_order (a keyed hash and a mask of
       its text columns): the cost of the path that rewrites row bytes, against C;
     * slot D (with --profile) like B under cProfile, for where the time goes.
   Each Reader runs alone in a child process, so its CPU time and RSS are its own.

2. Memory. New slots, then ONE transaction inserting `big_rows` sales_order rows, then the
   Reader streams it into the Publisher on kinesalite, into the null sink, and into a
   Publisher whose linger is so long that only its byte limits bound its buffer, while the
   child samples its RSS every 20 ms; VmHWM is the kernel's peak.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import Report, Row
from bench.orders import Load, generate_load
from bench.reader_runs import run_pg_recvlogical, run_reader
from bench.source import Source

NAME = "reader"
DESCRIPTION = "cdc_reader: events/s vs pg_recvlogical, and peak RSS through a 1M-row transaction"

SHARDS = 4
RSS_TARGET_MB = 200
RECVLOGICAL_RUNS = 3
# The memory run is repeated with a linger this long, so that only the Publisher's byte
# limits (per-shard batch, max_buffer_bytes) bound what it buffers.
STRESS_LINGER = 30.0
POLICY = {"sales_order.agreed_delivery_date": "hash", "sales_order.agreed_payment_date": "mask:last2"}
"""The policy of the personal-data run: both text columns of the load's table rewritten."""
REPRODUCE = "`python -m bench reader`"
REPRODUCE_QUICK = "`python -m bench reader --quick`"


@dataclass(frozen=True)
class Sizes:
    rows: int
    """sales_order rows inserted, then updated again: 2 * rows change events."""
    txn_rows: int
    """rows per transaction of the throughput load"""
    big_rows: int
    """rows of the single transaction of the memory benchmark"""
    profile_events: int
    """the profiled run stops after this many events"""


FULL = Sizes(rows=250_000, txn_rows=500, big_rows=1_000_000, profile_events=200_000)
QUICK = Sizes(rows=20_000, txn_rows=500, big_rows=100_000, profile_events=40_000)


# -- the benchmark ----------------------------------------------------------------------------


def machine_context() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        memory_gb = None
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    from change_events.kinesis import ensure_stream, kinesis_client
    from local_stack.kinesalite import Kinesalite, KinesaliteNotInstalled

    sizes = QUICK if quick else FULL
    report = Report()
    raw = report.raw
    raw["machine"] = machine_context()
    raw["sizes"] = asdict(sizes)
    root = Path(tempfile.mkdtemp(prefix="totes-bench-"))
    source = Source(root)
    kinesalite = Kinesalite(root / "kinesis")
    results: dict[str, dict] = {}
    try:
        say(f"scratch directory {root}")
        source.start()
        raw["postgres"] = source.server_version()
        try:
            endpoint = kinesalite.start()
            client = kinesis_client(endpoint_url=endpoint)
        except KinesaliteNotInstalled as error:
            endpoint = client = None
            report.notes.append(f"Kinesis runs skipped: {error}")
            say(f"Kinesis runs skipped: {error}")

        def reader_run(key: str, slot: str, load: Load, sink: str, stream: str | None = None, **options) -> dict:
            if stream is not None:
                ensure_stream(client, stream, SHARDS)
                options.update(endpoint=endpoint, stream=stream, kinesalite_pid=kinesalite.pid)
            result = results[key] = raw[key] = run_reader(source, root, slot, load, sink=sink, **options)
            if not result["stopped_early"] and result["events"] != load.events:
                report.notes.append(f"{key} streamed {result['events']} events, expected {load.events}")
            say(
                f"  {result['seconds']:.2f} s, {result['events_per_second']:,.0f} events/s, "
                f"RSS {result['rss_before_mb']:.0f} MB before, at most "
                f"{result['rss_peak_sampled_mb']:.0f} MB while streaming"
            )
            return result

        # 1. throughput: every slot created at the same point, before the load
        kinesis = client is not None
        recv_slots = [f"bench_recvlogical_{n}" for n in range(1, RECVLOGICAL_RUNS + 1)]
        slots = [*recv_slots, "bench_reader_null", "bench_reader_policy"]
        if kinesis:
            slots.append("bench_reader_kinesis")
            if profile:
                slots.append("bench_reader_profile")
        start_lsn = source.create_slots(slots)
        say(
            f"generating the load: {sizes.rows} inserts + {sizes.rows} updates of sales_order "
            f"in transactions of {sizes.txn_rows} rows"
        )
        load = generate_load(source, start_lsn, sizes.rows, sizes.txn_rows)
        raw["load"] = {**asdict(load), "events": load.events, "wal_bytes": load.wal_bytes}
        say(
            f"  {load.events} events, {load.transactions} transactions, "
            f"{load.wal_bytes / 2**20:.0f} MiB of WAL in {load.seconds:.1f} s"
        )

        runs = []
        for slot in recv_slots:
            say(f"pg_recvlogical -> /dev/null ({slot})")
            runs.append(run_pg_recvlogical(source, slot, load.end_lsn))
            runs[-1]["events_per_second"] = load.events / runs[-1]["seconds"]
            say(f"  {runs[-1]['seconds']:.2f} s, {runs[-1]['events_per_second']:,.0f} events/s")
        recv = dict(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2])
        recv["all_seconds"] = [round(r["seconds"], 3) for r in runs]
        results["pg_recvlogical"] = raw["pg_recvlogical"] = recv
        if kinesis:
            say(f"Reader -> Publisher -> kinesalite ({SHARDS} shards)")
            reader_run("reader_kinesis", "bench_reader_kinesis", load, "kinesis", "bench-throughput")
        say("Reader -> null sink")
        reader_run("reader_null", "bench_reader_null", load, "null")
        say(f"Reader -> null sink, personal-data policy {POLICY}")
        reader_run("reader_policy", "bench_reader_policy", load, "null", policy=POLICY)
        if kinesis and profile:
            say(f"Reader -> kinesalite under cProfile (first {sizes.profile_events} events)")
            reader_run(
                "reader_profile",
                "bench_reader_profile",
                load,
                "kinesis",
                "bench-profile",
                profile=True,
                max_events=sizes.profile_events,
            )
        source.drop_slots(slots)

        # 2. memory through one big transaction
        big_slots = ["bench_big_null"] + (["bench_big_kinesis", "bench_big_no_linger"] if kinesis else [])
        big_start = source.create_slots(big_slots)
        say(f"one transaction of {sizes.big_rows} sales_order inserts")
        big = generate_load(source, big_start, sizes.big_rows, sizes.big_rows, updates=False)
        raw["big_load"] = {**asdict(big), "events": big.events, "wal_bytes": big.wal_bytes}
        say(f"  {big.wal_bytes / 2**20:.0f} MiB of WAL in {big.seconds:.1f} s")
        if kinesis:
            say("Reader -> Publisher -> kinesalite through it")
            reader_run("big_reader_kinesis", "bench_big_kinesis", big, "kinesis", "bench-rss")
            say(f"the same with Publisher(linger_seconds={STRESS_LINGER:g}): buffer bounded by its byte limits only")
            reader_run(
                "big_reader_no_linger",
                "bench_big_no_linger",
                big,
                "kinesis",
                "bench-rss-no-linger",
                publisher_options={"linger_seconds": STRESS_LINGER},
            )
        say("Reader -> null sink through it")
        reader_run("big_reader_null", "bench_big_null", big, "null")
        source.drop_slots(big_slots)
        if kinesis:
            raw["kinesalite_disk_mb"] = round(_du(root / "kinesis") / 2**20, 1)
    finally:
        kinesalite.stop()
        try:
            source.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)

    report.rows = _rows(load, big, results, REPRODUCE_QUICK if quick else REPRODUCE)
    return report


def _policy_cost(results: dict[str, dict]) -> str:
    plain, policy = results["reader_null"], results["reader_policy"]
    return (
        f"{policy['events_per_second']:,.0f} events/s, {policy['cpu_seconds']:.1f} CPU s = "
        f"{policy['cpu_seconds'] / plain['cpu_seconds']:.2f}x the CPU seconds without a policy "
        f"({plain['cpu_seconds']:.1f} s)"
    )


def _rss(result: dict) -> str:
    return f"{result['peak_rss_mb']:.0f} MB peak (VmHWM); {result['rss_before_mb']:.0f} MB before streaming"


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rows(load: Load, big: Load, results: dict[str, dict], reproduce: str) -> list[Row]:
    skipped = "skipped: kinesalite is not installed (`make install`)"
    recv = results["pg_recvlogical"]

    def rate(key: str) -> str:
        if key not in results:
            return skipped
        r = results[key]
        return (
            f"{r['events_per_second']:,.0f} events/s ({r['seconds']:.1f} s) = "
            f"{r['events_per_second'] / recv['events_per_second']:.2f}x pg_recvlogical"
        )

    records = skipped
    if "reader_kinesis" in results:
        r = results["reader_kinesis"]
        stats = r["records"]
        records = (
            f"{r['publisher']['events_per_record']:,.0f} events/record; avg "
            f"{stats['avg_event_record_bytes'] / 1024:,.0f} KiB, max "
            f"{stats['max_event_record_bytes'] / 1024:,.0f} KiB (zstd of avg "
            f"{stats['avg_uncompressed_body_bytes'] / 1024:,.0f} KiB uncompressed)"
        )
    return [
        Row(
            f"pg_recvlogical, pgoutput to /dev/null ({load.events:,} sales_order changes in {load.transactions} txns)",
            f"{recv['events_per_second']:,.0f} events/s ({recv['seconds']:.2f} s, median of "
            f"{', '.join(f'{t:.2f}' for t in recv['all_seconds'])} s)",
            "baseline: the server's own decoding",
            reproduce,
        ),
        Row(
            f"Reader decode + publish into Publisher on kinesalite, {SHARDS} shards (same load)",
            rate("reader_kinesis"),
            ">= 0.5x pg_recvlogical",
            reproduce,
        ),
        Row("Reader decode only, null sink (same load)", rate("reader_null"), "measured, no target", reproduce),
        Row(
            "Reader decode only, null sink, sales_order under a personal-data policy (a keyed hash and "
            "a mask of its two text columns; same load, same run)",
            _policy_cost(results),
            "measured against the run without a policy",
            reproduce,
        ),
        Row("Kinesis records of the decode + publish run", records, ">= 100 events, <= 1 MiB per record", reproduce),
        Row(
            f"Reader RSS through one {big.inserts:,}-row transaction, into kinesalite",
            _rss(results["big_reader_kinesis"]) if "big_reader_kinesis" in results else skipped,
            f"< {RSS_TARGET_MB} MB",
            reproduce,
        ),
        Row(
            "Reader RSS through the same transaction, null sink",
            _rss(results["big_reader_null"]),
            f"< {RSS_TARGET_MB} MB",
            reproduce,
        ),
        Row(
            f"Reader RSS through the same transaction, kinesalite, Publisher(linger_seconds="
            f"{STRESS_LINGER:g}) (stress: byte limits only)",
            _rss(results["big_reader_no_linger"]) if "big_reader_no_linger" in results else skipped,
            f"< {RSS_TARGET_MB} MB",
            reproduce,
        ),
    ]


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as `python -m bench reader`")
