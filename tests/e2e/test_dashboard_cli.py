"""`totes dashboard` at the command line: a port in use is one sentence; the process the demo
starts gets no variable that may hold a secret, and ends with the demo, even one killed -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.cli_helpers import totes


def test_a_port_in_use_is_one_sentence_naming_the_flag(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = totes(
            "dashboard",
            "--port",
            str(port),
            "--lake",
            str(tmp_path / "lake"),
            "--warehouse",
            str(tmp_path / "warehouse.duckdb"),
            home=tmp_path,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_the_dashboard_the_demo_starts_ends_when_the_demo_is_killed(tmp_path):
    """As `totes demo` starts it (`spawn`, from a process with threads); then that process is
    killed with SIGKILL, which nothing in it can catch."""
    script = (
        "import sys, threading, time; from pathlib import Path; "
        "from totes_cli.dashboard_cmd import spawn; "
        "threading.Thread(target=time.sleep, args=(120,), daemon=True).start(); "
        "home = Path(sys.argv[1]); "
        "process, address = spawn(home, str(home / 'lake'), str(home / 'warehouse.duckdb'), home / 'dashboard.log'); "
        "print(process.pid, address, flush=True); time.sleep(120)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOTES_")}
    env.update({"TOTES_HOME": str(tmp_path), "TOTES_CONFIG": str(tmp_path / "none.toml")})
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid, address = parent.stdout.readline().split()
    finally:
        parent.kill()
        parent.wait()
    dashboard = int(pid)
    assert address.startswith("http://127.0.0.1:"), (tmp_path / "dashboard.log").read_text()
    deadline = time.monotonic() + 20
    while not _gone(dashboard) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(dashboard):
        os.kill(dashboard, signal.SIGKILL)
        pytest.fail("the dashboard outlived the process that started it")
