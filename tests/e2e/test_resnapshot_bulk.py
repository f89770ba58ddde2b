"""`--resnapshot TABLE` with a lake: the table is read again straight into it on the bulk path
(cdc_reader/bulk_reread.py) while streaming goes on; none of its rows travel the stream."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg2
import psycopg2.extras
import pytest

from bench import orders
from cdc_reader.reader import FileStateStore
from change_events import Op
from lake.layout import LakeLayout
from lake.snapshot_load import SNAPSHOT_SHARD
from lake.timetravel import read_table
from tests.bulk_helpers import (
    LakeSink,
    assert_lake_and_warehouse_equal_the_source,
    bulk_config,
    first_run,
    run_child,
    seed_sales_orders,
    wait_for_reread,
    with_lake,
)
from tests.e2e_helpers import execute
from tests.run_process import slot_confirmed
from tests.reader_harness import FAST, current_lsn, running_reader, wait_until_confirmed

CHILD = Path(__file__).resolve().parents[1].joinpath("bulk_reread_child.py")


def _change_sales_orders(dsn: str, step: int) -> None:
    """Updates, a delete and inserts: rows of chunks written and of chunks not read yet."""
    execute(dsn, f"UPDATE sales_order SET units_sold = units_sold + {step} WHERE sales_order_id % 41 = {step}")
    execute(dsn, f"DELETE FROM sales_order WHERE sales_order_id % 53 = {step}")
    execute(dsn, orders.COPY, {"every": 500, "remainder": step, "units": 3, "price": 2.5})


def _snapshotted_into_a_lake(dsn: str, tmp_path: Path, orders: int, **config) -> tuple[LakeLayout, Path, int]:
    """`orders` more sales orders, snapshotted into a new lake by a reader run until it has
    confirmed the source's LSN: the lake, the reader's state file and the snapshot's LSN."""
    seed_sales_orders(dsn, orders)
    layout, state = LakeLayout(tmp_path / "lake"), tmp_path / "state.json"
    return layout, state, first_run(dsn, layout, state, **config)


def _killed_in_a_reread(dsn: str, layout: LakeLayout, state: Path) -> None:
    """A reader with `--resnapshot sales_order`, killed (SIGKILL) in its re-read (bulk_reread_child.py)."""
    child = run_child(CHILD, dsn, str(layout.root), str(state), "3")
    assert child.returncode == -9, child.stderr[-3000:]


@pytest.mark.slow
def test_a_resnapshot_with_a_lake_goes_straight_into_it_and_lake_and_warehouse_equal_the_source(totesys_dsn, tmp_path):
    layout, state, first_lsn = _snapshotted_into_a_lake(totesys_dsn, tmp_path, 6_000)

    sink = LakeSink(layout)
    changes = []
    marked_while_reading: list[int] = []
    streamed_while_reading: list[bool] = []
    one_at_a_time = threading.Lock()

    def change_while_reading(table, chunk, step):
        """Changes committed after L_r reach the stream while the re-read runs; a watermark
        for them would pass L_r with the table half read."""
        with one_at_a_time:  # chunks are written by several threads
            if step == "written" and len(changes) < 2:
                streamed = len(sink.events)
                _change_sales_orders(totesys_dsn, len(changes) + 1)
                changes.append(chunk)
                deadline = time.monotonic() + 30
                while len(sink.events) == streamed and time.monotonic() < deadline:
                    time.sleep(0.05)
                streamed_while_reading.append(len(sink.events) > streamed)
                time.sleep(5 * FAST.watermark_seconds)  # time for a watermark, were it not held
            marked_while_reading.append(max(sink.watermarks, default=0))

    def prepare(r):
        r.lake = layout
        r.bulk_chunk_hook = change_while_reading

    with running_reader(
        totesys_dsn, sink, state, bulk_config(resnapshot=("sales_order",), snapshot_chunk_pages=24), prepare=prepare
    ) as reader:
        wait_for_reread(reader, "public.sales_order")
        _change_sales_orders(totesys_dsn, 3)
        wait_until_confirmed(reader, current_lsn(totesys_dsn))

    assert not [e for e in sink.events if e.op is Op.SNAPSHOT], "re-read rows went through the stream"
    assert len(changes) == 2, "the source did not change during the re-read"
    log = read_table(layout, "changes", "public.sales_order")
    reread_at = {r["_lsn"] for r in log.to_pylist() if r["_op"] == "r" and r["_shard"] == SNAPSHOT_SHARD} - {first_lsn}
    assert len(reread_at) == 1, "no re-read rows in the lake"
    reread_lsn = reread_at.pop()
    assert reread_lsn > first_lsn
    assert streamed_while_reading == [True, True], "the stream did not go on during the re-read"
    assert max(marked_while_reading) < reread_lsn

    assert_lake_and_warehouse_equal_the_source(layout, totesys_dsn, sink, tmp_path)


def _reread_lsns(layout, first_lsn: int) -> set[int]:
    log = read_table(layout, "changes", "public.sales_order", where=f"_op = 'r' AND _shard = '{SNAPSHOT_SHARD}'")
    return set(log.column("_lsn").to_pylist()) - {first_lsn}


