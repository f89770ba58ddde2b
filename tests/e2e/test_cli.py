"""The `totes` command as a person uses it: real processes, real servers, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import make_scratch_dir
from totesys.embedded import EmbeddedPostgres
from tests.cli_helpers import TOTES, needs_embedded


def totes(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOTES_HOME": str(home), "TOTES_CONFIG": str(home / "none.toml")}
    env.pop("TOTES_SOURCE_DSN", None)
    return subprocess.run([*TOTES, *args], capture_output=True, text=True, timeout=timeout, env=env)


def postmaster_pid(directory: Path) -> int:
    return int((directory / "pgdata" / "postmaster.pid").read_text().split()[0])


@pytest.fixture
def home():
    path = make_scratch_dir("totes-home-")
    yield path
    EmbeddedPostgres(path / "source").stop()


def test_help_lists_every_command(home):
    result = totes("--help", home=home)
    assert result.returncode == 0
    for command in ("source", "simulate", "doctor", "status", "demo"):
        assert command in result.stdout


@needs_embedded
def test_source_keeps_running_after_start_returns_and_a_second_start_reuses_it(home):
    first = totes("source", "start", home=home)
    assert first.returncode == 0, first.stderr
    dsn = first.stdout.strip()
    pid = postmaster_pid(home / "source")

    second = totes("source", "start", home=home)
    assert second.returncode == 0 and second.stdout.strip() == dsn
    assert "already running" in second.stderr
    assert postmaster_pid(home / "source") == pid

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SHOW wal_level")
        assert cur.fetchone() == ("logical",)
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert cur.fetchone()[0] == 12  # 11 business tables + _prisma_migrations

    assert totes("status", home=home).returncode == 0
    stopped = totes("source", "stop", home=home)
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert not EmbeddedPostgres(home / "source").is_running()
    status = totes("source", "status", home=home)
    assert status.returncode == 1 and "not running" in status.stderr
    # `totes status` still shows the other stages, says what is wrong with the source, exits 1.
    overall = totes("status", home=home)
    assert overall.returncode == 1 and "the source cannot be read" in overall.stderr


@needs_embedded
def test_demo_runs_a_changing_business_and_ctrl_c_stops_everything(home):
    env = {**os.environ, "TOTES_HOME": str(home), "TOTES_CONFIG": str(home / "none.toml")}
    env.pop("TOTES_SOURCE_DSN", None)
    process = subprocess.Popen(
        [*TOTES, "demo", "--history-days", "20", "--rate", "20", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    server = EmbeddedPostgres(home / "source")
    try:
        counts = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(set(counts)) < 3:
            time.sleep(1)
            if not server.is_running():
                continue
            try:
                with psycopg2.connect(server.dsn("totesys")) as conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM sales_order")
                    counts.append(cur.fetchone()[0])
            except psycopg2.Error:
                continue
        assert len(set(counts)) >= 3, f"source did not visibly change: {counts}"
        assert counts == sorted(counts)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr[-6000:]  # all of it: what raised, in which thread
    assert not server.is_running()

    # A rerun resumes on the data it has instead of seeding again.
    rerun = totes("demo", "--duration", "2", "--rate", "5", home=home)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    assert not server.is_running()
