"""Erasure (`totes lake forget`): the rows of the given keys leave no trace in any file of the
lake (bytes and decoded values of every version, change log and state, Delta log and
checkpoints), on a folder and on S3; every other key's history, and time travel over it,
stays as it was; the lake keeps taking writes; the erasure is recorded without its values."""

from __future__ import annotations

import itertools
import uuid

import pyarrow as pa
import pytest

from lake import LakeLayout, LakeWriter
from lake.erasure import ErasureError, erasures, forget
from lake.maintenance import checkpoint
from lake.timetravel import changes_as_of_lsn, state_as_of_lsn
from tests.moto_s3 import moto_s3  # noqa: F401  (the session's S3 server, a fixture)
from tests.trace_search import lake_contents, traces
from tests.scripted_source import ScriptedSource, insert_staff

STAFF = "public.staff"


@pytest.fixture(params=["folder", "s3"])
def layout(request, tmp_path):
    if request.param == "s3":
        s3 = request.getfixturevalue("moto_s3")
        return LakeLayout(f"s3://{s3.BUCKET}/{uuid.uuid4().hex[:12]}", s3.storage_options)
    return LakeLayout(tmp_path / "lake")


def _staff(src: ScriptedSource, i: int, first: str, email: str) -> None:
    insert_staff(src, i, first, f"Last{i}", email)


def _without(table: pa.Table, key: str) -> list[dict]:
    return [r for r in table.to_pylist() if str(r["staff_id"]) != key]


def test_forget_leaves_no_trace_of_the_rows_and_the_rest_of_history_intact(layout):
    writer = LakeWriter(layout)
    src = ScriptedSource()
    counter = itertools.count()

    def write() -> None:
        batch, src.events[:] = list(src.events), []
        assert not writer.write_batch(f"shardId-{next(counter) % 2:012d}", batch).rejected

    with src.transaction(snapshot=True):
        for i in range(1, 6):
            _staff(src, i, f"Kept{i}", f"kept{i}@terrifictotes.com")
        _staff(src, 7, "Zebedee-Forgotten", "zebedee.forgotten@terrifictotes.com")
    write()
    with src.transaction():
        src.update("staff", 7, first_name="Zebedee-Renamed", last_updated=src.now())
        src.update("staff", 2, first_name="Kept2-second", last_updated=src.now())
    write()
    checkpoint(layout, layout.changes_uri(STAFF))  # checkpoints (with statistics) hold the values too
    checkpoint(layout, layout.state_uri(STAFF))
    middle = src.lsn
    with src.transaction():
        src.update("staff", 7, email_address="zebedee.new@forgotten.example", last_updated=src.now())
        src.update("staff", 3, first_name="Kept3-second", last_updated=src.now())
        _staff(src, 8, "Kept8", "kept8@terrifictotes.com")
    write()
    with src.transaction():
        src.delete("staff", 7)
    write()
    forgotten = [
        "Zebedee-Forgotten",
        "Zebedee-Renamed",
        "zebedee.forgotten@terrifictotes.com",
        "zebedee.new@forgotten.example",
    ]
    assert {v for _, v in traces(lake_contents(layout), forgotten)} == set(forgotten)  # the search finds them
    before = {
        lsn: (state_as_of_lsn(layout, STAFF, lsn), changes_as_of_lsn(layout, STAFF, lsn)) for lsn in (middle, src.lsn)
    }

    erased = forget(layout, STAFF, ["7"])

    assert (erased.change_rows, erased.state_rows) == (4, 1)  # snapshot, two updates, the delete; its tombstone
    assert traces(lake_contents(layout), forgotten) == []
    for lsn, (state, changes) in before.items():
        assert state_as_of_lsn(layout, STAFF, lsn).to_pylist() == _without(state, "7")
        assert changes_as_of_lsn(layout, STAFF, lsn).to_pylist() == _without(changes, "7")
    record = erasures(layout).to_pylist()
    assert [(r["table"], r["keys"], r["change_rows"], r["state_rows"]) for r in record] == [(STAFF, ["7"], 4, 1)]
    assert traces([("erasures", str(record).encode())], forgotten) == []

    with src.transaction():  # the lake goes on
        src.update("staff", 4, first_name="Kept4-after", last_updated=src.now())
    write()
    names = {r["staff_id"]: r["first_name"] for r in state_as_of_lsn(layout, STAFF, src.lsn).to_pylist()}
    assert names == {1: "Kept1", 2: "Kept2-second", 3: "Kept3-second", 4: "Kept4-after", 5: "Kept5", 8: "Kept8"}


