"""Reader benchmarks: decode + publish throughput against pg_recvlogical, and memory through
a one-million-row transaction.

Why one file (~800 lines): every figure of the reader's table comes from one shared WAL and
one server; the setups they share (server, WAL, kinesalite) would otherwise be passed
between modules. A split by measurement (throughput, memory) is the next step.

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

import cProfile
import gc
import io
import logging
import multiprocessing
import os
import platform
import pstats
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg2

from bench import Report, Row
from bench.orders import Load, generate_load, query
from change_events import format_lsn, parse_lsn
from totes_cli import bootstrap

NAME = "reader"
DESCRIPTION = "cdc_reader: events/s vs pg_recvlogical, and peak RSS through a 1M-row transaction"

PUBLICATION = bootstrap.PUBLICATION
SHARDS = 4
RSS_TARGET_MB = 200
RECVLOGICAL_RUNS = 3
# The memory run is repeated with a linger this long, so that only the Publisher's byte
# limits (per-shard batch, max_buffer_bytes) bound what it buffers.
STRESS_LINGER = 30.0
CHILD_TIMEOUT = 900.0
POLICY = {"sales_order.agreed_delivery_date": "hash", "sales_order.agreed_payment_date": "mask:last2"}
"""The policy of the personal-data run: both text columns of the load's table rewritten."""
POLICY_KEY = b"bench-personal-data-key-0123456789"
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


# -- sinks and adapters (used in the child process) -------------------------------------------


class NullSink:
    """Counts events and drops them; everything is durable as soon as its transaction ends."""

    def __init__(self) -> None:
        self.events = 0
        self.last_ended = 0

    def add(self, event) -> None:
        self.events += 1

    def end_transaction(self, commit_lsn: int) -> None:
        self.last_ended = commit_lsn

    def poll(self, idle: bool = False) -> None:
        pass

    def flush(self) -> None:
        pass

    def publish_watermark(self, lsn: int) -> None:
        pass

    def durable_lsn(self) -> int:
        return self.last_ended


class Acknowledged:
    """Durability = what Kinesis acknowledged (the reader's durability until the lake exists)."""

    def __init__(self, publisher) -> None:
        self.publisher = publisher

    def durable_lsn(self) -> int:
        return self.publisher.acknowledged_lsn


class CountingClient:
    """A Kinesis client that tallies the event records it is asked to put."""

    _HEADER = struct.Struct(">2sBBBI")

    def __init__(self, client) -> None:
        self._client = client
        self.event_records = 0
        self.event_record_bytes = 0
        self.event_record_max = 0
        self.uncompressed_bytes = 0
        self.watermark_records = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def put_records(self, **kwargs):
        from change_events.codec import KIND_EVENTS

        for record in kwargs["Records"]:
            data = record["Data"]
            _, _, kind, _, body = self._HEADER.unpack_from(data)
            if kind == KIND_EVENTS:
                self.event_records += 1
                self.event_record_bytes += len(data)
                self.event_record_max = max(self.event_record_max, len(data))
                self.uncompressed_bytes += body
            else:
                self.watermark_records += 1
        return self._client.put_records(**kwargs)

    def stats(self) -> dict:
        n = self.event_records or 1
        return {
            "event_records_sent": self.event_records,
            "watermark_records_sent": self.watermark_records,
            "avg_event_record_bytes": self.event_record_bytes / n,
            "max_event_record_bytes": self.event_record_max,
            "avg_uncompressed_body_bytes": self.uncompressed_bytes / n,
        }


# -- the child process: one Reader, nothing else ----------------------------------------------


def _stream_worker(spec: dict, out) -> None:
    try:
        result = _stream(spec)
    except BaseException as error:  # reported to the parent, which prints it
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    out.send(result)
    out.close()


