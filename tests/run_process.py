"""`totes run` and its stages as child processes for the end-to-end tests: start, wait, kill -9,
and what the source's slot and kinesalite say about them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from cdc_reader.personal_data import Policy, parse
from change_events import parse_lsn
from change_events.kinesis import kinesis_client
from lake.layout import LakeLayout
from lake.progress import Progress
from totesys.simulator import Simulator
from tests.conftest import scratch_folder
from totes_cli import bootstrap
from totes_cli.pipeline import Pipeline, PipelineConfig


REPO = Path(__file__).resolve().parents[1]


# -- `totes run` as a child process ------------------------------------------------------------

RUN_KEY = b"end-to-end-personal-data-key-0001"


@dataclass
class RunProcess:
    """`totes run` against `dsn` with its lake and warehouse in `home`."""

    dsn: str
    home: Path
    slot: str

    # Where `totes` puts them in a home when none is named (passed explicitly all the same).
    @property
    def lake(self) -> Path:
        return Path(bootstrap.home_lake(self.home))

    @property
    def warehouse(self) -> Path:
        return Path(bootstrap.home_warehouse(self.home))

    @property
    def policy(self) -> Policy:
        """The personal-data policy the run applies (the totesys defaults, with RUN_KEY)."""
        return parse({}, RUN_KEY)

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL") and not k.startswith("TOTES_")
        }
        env.update(
            TOTES_HOME=str(self.home),
            TOTES_CONFIG=str(self.home / "none.toml"),
            TOTES_PERSONAL_DATA_KEY=RUN_KEY.decode(),
        )
        return env

    def start(self, *extra: str) -> subprocess.Popen:
        args = [
            sys.executable,
            "-m",
            "totes_cli",
            "run",
            "--source",
            self.dsn,
            "--lake",
            str(self.lake),
            "--warehouse",
            str(self.warehouse),
            "--slot",
            self.slot,
            *extra,
        ]
        log = open(self.home / "run.log", "a")  # noqa: SIM115 - closed with the process
        log.write(f"\n--- {' '.join(args[2:])}\n")
        log.flush()
        process = subprocess.Popen(args, env=self.env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return process

    def log_tail(self, chars: int = 4000) -> str:
        path = self.home / "run.log"
        return path.read_text()[-chars:] if path.exists() else ""


def kinesalite_pids(data_dir: Path) -> list[int]:
    """Live kinesalite servers (node processes) serving `data_dir`."""
    wanted = str(data_dir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if any(wanted.encode() in part and b'"path"' in part for part in argv):
            found.append(int(entry.name))
    return found


def wait_for(
    condition, timeout: float, what: str, process: subprocess.Popen | None = None, log=None, interval: float = 0.2
):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"the process exited with {process.returncode} while waiting for {what}\n{log() if log else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log() if log else ''}")
        time.sleep(interval)


def slot_column(dsn: str, slot: str, column: str) -> str | None:
    """The slot's `column` of pg_replication_slots as text (None: no such slot, or null)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            query = sql.SQL("SELECT {}::text FROM pg_replication_slots WHERE slot_name = %s")
            cur.execute(query.format(sql.Identifier(column)), (slot,))
            row = cur.fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def slot_confirmed(dsn: str, slot: str) -> int:
    """The slot's confirmed_flush_lsn as an integer (0: no slot or nothing confirmed)."""
    confirmed = slot_column(dsn, slot, "confirmed_flush_lsn")
    return parse_lsn(confirmed) if confirmed else 0


