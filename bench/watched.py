"""A command run and watched: its wall time, CPU seconds and the peak RSS of every process of its tree."""

from __future__ import annotations

import json
import os
import resource
import subprocess  # nosec B404 # fixed argv lists, never a shell
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from totes_cli.bootstrap import StatePaths

RUN_TIMEOUT = 4 * 3600.0


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


def bench_environment(home: Path) -> dict[str, str]:
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
    env = bench_environment(root)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    result = run_watched(argv, env, root / f"{log_name}.log", phase=snapshot_durable(root / "lake"), cwd=code)
    if result["exit_code"] != 0 and not result["timed_out"]:
        raise RuntimeError(f"totes run failed ({result['exit_code']}):\n{result['log_tail']}")
    return result