def _stream(spec: dict) -> dict:
    import psutil

    from cdc_reader.publisher import Publisher
    from change_events.kinesis import kinesis_client
    from cdc_reader.reader import FileStateStore, Reader, ReaderConfig
    from totesys.schema import TABLES

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    process = psutil.Process()
    marker = spec["marker_lsn"]
    client = None
    if spec["sink"] == "kinesis":
        client = CountingClient(kinesis_client(endpoint_url=spec["endpoint"]))
        sink = Publisher(client, spec["stream"], **spec.get("publisher_options", {}))
        durability = Acknowledged(sink)

        def done() -> bool:
            return sink.acknowledged_lsn >= marker
    else:
        sink = NullSink()
        durability = sink

        def done() -> bool:
            return sink.last_ended >= marker

    from cdc_reader.personal_data import NO_POLICY, parse

    policy = parse(spec["policy"], POLICY_KEY, defaults={}) if spec.get("policy") else NO_POLICY
    reader = Reader(
        spec["dsn"],
        sink,
        durability,
        FileStateStore(Path(spec["state_path"])),
        ReaderConfig(slot=spec["slot"], publication=PUBLICATION, tables=TABLES, personal_data=policy),
    )
    gc.collect()
    rss_before = process.memory_info().rss
    hwm_before = _peak_rss()
    stop = threading.Event()
    watch = _Watch(process, done, reader, stop, spec.get("max_events"), spec["timeout"])
    profiler = cProfile.Profile() if spec.get("profile") else None
    cpu_before = process.cpu_times()
    watch.start()
    try:
        if profiler is not None:
            profiler.enable()
        reader.run(stop)
    finally:
        if profiler is not None:
            profiler.disable()
        stop.set()
        watch.join()
    cpu_after = process.cpu_times()
    if watch.finished_at is None:
        raise RuntimeError("the reader stopped before reaching the end marker")
    if watch.timed_out:
        raise RuntimeError(
            f"the reader did not reach the end marker within {spec['timeout']:g} s ({reader.metrics.events} events)"
        )
    elapsed = watch.finished_at - watch.started_at
    result = {
        "seconds": elapsed,
        "seconds_to_streaming": (watch.streaming_at - watch.started_at) if watch.streaming_at else None,
        "events": reader.metrics.events,
        "transactions": reader.metrics.transactions,
        "bytes_received": reader.metrics.bytes_received,
        "events_per_second": reader.metrics.events / elapsed if elapsed else 0.0,
        "cpu_seconds": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "rss_before_mb": rss_before / 2**20,
        "rss_peak_sampled_mb": watch.rss_peak / 2**20,
        "peak_rss_mb": _peak_rss() / 2**20,
        "peak_rss_before_streaming_mb": hwm_before / 2**20,
        "rss_timeline_mb": watch.timeline(),
        "stopped_early": watch.stopped_early,
    }
    if client is not None:
        result["publisher"] = sink.metrics.as_dict()
        result["records"] = client.stats()
    if profiler is not None:
        result["profile"] = _profile_text(profiler)
    return result


