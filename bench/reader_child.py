"""The reader benchmark's child process: one Reader into a sink, its CPU seconds, RSS and profile."""

from __future__ import annotations

import cProfile
import gc
import io
import logging
import pstats
import resource
import struct
import threading
import time
import traceback
from pathlib import Path

from bench.source import PUBLICATION

POLICY_KEY = b"bench-personal-data-key-0123456789"


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


def stream_worker(spec: dict, out) -> None:
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
