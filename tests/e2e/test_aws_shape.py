"""The stages as separate processes, as AWS runs them (`totes reader`, `totes processor`,
`totes sync`), against a real PostgreSQL, kinesalite, a Delta lake folder and a DuckDB file,
through faults of the stream and of the source.

1. The stream lost (deleted and recreated, as retention would expire it) after Kinesis
   acknowledged events the lake never took: the reader confirmed only the lake watermark, so
   the restarted reader publishes them again from the slot and the lake and the warehouse
   end equal to the source.
2. The slot invalidated by max_slot_wal_keep_size while the reader is down, rows deleted,
   changed and added meanwhile: the reader refuses in one sentence (and reports SlotLost);
   `totes reader --reset` starts over from a new slot, and the lake and the warehouse end
   equal to the source, the deleted rows gone, no fact row doubled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import polars as pl
import psycopg2
import pytest

from cdc_reader.personal_data import parse
from change_events.kinesis import ensure_stream
from lake.layout import LakeLayout
from tests.conftest import make_scratch_dir, scratch_folder
from tests.e2e_helpers import (
    REPO,
    check_against_source,
    current_lsn,
    delete_and_change_sales_orders,
    execute,
    read_source,
)
from tests.run_process import RUN_KEY, slot_column, slot_confirmed, wait_for
from tests.stream_helpers import events_by_shard, new_stream, read_stream
from tests.warehouse_fixtures import read_table_sorted
from totesys.embedded import EmbeddedPostgres
from totesys.schema import create_schema, ensure_database
from totesys.simulator import Simulator
from warehouse_sync import DuckDBTarget
from warehouse_sync.schema import FACTS
from tests.run_process import SLOT, Stages

pytestmark = pytest.mark.slow


@pytest.fixture
def home():
    yield from scratch_folder("totes-aws-")


def lake_keys(lake: Path, table: str, key: str) -> set[str]:
    """Keys alive in the lake's current state of `table`, as text."""
    layout = LakeLayout(str(lake))
    uri = layout.state_uri(f"public.{table}")
    dataset = layout.open(uri).to_pyarrow_dataset(filesystem=layout.subtree(uri))
    frame = pl.from_arrow(dataset.to_table(columns=[key, "_deleted"]))
    return {str(k) for k in frame.filter(~pl.col("_deleted"))[key].to_list()}


def lake_logged_twice(lake: Path) -> dict[str, int]:
    """Tables whose change log holds an event position more than once, with how many."""
    layout = LakeLayout(str(lake))
    doubled = {}
    for table in layout.tables():
        uri = layout.changes_uri(table)
        dataset = layout.open(uri).to_pyarrow_dataset(filesystem=layout.subtree(uri))
        frame = pl.from_arrow(dataset.to_table(columns=["_lsn", "_seq"]))
        if frame.height != frame.unique().height:
            doubled[table] = frame.height - frame.unique().height
    return doubled


def check_lake_and_warehouse(stages: Stages, gone: list[str]) -> None:
    """Lake and warehouse equal the source: the lake's current sales orders are the source's,
    no event is logged twice, the warehouse passes every check against the source, and none
    of the sales orders `gone` is live in it."""
    source = read_source(stages.dsn)
    assert lake_keys(stages.lake, "sales_order", "sales_order_id") == set(source["sales_order"])
    assert lake_logged_twice(stages.lake) == {}
    stages.sync_once()
    with DuckDBTarget(stages.warehouse) as target:
        check_against_source(target, source, policy=parse({}, RUN_KEY), gone=gone)  # the totesys defaults


def _start_streaming(stages: Stages) -> None:
    """`totes reader` and `totes processor` started, until the lake holds the source's current LSN."""
    stages.start("reader")
    stages.start("processor", "--window", "0.2")
    stages.wait_lake(current_lsn(stages.dsn))


@contextmanager
def _streaming_into_the_lake(dsn: str, kinesis, kinesalite_url: str, home: Path, seed: int) -> Iterator[Stages]:
    """Two days of totesys history, then the stages on a new stream of two shards, streaming
    until the lake holds it all; every stage still running is killed when the block ends."""
    with Simulator(dsn, seed=seed) as simulator:
        simulator.seed_history(2, until=datetime(2024, 11, 15, 18))
    stages = Stages(dsn, new_stream(kinesis, shards=2), kinesalite_url, home)
    try:
        _start_streaming(stages)
        yield stages
    finally:
        stages.stop_all()


def _change_sales_orders(dsn: str) -> tuple[list[str], list[str]]:
    """Delete three sales orders and change three others; (deleted ids, changed ids)."""
    return delete_and_change_sales_orders(dsn, sorted(read_source(dsn)["sales_order"], key=int))


def _in_stream(kinesis, stream: str, table: str, op: str, keys: list[str]) -> bool:
    wanted = {f"{table}_id": k for k in keys}
    seen = {
        event.key.get(f"{table}_id")
        for events in events_by_shard(read_stream(kinesis, stream)).values()
        for event in events
        if event.table == f"public.{table}" and event.op.value == op
    }
    return set(wanted.values()) <= seen


