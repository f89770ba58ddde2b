"""The local stack heals: kinesalite killed under a running `totes run` is started again
(and why it died is logged), the lake's disk filling up is one sentence and the pipeline
carries on when space returns; `totes run --wait-for-source` waits for a source that
comes up late."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import psycopg2
import pytest

from tests.conftest import make_scratch_dir
from totesys.simulator import Simulator

SECRET = "Heal-Secret-93ab"


def start_run(*args: str, home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """`totes run` in the background, its stderr in a file."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "TOTES_", "PG"))}
    base.update({"TOTES_HOME": str(home), "TOTES_CONFIG": str(home / "none.toml"), "COLUMNS": "200", **env})
    log = home / "run.stderr"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "totes_cli", "run", *args], env=base, stdout=subprocess.DEVNULL, stderr=stderr
        )
    return process, log


def server_password(dsn: str) -> str:
    """The test server's real password: from its pgpass file, or an invented one for an
    external server whose DSN carries its own (a DSN's password wins over PGPASSWORD)."""
    passfile = psycopg2.extensions.parse_dsn(dsn).get("passfile")
    if not passfile:
        return SECRET
    return Path(passfile).read_text().splitlines()[0].rsplit(":", 1)[1]


def rows(dsn: str, query: str) -> list[tuple]:
    try:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(query)
            result = cur.fetchall()
        conn.close()
        return result
    except psycopg2.Error:  # the warehouse tables are not there yet
        return []


SOURCE_ORDERS = "SELECT sales_order_id, units_sold FROM sales_order ORDER BY 1"
WAREHOUSE_ORDERS = "SELECT sales_order_id, units_sold FROM fact_sales_order WHERE is_current ORDER BY 1"


def wait_until_warehouse_matches(
    source: str, warehouse: str, run: subprocess.Popen, log: Path, timeout: float = 180
) -> None:
    expected = rows(source, SOURCE_ORDERS)
    assert expected
    deadline = time.monotonic() + timeout
    while rows(warehouse, WAREHOUSE_ORDERS) != expected:
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def kinesalite_child(run: subprocess.Popen, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(run.pid).children():
            if child.name() == "node":
                return child
        time.sleep(0.2)
    raise AssertionError("no kinesalite child")


def stop(run: subprocess.Popen) -> int:
    run.send_signal(signal.SIGTERM)
    return run.wait(120)


@pytest.mark.slow
def test_kinesalite_killed_under_run_is_restarted_and_the_warehouse_ends_complete(totesys_dsn, empty_database):
    with Simulator(totesys_dsn, seed=7) as simulator:
        simulator.seed_history(5, until=datetime(2024, 11, 15, 18))
    home = make_scratch_dir("totes-heal-")
    secret = server_password(totesys_dsn)  # a wrong PGPASSWORD would win over the passfile
    run, log = start_run(
        "--lake",
        str(home / "lake"),
        "--warehouse",
        empty_database,
        home=home,
        env={"TOTES_SOURCE_DSN": totesys_dsn, "PGPASSWORD": secret},
    )
    try:
        wait_until_warehouse_matches(totesys_dsn, empty_database, run, log)
        first = kinesalite_child(run)
        environ = Path(f"/proc/{first.pid}/environ").read_bytes()
        assert b"TOTES_SOURCE_DSN" not in environ and b"PGPASSWORD" not in environ and secret.encode() not in environ

        first.kill()  # SIGKILL: no goodbye
        with Simulator(totesys_dsn, seed=8) as simulator:
            simulator.run_live(rate=0, events=60)
        wait_until_warehouse_matches(totesys_dsn, empty_database, run, log)
        second = kinesalite_child(run)
        assert second.pid != first.pid
    finally:
        code = stop(run)
    stderr = log.read_text()
    assert code == 0, stderr[-3000:]
    assert f"kinesalite {first.pid} on " in stderr and "killed by SIGKILL" in stderr, stderr[-3000:]
    assert "starting it again on port" in stderr
    assert "Traceback" not in stderr, stderr[-3000:]


def mount_small_tmpfs(size: str = "64m") -> Path:
    """A small filesystem of our own to fill up; skips where mounting is not permitted."""
    directory = make_scratch_dir("totes-full-")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True, text=True
    )
    if result.returncode != 0:
        directory.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {(result.stderr.strip() or 'not permitted').splitlines()[0]}")
    return directory


def fill(directory: Path) -> Path:
    """Write one file until the filesystem has no room left."""
    ballast = directory / "ballast"
    chunk = b"\0" * 2**20
    with ballast.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
    return ballast


def wait_for(text: str, log: Path, run: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@pytest.mark.slow
def test_a_full_disk_under_the_lake_is_said_and_waited_out(totesys_dsn, empty_database):
    disk = mount_small_tmpfs()
    try:
        with Simulator(totesys_dsn, seed=9) as simulator:
            simulator.seed_history(3, until=datetime(2024, 11, 15, 18))
        home = make_scratch_dir("totes-full-home-")
        run, log = start_run(
            "--lake", str(disk / "lake"), "--warehouse", empty_database, "--source", totesys_dsn, home=home, env={}
        )
        try:
            wait_until_warehouse_matches(totesys_dsn, empty_database, run, log)
            ballast = fill(disk)
            with Simulator(totesys_dsn, seed=10) as simulator:
                simulator.run_live(rate=0, events=60)
            wait_for("disk is full", log, run)
            ballast.unlink()  # space returns: everything carries on by itself
            wait_until_warehouse_matches(totesys_dsn, empty_database, run, log)
        finally:
            code = stop(run)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    stderr = log.read_text()
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    said = [line for line in stderr.splitlines() if "disk is full" in line]
    assert said and len(said) <= 8, said  # said, not repeated at every retry


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("TOTES_TEST_DSN")), reason="starts and stops its own embedded server")
def test_wait_for_source_waits_for_a_source_that_comes_up_late():
    from totesys.embedded import EmbeddedPostgres
    from totesys.schema import create_schema, ensure_database

    directory = make_scratch_dir("totes-late-pg-")
    server = EmbeddedPostgres(directory)
    dsn = ensure_database(server.start(), "totesys")
    create_schema(dsn)
    server.stop()
    home = make_scratch_dir("totes-late-home-")
    run, log = start_run(
        "--source",
        dsn,
        "--lake",
        str(home / "lake"),
        "--until-caught-up",
        "--wait-for-source",
        "inf",
        home=home,
        env={},
    )
    try:
        wait_for("waiting up to inf s: Nothing answers at the unix socket", log, run)
        server.start()
        assert run.wait(180) == 0, log.read_text()[-3000:]
    finally:
        if run.poll() is None:
            stop(run)
        server.stop()
    assert "Traceback" not in log.read_text()
