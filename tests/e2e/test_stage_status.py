"""What people see of each stage: the reader's events per second in `totes status` and on the
dashboard's health page (from its status file, for `totes run` as for `totes reader`), one
default slot for `totes run` and `totes reader` on a local lake, and `totes status --json`
naming a warehouse that is not there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from datetime import datetime

import psycopg2
import pytest

from dashboard.reading import Warehouse, rates, sample
from tests.conftest import make_scratch_dir
from tests.run_process import wait_for
from tests.cli_helpers import totes
from totes_cli.pipeline import Pipeline, PipelineConfig
from totesys.simulator import Simulator


def _status_file(lake, slot: str):
    return lake / "_local" / "reader" / f"{slot}.status.json"


def _reported(lake, slot: str) -> dict:
    path = _status_file(lake, slot)
    return json.loads(path.read_text()) if path.exists() else {}


def _our_slots(dsn: str) -> set[str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")
        return {name for (name,) in cur.fetchall()}


def test_the_reader_inside_run_reports_its_events_to_status_and_the_health_page(
    totesys_dsn, kinesalite_url, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite_url)
    home = make_scratch_dir("totes-stage-status-")
    lake = home / "lake"
    config = PipelineConfig(
        source_dsn=totesys_dsn,
        lake=str(lake),
        warehouse=str(home / "warehouse.duckdb"),
        stream=f"status-{uuid.uuid4().hex[:8]}",
        shards=1,
        heartbeat_seconds=0.5,
        status_seconds=0.2,
        maintain_every=0,
    )
    pipeline = Pipeline(config)
    thread = threading.Thread(target=pipeline.run, daemon=True)
    with Simulator(totesys_dsn, seed=11) as simulator:
        simulator.seed_history(2, until=datetime(2024, 11, 15, 18))
        thread.start()
        try:
            wait_for(lambda: (lake / "_local" / "pipeline.json").exists(), 60, "the pipeline to name its slot")
            slot = json.loads((lake / "_local" / "pipeline.json").read_text())["slot"]
            wait_for(
                lambda: _reported(lake, slot).get("snapshot_events") and not pipeline.errors,
                90,
                "the reader to report its snapshot's events",
            )
            warehouse = Warehouse(config.warehouse)
            before = sample(str(lake), warehouse, None)
            simulator.run_live(rate=0, events=30)
            after = wait_for(
                lambda: (s := sample(str(lake), warehouse, None)).reader_events > before.reader_events and s,
                90,
                "the reader's reported events to move",
            )
        finally:
            pipeline.stop.set()
            thread.join(90)
    assert not pipeline.errors, pipeline.errors
    reader_rates = [row for row in rates([before, after]) if row["series"] == "reader events/s"]
    assert reader_rates and reader_rates[0]["rate"] > 0, rates([before, after])

    shown = totes("status", "--json", "--source", totesys_dsn, "--lake", str(lake), home=home, timeout=60)
    assert shown.returncode == 0, shown.stderr[-2000:]
    readers = json.loads(shown.stdout)["readers"]
    assert readers[slot]["events"] == _reported(lake, slot)["events"] > 0
    assert readers[slot]["events_per_second"] is not None
    text = totes("status", "--source", totesys_dsn, "--lake", str(lake), home=home, timeout=60)
    assert f"reader  slot {slot}" in text.stdout, text.stdout


@pytest.mark.slow
def test_run_then_reader_on_the_same_local_lake_read_one_slot(totesys_dsn, kinesalite_url):
    with Simulator(totesys_dsn, seed=12) as simulator:
        simulator.seed_history(2, until=datetime(2024, 11, 15, 18))
    home = make_scratch_dir("totes-one-slot-")
    lake, stream = home / "lake", f"one-slot-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "TOTES_"))}
    env.update(
        TOTES_HOME=str(home),
        TOTES_CONFIG=str(home / "none.toml"),
        AWS_ENDPOINT_URL_KINESIS=kinesalite_url,
        COLUMNS="200",
    )
    common = ["--source", totesys_dsn, "--lake", str(lake), "--stream", stream, "--shards", "1"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "totes_cli",
            "run",
            *common,
            "--warehouse",
            str(home / "warehouse.duckdb"),
            "--until-caught-up",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    slot = json.loads((lake / "_local" / "pipeline.json").read_text())["slot"]
    assert _our_slots(totesys_dsn) == {slot}

    reader = subprocess.Popen(
        [sys.executable, "-m", "totes_cli", "reader", *common],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        said = []
        for line in reader.stderr:
            said.append(line)
            if "Ctrl-C stops" in line:
                break
        reader.send_signal(signal.SIGINT)
        said.append(reader.communicate(timeout=60)[1])
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, "".join(said)[-3000:]
    assert f"(slot {slot!r})" in "".join(said), said
    assert _our_slots(totesys_dsn) == {slot}  # no second slot holding WAL back
    # the reader went on from the run's state: no second snapshot
    assert json.loads(_status_file(lake, slot).read_text())["snapshot_events"] == 0


def test_status_json_names_a_named_warehouse_that_is_not_there():
    home = make_scratch_dir("totes-status-json-")
    missing = home / "nowhere.duckdb"
    shown = totes(
        "status",
        "--json",
        "--warehouse",
        str(missing),
        "--source",
        "postgresql://nobody@127.0.0.1:1/x",
        home=home,
        timeout=60,
    )
    assert shown.returncode == 1
    found = json.loads(shown.stdout)
    assert found["warehouse_error"] and f"There is no warehouse at {missing}" in found["warehouse_error"], found