def test_a_stream_lost_before_the_lake_took_it_is_published_again_from_the_slot(
    totesys_dsn, kinesis, kinesalite_url, home
):
    with _streaming_into_the_lake(totesys_dsn, kinesis, kinesalite_url, home, seed=81) as stages:
        stream = stages.stream

        # The processor stalls (a poison record, an S3 outage...) while the source changes.
        assert stages.stop("processor") == 0, stages.tail("processor")
        lake_before = stages.watermark()
        # Every change from here on lies past this position. (The reader may confirm a little
        # past `lake_before` when nothing of ours was pending: WAL that held no event.)
        changes_from = max(lake_before, current_lsn(totesys_dsn))
        gone, changed = _change_sales_orders(totesys_dsn)
        with Simulator(totesys_dsn, seed=82) as simulator:
            simulator.run_live(rate=0, events=40)
        wait_for(
            lambda: _in_stream(kinesis, stream, "sales_order", "d", gone),
            60,
            "the deletes to reach the stream",
            log=stages.logs,
        )
        assert stages.stop("reader") == 0, stages.tail("reader")
        # The slot holds everything the lake lacks, even after a clean stop.
        assert slot_confirmed(totesys_dsn, SLOT) <= changes_from, stages.tail("reader")

        # The stream expires: every record in it is gone, its consumer starts over.
        kinesis.delete_stream(StreamName=stream)
        kinesis.get_waiter("stream_not_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
        ensure_stream(kinesis, stream, 2)
        shutil.rmtree(stages.lake / "_local" / "offsets", ignore_errors=True)

        _start_streaming(stages)
        assert stages.stop("reader") == 0, stages.tail("reader")
        assert stages.stop("processor") == 0, stages.tail("processor")
        check_lake_and_warehouse(stages, gone)
        with DuckDBTarget(stages.warehouse) as target:
            current = read_table_sorted(target, "fact_sales_order").filter(pl.col("is_current"))
            changed_rows = current.filter(pl.col("sales_order_id").is_in([int(k) for k in changed]))
            assert changed_rows["units_sold"].min() >= 1000


def test_a_reader_without_a_lake_refuses_in_one_sentence(kinesalite_url, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOTES_")}
    env.update(TOTES_HOME=str(home), TOTES_CONFIG=str(home / "none.toml"), AWS_ENDPOINT_URL_KINESIS=kinesalite_url)
    done = subprocess.run(
        [sys.executable, "-m", "totes_cli", "reader", "--source", "postgresql://nobody@127.0.0.1:1/x"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--lake" in done.stderr and "--durability kinesis" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 3


# -- 2. a lost slot ------------------------------------------------------------------------------


@pytest.fixture
def own_server():
    """A server of this test's own: invalidating a slot changes server-wide settings."""
    server = EmbeddedPostgres(make_scratch_dir("totes-slot-pg-"))
    dsn = ensure_database(server.start())
    create_schema(dsn)
    try:
        yield dsn
    finally:
        server.stop()


def _invalidate_slot(dsn: str) -> None:
    """Make PostgreSQL invalidate the (inactive) slot: keep at most 1 MB of WAL for slots,
    then write, switch WAL segments and checkpoint until the slot is lost."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
            cur.execute("SELECT pg_reload_conf()")
            cur.execute("CREATE TABLE IF NOT EXISTS wal_filler (x text)")

            def lost() -> bool:
                cur.execute("INSERT INTO wal_filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)")
                cur.execute("SELECT pg_switch_wal()")
                cur.execute("CHECKPOINT")
                return slot_column(dsn, SLOT, "wal_status") == "lost"

            wait_for(lost, 120, "PostgreSQL to invalidate the slot", interval=0.1)
            cur.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()


def _fact_rows(stages: Stages) -> dict[str, pl.DataFrame]:
    stages.sync_once()
    with DuckDBTarget(stages.warehouse) as target:
        return {fact.name: read_table_sorted(target, fact.name) for fact in FACTS}


def _rows_per_key(facts: pl.DataFrame, key: str) -> dict[int, int]:
    return dict(facts.group_by(key).len().iter_rows())


def test_a_slot_lost_while_the_reader_was_down_is_reported_and_reset_replaces_every_table(
    own_server, kinesis, kinesalite_url, home
):
    dsn = own_server
    with _streaming_into_the_lake(dsn, kinesis, kinesalite_url, home, seed=91) as stages:
        assert stages.stop("reader") == 0, stages.tail("reader")
        before = _fact_rows(stages)

        # While no reader runs: rows deleted, changed, added; then the slot is invalidated.
        gone, changed = _change_sales_orders(dsn)
        added = execute(
            dsn,
            "INSERT INTO sales_order SELECT (jsonb_populate_record(NULL::sales_order, to_jsonb(s) "
            "|| jsonb_build_object('sales_order_id', (SELECT max(sales_order_id) + 1 FROM sales_order)"
            "))).* FROM sales_order AS s WHERE sales_order_id = %s",
            (int(changed[0]),),
        )
        assert added == 1
        _invalidate_slot(dsn)

        refused = stages.start("reader", "--emf")
        assert refused.wait(120) == 3, stages.tail("reader")
        log = stages.tail("reader", 20_000)
        assert "was invalidated by PostgreSQL" in log and "--reset" in log and "Traceback" not in log
        assert '"SlotLost"' in log

        stages.start("reader", "--reset")
        stages.wait_lake(current_lsn(dsn))
        assert stages.stop("reader") == 0, stages.tail("reader")
        assert stages.stop("processor") == 0, stages.tail("processor")
        check_lake_and_warehouse(stages, gone)

        after = _fact_rows(stages)
        # The replacing snapshot doubles nothing: a fact row per change made while the slot was lost.
        for fact in FACTS:
            if fact.name != "fact_sales_order":
                assert after[fact.name].height == before[fact.name].height, fact.name
        was, now = (_rows_per_key(f["fact_sales_order"], "sales_order_id") for f in (before, after))
        touched = {int(k) for k in gone + changed}
        assert {k: n for k, n in now.items() if k not in touched and k in was} == {
            k: n for k, n in was.items() if k not in touched
        }
        assert all(now[k] == was[k] + 1 for k in touched)
        assert [k for k in now if k not in was] == [max(was) + 1] and now[max(was) + 1] == 1