@pytest.mark.slow
def test_kill_9_during_a_bulk_re_read_then_restart_ends_exact(totesys_dsn, tmp_path):
    """The reader is killed between a re-read chunk's two commits, with changes it streamed
    not yet in the lake. Nothing past L_r was confirmed; run again with the same
    `--resnapshot`, it reads the table once more: lake and warehouse equal the source."""
    layout, state, first_lsn = _snapshotted_into_a_lake(totesys_dsn, tmp_path, 10_000)
    _killed_in_a_reread(totesys_dsn, layout, state)
    (cut_at,) = _reread_lsns(layout, first_lsn)
    assert slot_confirmed(totesys_dsn, FAST.slot) < cut_at  # what streamed since is sent again

    execute(totesys_dsn, "UPDATE sales_order SET units_sold = units_sold + 2 WHERE sales_order_id % 13 = 0")
    execute(totesys_dsn, "DELETE FROM sales_order WHERE sales_order_id % 71 = 0")
    sink = LakeSink(layout)
    with running_reader(
        totesys_dsn,
        sink,
        state,
        bulk_config(resnapshot=("sales_order",), snapshot_chunk_pages=24),
        prepare=with_lake(layout),
    ) as reader:
        wait_for_reread(reader, "public.sales_order")
        execute(totesys_dsn, "UPDATE staff SET last_name = last_name || '-y'")
        wait_until_confirmed(reader, current_lsn(totesys_dsn))

    assert len(_reread_lsns(layout, first_lsn)) == 2
    assert not [e for e in sink.events if e.op is Op.SNAPSHOT]
    assert_lake_and_warehouse_equal_the_source(layout, totesys_dsn, sink, tmp_path)


@pytest.mark.slow
def test_a_re_read_killed_half_way_is_finished_by_a_restart_without_the_flag(totesys_dsn, tmp_path):
    """The re-read is in the state file: a reader started again after a kill -9, without
    `--resnapshot`, reads the table again into the lake, and lake and warehouse equal the source."""
    layout, state, first_lsn = _snapshotted_into_a_lake(totesys_dsn, tmp_path, 10_000)
    _killed_in_a_reread(totesys_dsn, layout, state)
    assert [r.table for r in FileStateStore(state).load().table_rereads] == ["sales_order"]

    execute(totesys_dsn, "UPDATE sales_order SET units_sold = units_sold + 4 WHERE sales_order_id % 17 = 0")
    sink = LakeSink(layout)
    with running_reader(
        totesys_dsn, sink, state, bulk_config(snapshot_chunk_pages=24), prepare=with_lake(layout)
    ) as reader:
        wait_for_reread(reader, "public.sales_order", timeout=60)
        wait_until_confirmed(reader, current_lsn(totesys_dsn))
    assert len(_reread_lsns(layout, first_lsn)) == 2
    assert not [e for e in sink.events if e.op is Op.SNAPSHOT]
    assert_lake_and_warehouse_equal_the_source(layout, totesys_dsn, sink, tmp_path)


def _slot_lsn(dsn: str, slot: str) -> int | None:
    """The temporary re-read slot's consistent point (L_r) while it exists."""
    return slot_confirmed(dsn, slot) or None


def _until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
def test_the_drivers_own_status_updates_do_not_confirm_the_slot_at_a_bulk_re_reads_lsn(totesys_dsn, tmp_path):
    """psycopg2 moves the flush position it reports on to a keepalive's WAL end whenever the
    last message it received was confirmed, and sends it with its next status update: with
    nothing streamed between the last confirmation and a re-read's temporary slot, the first
    keepalive past L_r would confirm the slot at L_r with the table half written. Here no
    heartbeat streams, and the re-read waits at its first chunk until the reader's connection
    has seen WAL past L_r and sent two status updates since."""
    quiet = {"heartbeat_seconds": 3600.0}
    layout, state, _ = _snapshotted_into_a_lake(totesys_dsn, tmp_path, 4_000, **quiet)

    cursors = []  # the stream's replication cursor (the re-read's own connection is left out)

    class Recording(psycopg2.extras.LogicalReplicationConnection):
        def cursor(self, *args, **kwargs):
            cur = super().cursor(*args, **kwargs)
            if not threading.current_thread().name.startswith("reread-"):
                cursors.append(cur)
            return cur

    seen: dict[str, int] = {}

    def after_status_updates(table, chunk, step):
        if seen or step != "logged":
            return
        seen["reread_lsn"] = reread_lsn = _slot_lsn(totesys_dsn, f"{FAST.slot}_reread")
        stream = cursors[-1]
        _until(lambda: stream.wal_end >= reread_lsn, "the stream saw no WAL past the re-read's LSN")
        for _ in range(2):  # psycopg2 sends one every 10 s (status_interval) when not asked to
            sent = stream.feedback_timestamp
            _until(lambda: stream.feedback_timestamp != sent, "no status update was sent")
        seen["confirmed"] = slot_confirmed(totesys_dsn, FAST.slot)

    def prepare(r):
        r.lake = layout
        r.bulk_chunk_hook = after_status_updates
        connect = r._connect

        def recording(**kwargs):
            if kwargs.get("connection_factory") is psycopg2.extras.LogicalReplicationConnection:
                kwargs["connection_factory"] = Recording
            return connect(**kwargs)

        r._connect = recording

    config = bulk_config(resnapshot=("sales_order",), snapshot_chunk_pages=24, **quiet)
    with running_reader(totesys_dsn, LakeSink(layout), state, config, prepare=prepare) as reader:
        wait_for_reread(reader, "public.sales_order")
    assert seen["confirmed"] < seen["reread_lsn"]
