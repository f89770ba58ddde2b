"""`totes demo` serves the dashboard, prints its address, and the dashboard follows the running
pipeline by itself; Ctrl-C stops the dashboard with the rest, and so does a kill -9 of the demo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import make_scratch_dir
from tests.cli_helpers import TOTES, needs_embedded
from totesys.embedded import EmbeddedPostgres


def business(address: str) -> dict | None:
    try:
        with urllib.request.urlopen(address + "api/business", timeout=30) as response:  # nosec B310 # 127.0.0.1
            return json.load(response)
    except urllib.error.HTTPError:
        return None  # no warehouse yet


def start_demo(prefix: str, *options: str) -> tuple[subprocess.Popen, dict, list[str], threading.Thread]:
    """`totes demo` in a fresh home, its stderr collected line by line as it runs."""
    home = make_scratch_dir(prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "TOTES_"))}
    env.update({"TOTES_HOME": str(home), "TOTES_CONFIG": str(home / "none.toml")})
    process = subprocess.Popen(
        [*TOTES, "demo", *options, "--seed", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    return process, env, lines, reader


@needs_embedded
@pytest.mark.slow
def test_demo_prints_the_dashboards_address_and_the_dashboard_follows_the_pipeline():
    process, env, lines, reader = start_demo("totes-demo-dashboard-", "--history-days", "5", "--rate", "20")
    home = Path(env["TOTES_HOME"])
    try:
        address, deadline = None, time.monotonic() + 120
        while address is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", "".join(lines))
            address = found.group(1) if found else None
            time.sleep(0.5)
        assert address, "".join(lines)[-3000:]
        positions: list[int] = []
        while time.monotonic() < deadline and len(set(positions)) < 3:
            data = business(address)
            if data and data["checkpoint_lsn"]:
                positions.append(data["checkpoint_lsn"])
                assert sum(r["orders"] for r in next(v for v in data["views"] if v["name"] == "sales-by-month")["rows"])
            time.sleep(1)
        assert len(set(positions)) >= 3 and positions == sorted(positions), positions
        with urllib.request.urlopen(address, timeout=30) as page:  # nosec B310 # 127.0.0.1
            assert "vega.js" in page.read().decode()
        # pipeline health: the dashboard found the embedded source by itself (no DSN was passed)
        health = None
        while time.monotonic() < deadline:
            with urllib.request.urlopen(address + "api/health", timeout=30) as response:  # nosec B310 # 127.0.0.1
                health = json.load(response)
            lag_rows = health["charts"][1]["data"]["values"]
            if health["now"].get("source_wal_lsn") and health["now"].get("lake_watermark") and lag_rows:
                break
            time.sleep(1)
        assert health["now"]["source_wal_lsn"] and health["now"]["lake_watermark"], health["now"]
        assert {row["series"] for row in lag_rows} == {"commit → warehouse lag (s)"}, lag_rows
        assert all(row["seconds"] >= 0 for row in lag_rows)
        # the demo writes the lake: an erasure (which vacuums with no retention) waits for it to stop
        refused = subprocess.run(
            [*TOTES, "lake", "forget", "staff", "1"], capture_output=True, text=True, env=env, timeout=120
        )
        assert refused.returncode == 2 and "The pipeline is running" in refused.stderr, refused.stderr
        process.send_signal(signal.SIGINT)
        process.wait(90)
    finally:
        if process.poll() is None:
            process.kill()
        EmbeddedPostgres(home / "source").stop()
    reader.join(10)
    assert process.returncode == 0, "".join(lines)[-3000:]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(address, timeout=5)  # nosec B310 # the dashboard stopped with the demo


@needs_embedded
@pytest.mark.slow
def test_no_child_of_a_demo_killed_9_keeps_running():
    """The dashboard and the local Kinesis server end with the demo, which SIGKILL gives no
    chance to stop them (the embedded totesys is a server of its own: the next demo resumes it)."""
    process, env, lines, reader = start_demo("totes-demo-killed-", "--history-days", "1", "--rate", "5")
    home = Path(env["TOTES_HOME"])
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and "dashboard: http" not in "".join(lines):
            time.sleep(0.5)
        assert "dashboard: http" in "".join(lines), "".join(lines)[-3000:]
        children = psutil.Process(process.pid).children(recursive=True)
        commands = [" ".join(child.cmdline()) for child in children]
        assert any("totes_cli dashboard" in c for c in commands) and any("kinesalite" in c for c in commands), commands
        process.kill()
        process.wait()
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [" ".join(child.cmdline()) for child in alive]
    finally:
        if process.poll() is None:
            process.kill()
        for child in children:
            if child.is_running():
                child.kill()
        EmbeddedPostgres(home / "source").stop()
    reader.join(10)