def test_a_key_that_is_no_key_is_one_sentence(tmp_path):
    layout = LakeLayout(tmp_path / "lake")
    src = ScriptedSource()
    with src.transaction(snapshot=True):
        _staff(src, 1, "A", "a@b")
    LakeWriter(layout).write_batch("shardId-000000000000", src.events)
    with pytest.raises(ErasureError, match="numeric key column staff_id: give a number"):
        forget(layout, STAFF, ["1 OR true"])
    assert state_as_of_lsn(layout, STAFF, src.lsn).num_rows == 1
    with pytest.raises(ErasureError, match="no state table keyed by a primary key"):
        forget(layout, "public.keyless", ["1"])


# -- the whole pipeline, the command and the warehouse ---------------------------------------------


@pytest.mark.slow
def test_lake_forget_on_a_pipeline_erases_lake_and_warehouse_and_the_pipeline_goes_on(
    totesys_dsn, tmp_path, monkeypatch
):
    import threading

    import duckdb

    from cdc_reader.personal_data import keyed_hash, parse
    from tests.cli_helpers import totes
    from tests.e2e_helpers import current_lsn, execute
    from tests.run_process import wait_for
    from tests.trace_search import folder_contents, warehouse_contents
    from totes_cli.pipeline import Pipeline, PipelineConfig
    from totesys.simulator import Simulator

    monkeypatch.delenv("AWS_ENDPOINT_URL_KINESIS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    key = b"forget-test-personal-data-key-01"
    lake, warehouse = tmp_path / "lake", tmp_path / "warehouse.duckdb"
    config = PipelineConfig(
        source_dsn=totesys_dsn, lake=str(lake), warehouse=str(warehouse), personal_data=parse({}, key)
    )
    Simulator(totesys_dsn, seed=5).seed_history(2)

    def run_until_caught_up() -> None:
        pipeline = Pipeline(config)
        thread = threading.Thread(target=pipeline.run, daemon=True)
        thread.start()
        lsn = current_lsn(totesys_dsn)
        try:
            wait_for(lambda: not pipeline.errors and pipeline.caught_up_with(lsn), 180, "the warehouse")
        finally:
            pipeline.stop.set()
            thread.join(90)
        assert not pipeline.errors, pipeline.errors

    execute(
        totesys_dsn,
        "UPDATE staff SET first_name = 'Ottoline-Erased', last_name = 'Qwertyson', "
        "email_address = 'ottoline.erased@x.example', last_updated = now() WHERE staff_id = 3",
    )
    run_until_caught_up()
    execute(totesys_dsn, "UPDATE staff SET first_name = 'Ottoline-Second', last_updated = now() WHERE staff_id = 3")
    run_until_caught_up()
    order = execute(totesys_dsn, "UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = 5")
    assert order == 1
    run_until_caught_up()
    layout = LakeLayout(str(lake))
    lsn = current_lsn(totesys_dsn)
    before = state_as_of_lsn(layout, STAFF, lsn)
    orders_before = state_as_of_lsn(layout, "public.sales_order", lsn)
    forgotten = ["Ottoline-Erased", "Ottoline-Second", "Qwertyson", keyed_hash(key, "ottoline.erased@x.example")]
    skip = ("kinesis",)  # the stream's own data: Kinesis keeps records for its retention (README)
    assert traces(folder_contents(lake, skip=skip), forgotten) and traces(warehouse_contents(warehouse), forgotten)

    for table, keys in (("staff", ["3"]), ("sales_order", ["5"])):
        forget = ("lake", "forget", table, *keys, "--lake", str(lake), "--warehouse", str(warehouse))
        done = totes(*forget, home=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr + done.stdout
        assert "erased" in done.stdout and "warehouse: erased from" in done.stdout

    assert traces(folder_contents(lake, skip=skip), forgotten) == []
    assert traces(warehouse_contents(warehouse), forgotten) == []
    assert state_as_of_lsn(layout, STAFF, lsn).to_pylist() == _without(before, "3")
    assert state_as_of_lsn(layout, "public.sales_order", lsn).to_pylist() == [
        r for r in orders_before.to_pylist() if r["sales_order_id"] != 5
    ]
    with duckdb.connect(str(warehouse), read_only=True) as wh:
        assert wh.execute(
            "SELECT first_name, last_name, email_address, department_name FROM dim_staff WHERE staff_id = 3"
        ).fetchall() == [("", "", "", "")]
        assert wh.execute("SELECT count(*) FROM fact_sales_order WHERE sales_order_id = 5").fetchone() == (0,)
        referencing = wh.execute("SELECT count(*) FROM fact_sales_order WHERE sales_staff_id = 3").fetchone()[0]
        others = wh.execute("SELECT count(*) FROM dim_staff WHERE first_name <> ''").fetchone()[0]
    assert others == before.num_rows - 1 and referencing >= 0
    assert [r["keys"] for r in erasures(layout).to_pylist()] == [["3"], ["5"]]

    execute(totesys_dsn, "UPDATE staff SET first_name = 'After-Forget', last_updated = now() WHERE staff_id = 4")
    run_until_caught_up()  # the pipeline goes on over the rewritten lake and warehouse
    with duckdb.connect(str(warehouse), read_only=True) as wh:
        assert wh.execute("SELECT first_name FROM dim_staff WHERE staff_id = 4").fetchone() == ("After-Forget",)
        assert wh.execute("SELECT first_name FROM dim_staff WHERE staff_id = 3").fetchone() == ("",)


def test_lake_forget_refuses_while_a_sync_runs_on_the_lake_and_erases_once_it_stopped(tmp_path):
    """forget vacuums with no retention: beside a running writer it could delete the files that
    writer has just committed or is reading. `totes sync` (as `totes run` and `totes
    processor`) holds the lake's writer lock; forget refuses in one sentence and changes nothing."""
    import os
    import subprocess
    import sys

    from lake.progress import Progress
    from tests.e2e_helpers import REPO
    from tests.run_process import wait_for
    from tests.scripted_source import write_lake

    src = ScriptedSource()
    with src.transaction(snapshot=True):
        _staff(src, 1, "Kept1", "kept1@terrifictotes.com")
        _staff(src, 7, "Zebedee-Forgotten", "zebedee.forgotten@terrifictotes.com")
    lake, warehouse = tmp_path / "lake", tmp_path / "warehouse.duckdb"
    layout = write_lake(lake, src.events)
    Progress(layout).record_marker("shardId-000000000000", src.lsn)  # the watermark a sync syncs up to
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTES_", "AWS_ENDPOINT_URL"))}
    env.update(
        TOTES_CONFIG=str(tmp_path / "none.toml"),
        TOTES_HOME=str(tmp_path),
        AWS_ENDPOINT_URL_KINESIS="http://127.0.0.1:9",
        AWS_DEFAULT_REGION="eu-west-2",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
    )  # no stream: the lake's markers

    def totes(*args: str, **kwargs):
        return subprocess.run(
            [sys.executable, "-m", "totes_cli", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )

    forget_command = ("lake", "forget", "staff", "7", "--lake", str(lake), "--warehouse", str(warehouse))
    log = tmp_path / "sync.log"
    with log.open("w") as sink:
        sync = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "totes_cli",
                "sync",
                "--lake",
                str(lake),
                "--warehouse",
                str(warehouse),
                "--interval",
                "0.5",
            ],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=sink,
        )
    try:
        wait_for(lambda: "synced" in log.read_text(), 120, "the sync's first run", process=sync)
        refused = totes(*forget_command)
        assert refused.returncode == 2, refused.stderr + refused.stdout
        assert "The pipeline is running on the lake" in refused.stderr and "stop it first" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert {v for _, v in traces(lake_contents(layout), ["Zebedee-Forgotten"])} == {"Zebedee-Forgotten"}
        assert erasures(layout).num_rows == 0
    finally:
        sync.terminate()
        sync.wait(60)

    done = totes(*forget_command)
    assert done.returncode == 0, done.stderr + done.stdout
    assert traces(lake_contents(layout), ["Zebedee-Forgotten"]) == []
