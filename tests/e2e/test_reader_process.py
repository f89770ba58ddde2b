"""`totes reader` as a process against real PostgreSQL and kinesalite: kill -9 at any moment
loses nothing, SIGTERM stops cleanly, a restarted PostgreSQL is reconnected to."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest

from tests.conftest import make_scratch_dir
from tests.reader_harness import apply_events, current_lsn, source_state, state_diff, with_all_columns
from tests.run_process import slot_confirmed
from tests.stream_helpers import events_by_shard, new_stream, read_stream
from totesys.embedded import EmbeddedPostgres
from totesys.schema import TABLES, create_schema, ensure_database
from totesys.simulator import Simulator


def _wait_confirmed(dsn: str, lsn: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while slot_confirmed(dsn, "totes_cdc") < lsn:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"slot not confirmed up to {lsn:X}"
        time.sleep(0.2)


class ReaderProcess:
    """`totes reader` on its own: without `lake`, durable is what Kinesis acknowledged (these
    tests read the stream back, no processor runs)."""

    def __init__(self, dsn: str, stream: str, endpoint: str, home, *extra: str, lake=None):
        self.home = home
        durability = () if lake else ("--durability", "kinesis")
        self.args = [
            sys.executable,
            "-m",
            "totes_cli",
            "reader",
            "--source",
            dsn,
            "--stream",
            stream,
            *durability,
            *extra,
        ]
        # These tests compare the stream with the source value for value: personal data kept as is.
        config = home / "totes.toml"
        config.write_text('[personal-data]\n"staff.email_address" = "keep"\n"address.phone" = "keep"\n')
        self.env = {
            **os.environ,
            "TOTES_HOME": str(home),
            "AWS_ENDPOINT_URL_KINESIS": endpoint,
            "TOTES_CONFIG": str(config),
        }
        if lake:
            self.env["TOTES_LAKE"] = str(lake)

    def start(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.args + list(extra), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    @contextmanager
    def running(self) -> Iterator[subprocess.Popen]:
        """The reader started; killed if it still runs when the block ends."""
        process = self.start()
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def _stop(process: subprocess.Popen, sig: signal.Signals) -> tuple[str, str]:
    """`sig` sent, then the process's (stdout, stderr) once it has ended."""
    process.send_signal(sig)
    return process.communicate(timeout=60)


def _stream_state(kinesis, stream):
    events = [e for shard in events_by_shard(read_stream(kinesis, stream)).values() for e in shard]
    return apply_events(events), events


@pytest.mark.slow
def test_kill_9_during_a_workload_then_restart_loses_no_change(totesys_dsn, kinesis, kinesalite_url):
    with Simulator(totesys_dsn, seed=21) as simulator:
        simulator.seed_history(15, until=datetime(2024, 11, 15, 18))
    stream = new_stream(kinesis, shards=2)
    reader = ReaderProcess(totesys_dsn, stream, kinesalite_url, make_scratch_dir("totes-reader-"))

    stop = threading.Event()
    business = Simulator(totesys_dsn, seed=22)
    worker = threading.Thread(
        target=business.run_live, kwargs={"rate": 150, "stop_event": stop, "chaos": True, "chaos_every": 20}
    )
    worker.start()
    rng = random.Random(7)
    kills = 0
    try:
        for _ in range(3):
            process = reader.start()
            time.sleep(rng.uniform(1.5, 4.0))
            assert process.poll() is None, process.communicate()[1][-3000:]
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
    finally:
        stop.set()
        worker.join()
        business.close()
    with reader.running() as process:
        _wait_confirmed(totesys_dsn, current_lsn(totesys_dsn), process)
        _, stderr = _stop(process, signal.SIGTERM)
    assert process.returncode == 0, stderr[-3000:]
    assert kills == 3

    got, events = _stream_state(kinesis, stream)
    got, want = with_all_columns(got), source_state(totesys_dsn, TABLES)
    assert got == want, state_diff(got, want)
    # Duplicates are allowed (dedupe on (lsn, seq)); a duplicated id must be the same event.
    by_id = {}
    for event in events:
        assert by_id.setdefault(event.event_id, event) == event


@pytest.mark.slow
def test_reader_reconnects_when_postgresql_restarts(kinesis, kinesalite_url):
    server = EmbeddedPostgres(make_scratch_dir("totes-restart-"))
    dsn = ensure_database(server.start())
    create_schema(dsn)
    try:
        with Simulator(dsn, seed=3) as simulator:
            simulator.seed_history(5, until=datetime(2024, 11, 15, 18))
            stream = new_stream(kinesis, shards=1)
            reader = ReaderProcess(dsn, stream, kinesalite_url, make_scratch_dir("totes-reader-"), "--emf")
            with reader.running() as process:
                _wait_confirmed(dsn, current_lsn(dsn), process)
                server.restart()
                simulator.close()
                simulator.run_live(rate=0, events=30)
                _wait_confirmed(dsn, current_lsn(dsn), process, timeout=90)
                status_file = reader.home / "reader" / "totes_cdc.status.json"
                deadline = time.monotonic() + 30
                while not status_file.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                status = subprocess.run(
                    [sys.executable, "-m", "totes_cli", "status", "--dsn", dsn],
                    env=reader.env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                stdout, stderr = _stop(process, signal.SIGINT)
        assert process.returncode == 0, stderr[-3000:]
        assert "reconnecting" in stderr
        assert "durability is what Kinesis acknowledged" in stderr  # --durability kinesis says what it risks
        emf = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert (
            emf and "EventsPerSecond" in emf[0] and emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "totes-cdc"
        )
        assert status.returncode == 0 and "reader  slot totes_cdc" in status.stdout
        got, _ = _stream_state(kinesis, stream)
        want = source_state(dsn, TABLES)
        assert got == want, state_diff(got, want)
    finally:
        server.stop()