def _peak_rss() -> int:
    """The kernel's RSS high-water mark of this process's memory, in bytes: VmHWM, which starts
    afresh at exec. (ru_maxrss does not: in a spawned child it starts at the parent's RSS at
    fork time.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Watch(threading.Thread):
    """Samples RSS every 20 ms and stops the reader once `done()` (or at the event cap)."""

    def __init__(self, process, done, reader, stop: threading.Event, max_events: int | None, timeout: float) -> None:
        super().__init__(name="bench-watch", daemon=True)
        self.process, self.done, self.reader, self.stop = process, done, reader, stop
        self.max_events, self.timeout = max_events, timeout
        self.started_at = time.perf_counter()
        self.finished_at: float | None = None
        self.streaming_at: float | None = None
        self.timed_out = self.stopped_early = False
        self.rss_peak = 0
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        self.started_at = time.perf_counter()
        while not self.stop.is_set():
            now = time.perf_counter()
            rss = self.process.memory_info().rss
            self.rss_peak = max(self.rss_peak, rss)
            self.samples.append((now - self.started_at, rss))
            if self.streaming_at is None and self.reader.streaming.is_set():
                self.streaming_at = now
            if self.done():
                self.finished_at = now
                break
            if self.max_events and self.reader.metrics.events >= self.max_events:
                self.finished_at, self.stopped_early = now, True
                break
            if now - self.started_at > self.timeout:
                self.finished_at, self.timed_out = now, True
                break
            time.sleep(0.02)
        self.stop.set()

    def timeline(self, points: int = 12) -> list[tuple[float, float]]:
        if not self.samples:
            return []
        step = max(1, len(self.samples) // points)
        picked = self.samples[::step]
        if picked[-1] is not self.samples[-1]:
            picked.append(self.samples[-1])
        return [(round(t, 2), round(rss / 2**20, 1)) for t, rss in picked]


def _profile_text(profiler: cProfile.Profile, limit: int = 22) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs()
    out.write("== by own time (tottime) ==\n")
    stats.sort_stats("tottime").print_stats(limit)
    out.write("== by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


# -- the parent: servers, load, runs ----------------------------------------------------------


class _WalsenderCpu(threading.Thread):
    """CPU seconds of the walsender serving `slot` (sampled every 0.1 s; the last 0.1 s of a
    run may be missed), to see whether the server or the client is the bottleneck."""

    def __init__(self, admin_dsn: str, slot: str) -> None:
        super().__init__(name=f"walsender-{slot}", daemon=True)
        self.admin_dsn, self.slot = admin_dsn, slot
        self.halt = threading.Event()
        self.cpu: dict[int, float] = {}

    def run(self) -> None:
        import psutil

        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        handles: dict[int, psutil.Process] = {}
        try:
            with conn.cursor() as cur:
                while not self.halt.is_set():
                    cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
                    row = cur.fetchone()
                    if row and row[0] and row[0] not in handles:
                        try:
                            handles[row[0]] = psutil.Process(row[0])
                        except psutil.Error:
                            pass
                    for pid, handle in handles.items():
                        try:
                            times = handle.cpu_times()
                            self.cpu[pid] = times.user + times.system
                        except psutil.Error:
                            pass
                    self.halt.wait(0.1)
        finally:
            conn.close()

    def seconds(self) -> float:
        return sum(self.cpu.values())


class Source:
    """An embedded PostgreSQL with the totesys schema, static data and the publication."""

    def __init__(self, root: Path) -> None:
        from totesys.embedded import EmbeddedPostgres

        self.server = EmbeddedPostgres(root / "pg")
        self.admin_dsn = ""
        self.dsn = ""

    def start(self) -> None:
        from cdc_reader.source_setup import ensure_publication
        from totesys.schema import TABLES, create_schema, ensure_database
        from totesys.simulator import Simulator

        self.admin_dsn = self.server.start()
        self.dsn = ensure_database(self.admin_dsn, "totesys")
        create_schema(self.dsn)
        with Simulator(self.dsn, seed=20240101) as simulator:
            simulator.seed_static()
        conn = psycopg2.connect(self.dsn)
        try:
            ensure_publication(conn, PUBLICATION, "public", TABLES)
        finally:
            conn.close()

    def stop(self) -> None:
        socket_dir = self.server.socket_dir
        self.server.stop()
        if not str(socket_dir).startswith(str(self.server.directory)):
            shutil.rmtree(socket_dir, ignore_errors=True)

    def query(self, statement: str, params=None):
        return query(self.dsn, statement, params)

    def server_version(self) -> str:
        return self.query("SHOW server_version")[0][0]

    def create_slots(self, names: list[str]) -> int:
        """pgoutput slots, one after the other with nothing written in between; returns the
        current WAL position after the last."""
        for name in names:
            self.query("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
        return parse_lsn(self.query("SELECT pg_current_wal_lsn()::text")[0][0])

    def drop_slots(self, names: list[str]) -> None:
        for name in names:
            self.query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (name,),
            )


def run_pg_recvlogical(source: Source, slot: str, end_lsn: int, timeout: float = 600.0) -> dict:
    from totesys.embedded import binary

    command = [
        str(binary("pg_recvlogical")),
        "-d",
        source.dsn,
        "--slot",
        slot,
        "--start",
        "--no-loop",
        "--plugin=pgoutput",
        "-o",
        "proto_version=1",
        "-o",
        f"publication_names={PUBLICATION}",
        "-o",
        "messages=true",
        "-f",
        "/dev/null",
        f"--endpos={format_lsn(end_lsn)}",
    ]
    walsender = _WalsenderCpu(source.admin_dsn, slot)
    walsender.start()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    usage = None
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"pg_recvlogical did not reach {format_lsn(end_lsn)} in {timeout:g} s")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
        walsender.halt.set()
        walsender.join()
    stderr = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"pg_recvlogical failed ({process.returncode}): {stderr}")
    return {
        "seconds": elapsed,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "walsender_cpu_seconds": walsender.seconds(),
        "command": " ".join(command),
    }


def run_reader(
    source: Source,
    root: Path,
    slot: str,
    load: Load,
    *,
    sink: str,
    endpoint: str | None = None,
    stream: str | None = None,
    profile: bool = False,
    max_events: int | None = None,
    kinesalite_pid: int | None = None,
    publisher_options: dict | None = None,
    policy: dict | None = None,
) -> dict:
    spec = {
        "policy": policy,
        "dsn": source.dsn,
        "slot": slot,
        "sink": sink,
        "endpoint": endpoint,
        "stream": stream,
        "marker_lsn": load.marker_lsn,
        "state_path": str(root / f"state-{slot}.json"),
        "profile": profile,
        "max_events": max_events,
        "timeout": CHILD_TIMEOUT,
        "publisher_options": publisher_options or {},
    }
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_stream_worker, args=(spec, send), name=f"bench-reader-{slot}")
    walsender = _WalsenderCpu(source.admin_dsn, slot)
    walsender.start()
    kinesalite_cpu = _cpu_seconds(kinesalite_pid)
    child.start()
    send.close()
    try:
        if not receive.poll(CHILD_TIMEOUT + 60):
            raise RuntimeError(f"the reader child for {slot} gave no result")
        result = receive.recv()
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join()
        walsender.halt.set()
        walsender.join()
    if "error" in result:
        raise RuntimeError(f"reader on {slot} ({sink}) failed: {result['error']}\n{result['traceback']}")
    result["walsender_cpu_seconds"] = walsender.seconds()
    if kinesalite_pid is not None:
        result["kinesalite_cpu_seconds"] = _cpu_seconds(kinesalite_pid) - kinesalite_cpu
    return result


def _cpu_seconds(pid: int | None) -> float:
    """CPU seconds a process and its children used so far (0 when unknown)."""
    if pid is None:
        return 0.0
    import psutil

    try:
        process = psutil.Process(pid)
        total = 0.0
        for p in (process, *process.children(recursive=True)):
            times = p.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


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
