"""One drain of a benchmark slot: by pg_recvlogical, or by a Reader in a child process, with the walsender's CPU beside it."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path

import psycopg2

from bench.orders import Load
from bench.reader_child import stream_worker
from bench.source import PUBLICATION, Source
from change_events import format_lsn

CHILD_TIMEOUT = 900.0


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
    child = context.Process(target=stream_worker, args=(spec, send), name=f"bench-reader-{slot}")
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