def kill_9(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


SLOT = bootstrap.SLOT


class Stages:
    """`totes reader | processor | sync` as child processes sharing one lake and stream."""

    def __init__(self, dsn: str, stream: str, endpoint: str, home: Path):
        self.dsn, self.stream, self.home = dsn, stream, home
        self.lake, self.warehouse = Path(bootstrap.home_lake(home)), Path(bootstrap.home_warehouse(home))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTES_", "AWS_ENDPOINT_URL"))}
        self.env.update(
            TOTES_HOME=str(home),
            TOTES_CONFIG=str(home / "none.toml"),
            TOTES_LAKE=str(self.lake),
            TOTES_PERSONAL_DATA_KEY=RUN_KEY.decode(),
            TOTES_STREAM=stream,
            TOTES_SLOT=SLOT,
            TOTES_WAREHOUSE=str(self.warehouse),
            AWS_ENDPOINT_URL_KINESIS=endpoint,
        )
        self.running: dict[str, subprocess.Popen] = {}

    def log(self, stage: str) -> Path:
        return self.home / f"{stage}.log"

    def start(self, stage: str, *args: str) -> subprocess.Popen:
        extra = ("--source", self.dsn) if stage == "reader" else ()
        with open(self.log(stage), "a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "totes_cli", stage, *extra, *args],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.running[stage] = process
        return process

    def stop(self, stage: str) -> int:
        """SIGTERM, as ECS stops a task; the exit code."""
        process = self.running.pop(stage)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"{stage} did not stop on SIGTERM\n{self.tail(stage)}") from None

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        self.running.clear()

    def tail(self, stage: str, chars: int = 3000) -> str:
        path = self.log(stage)
        return path.read_text()[-chars:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {stage}\n{self.tail(stage)}" for stage in ("reader", "processor", "sync"))

    def watermark(self) -> int:
        shards = [
            s["ShardId"]
            for s in kinesis_client(endpoint_url=self.env["AWS_ENDPOINT_URL_KINESIS"]).list_shards(
                StreamName=self.stream
            )["Shards"]
        ]
        return Progress(LakeLayout(str(self.lake))).lake_watermark(shards)

    def wait_lake(self, lsn: int, timeout: float = 120) -> None:
        wait_for(lambda: self.watermark() >= lsn, timeout, f"the lake watermark to reach {lsn:X}", log=self.logs)

    def sync_once(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "totes_cli", "sync", "--once"],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]


def _config(dsn, home, **overrides) -> PipelineConfig:
    return PipelineConfig(
        source_dsn=dsn, lake=bootstrap.home_lake(home), warehouse=bootstrap.home_warehouse(home), **overrides
    )


def _seed(dsn: str) -> None:

    with Simulator(dsn, seed=11) as simulator:
        simulator.seed_history(3, until=datetime(2024, 11, 15, 18))


def _plant_lake_extra(dsn: str, layout, key: int) -> None:
    """An insert event the source never had: a copy of a real sales order under a new key,
    at an LSN the lake already holds."""

    import psycopg2

    from cdc_reader.catalog import read_table_schema
    from change_events import ChangeEvent, Op
    from lake.timetravel import lake_watermark
    from lake.writer import LakeWriter

    with psycopg2.connect(dsn) as conn:
        schema = read_table_schema(conn, "public", "sales_order")
    conn.close()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM sales_order LIMIT 0")
        names = [d[0] for d in cur.description]
        cur.execute(f"SELECT {', '.join(f'{n}::text' for n in names)} FROM sales_order LIMIT 1")
        row = dict(zip(names, cur.fetchone()))
    conn.close()
    row["sales_order_id"] = str(key)
    event = ChangeEvent(
        schema,
        Op.INSERT,
        lake_watermark(layout),
        10**6,
        None,
        datetime.now(timezone.utc),
        {"sales_order_id": str(key)},
        row,
    )
    LakeWriter(layout).write_batch("planted", [event])


@pytest.fixture(name="home")
def e2e_home():
    """A scratch folder for one pipeline's lake and warehouse (short path: kinesalite and
    PostgreSQL sockets dislike long ones), removed afterwards unless TOTES_E2E_KEEP is set."""
    yield from scratch_folder("totes-e2e-", keep=bool(os.environ.get("TOTES_E2E_KEEP")))


class PipelineThread:
    """`Pipeline.run()` in a thread, stopped on demand; stage errors fail the test."""

    def __init__(self, config: PipelineConfig):
        self.pipeline = Pipeline(config)
        self.thread = threading.Thread(target=self.pipeline.run, name="e2e-pipeline", daemon=True)
        self.thread.start()

    def wait_caught_up(self, lsn: int, timeout: float) -> None:
        def done():
            assert not self.pipeline.errors, self.pipeline.errors
            assert self.thread.is_alive(), "the pipeline stopped"
            return self.pipeline.caught_up_with(lsn)

        wait_for(done, timeout, f"the warehouse to reach {lsn:X}")

    def stop(self) -> None:
        self.pipeline.stop.set()
        self.thread.join(90)
        assert not self.thread.is_alive(), "the pipeline did not shut down"
        assert not self.pipeline.errors, self.pipeline.errors
