"""With a lake, every read of whole tables goes straight into it on the bulk path: the
snapshot that replaces a lost slot's tables (`--reset`) and the re-read after a column type
change, as `--resnapshot` does (tests/e2e/test_resnapshot_bulk.py). Only the reset's truncates
travel the stream; watermarks and the slot's confirmation stay below the read's LSN until
the lake holds it all; a kill -9 in the middle resumes with nothing doubled or lost."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

from cdc_reader import lifecycle
from cdc_reader.reader import FileStateStore
from cdc_reader.reader_state import ReaderState
from change_events import Op
from lake.changelog import ChangeLog
from lake.layout import LakeLayout
from lake.snapshot_load import SNAPSHOT_SHARD, chunk_app
from lake.timetravel import read_table
from tests.bulk_helpers import (
    LakeSink,
    assert_lake_and_warehouse_equal_the_source,
    bulk_config,
    first_run,
    lake_rows,
    run_child,
    seed_sales_orders,
    wait_for_reread,
    with_lake,
)
from tests.e2e_helpers import execute
from tests.run_process import slot_confirmed
from tests.reader_harness import FAST, current_lsn, running_reader, wait_until_confirmed
from totesys.schema import TABLES

CHILD = Path(__file__).resolve().parents[1].joinpath("bulk_kill_child.py")
SO = "public.sales_order"


def _bulk_lsns(layout: LakeLayout, table: str = SO) -> set[int]:
    log = read_table(layout, "changes", table, where=f"_op = 'r' AND _shard = '{SNAPSHOT_SHARD}'")
    return set(log.column("_lsn").to_pylist())


def _ids_unique(layout: LakeLayout, table: str = SO) -> bool:
    log = read_table(layout, "changes", table)
    ids = list(zip(log.column("_lsn").to_pylist(), log.column("_seq").to_pylist()))
    return len(ids) == len(set(ids))


def _kill_child(dsn: str, layout: LakeLayout, state: Path, mode: str, kill_at: int = 3) -> None:
    child = run_child(CHILD, dsn, str(layout.root), str(state), str(kill_at), mode, timeout=240)
    assert child.returncode == -9, f"not killed inside a bulk read ({child.returncode}): {child.stderr[-3000:]}"


def _lose_the_slot_and_change(dsn: str) -> None:
    execute(dsn, f"SELECT pg_drop_replication_slot('{FAST.slot}')")
    execute(dsn, "DELETE FROM sales_order WHERE sales_order_id = (SELECT max(sales_order_id) FROM sales_order)")
    execute(dsn, "UPDATE sales_order SET units_sold = units_sold + 1000 WHERE sales_order_id % 97 = 0")


def _run_with_reset(dsn: str, layout: LakeLayout, state: Path) -> tuple[LakeSink, ReaderState]:
    """A reader run with `--reset` until caught up: what it streamed, and the state it left."""
    sink = LakeSink(layout)
    config = bulk_config(reset=True, snapshot_chunk_pages=24)
    with running_reader(dsn, sink, state, config, prepare=with_lake(layout)) as reader:
        wait_until_confirmed(reader, current_lsn(dsn), timeout=120)
    return sink, FileStateStore(state).load()


def _truncates(sink) -> list[tuple]:
    return [(e.op, e.lsn, e.seq, e.table) for e in sink.events if e.op is Op.TRUNCATE]


@pytest.mark.slow
def test_reset_with_a_lake_sends_only_truncates_through_the_stream_and_reads_the_rows_into_the_lake(
    totesys_dsn, tmp_path
):
    seed_sales_orders(totesys_dsn, 6_000)
    layout, state = LakeLayout(tmp_path / "lake"), tmp_path / "state.json"
    first_lsn = first_run(totesys_dsn, layout, state)
    gone = lake_rows(layout, totesys_dsn, "sales_order").keys()
    _lose_the_slot_and_change(totesys_dsn)

    sink, after = _run_with_reset(totesys_dsn, layout, state)
    assert isinstance(after.phase, lifecycle.Streaming) and after.replaces_lost_slot
    reset_lsn = after.snapshot_lsn
    assert not [e for e in sink.events if e.op is Op.SNAPSHOT], "snapshot rows went through the stream"
    assert _truncates(sink) == [(Op.TRUNCATE, reset_lsn, i, f"public.{t}") for i, t in enumerate(TABLES)]
    (read_at,) = _bulk_lsns(layout) - {first_lsn}
    assert read_at > reset_lsn > first_lsn
    assert not [w for w in sink.watermarks if w < read_at], "a watermark showed the tables truncated, not read"
    assert _ids_unique(layout)
    assert gone - lake_rows(layout, totesys_dsn, "sales_order").keys(), "the row deleted meanwhile is still there"
    assert_lake_and_warehouse_equal_the_source(layout, totesys_dsn, sink, tmp_path)


@pytest.mark.slow
def test_kill_9_during_a_reset_with_a_lake_then_reset_again_resumes_chunk_by_chunk(totesys_dsn, tmp_path):
    """Killed between a chunk's two commits, the slot kept at its consistent point: run
    again with `--reset`, the reader resumes that snapshot (the truncates sent again, the
    chunks the lake lacks read at a later LSN), no chunk twice, nothing confirmed early."""
    seed_sales_orders(totesys_dsn, 10_000)
    layout, state = LakeLayout(tmp_path / "lake"), tmp_path / "state.json"
    first_run(totesys_dsn, layout, state)
    _lose_the_slot_and_change(totesys_dsn)

    _kill_child(totesys_dsn, layout, state, "reset")
    cut = FileStateStore(state).load()
    assert isinstance(cut.phase, lifecycle.Snapshotting) and cut.phase.bulk and cut.replaces_lost_slot
    chunks = cut.phase.chunks[cut.phase.tables.index(SO)]
    log = ChangeLog(layout, SO)
    log.refresh()
    logged = {c for c in range(chunks) if log.transaction_version(chunk_app(cut.phase.lsn, c)) is not None}
    assert 0 < len(logged) < chunks
    assert slot_confirmed(totesys_dsn, FAST.slot) <= cut.phase.lsn

    execute(totesys_dsn, "UPDATE sales_order SET units_sold = units_sold + 3 WHERE sales_order_id % 7 = 0")
    execute(totesys_dsn, "DELETE FROM sales_order WHERE sales_order_id % 71 = 0")
    sink, after = _run_with_reset(totesys_dsn, layout, state)
    assert isinstance(after.phase, lifecycle.Streaming) and after.snapshot_lsn == cut.phase.lsn
    assert not [e for e in sink.events if e.op is Op.SNAPSHOT]
    assert {lsn for _, lsn, _, _ in _truncates(sink)} == {cut.phase.lsn}
    assert _ids_unique(layout)
    assert_lake_and_warehouse_equal_the_source(layout, totesys_dsn, sink, tmp_path)


def _wait_until_no_reread_pending(state: Path, timeout: float = 30) -> None:
    """The table leaves the state's pending re-reads once the lake watermark passes them."""
    deadline = time.monotonic() + timeout
    while FileStateStore(state).load().schema_rereads:
        assert time.monotonic() < deadline, "the re-read stayed pending"
        time.sleep(0.1)


def _rounding_type_change(dsn: str) -> None:
    execute(dsn, "UPDATE sales_order SET unit_price = 3.46 WHERE sales_order_id % 5 = 0")
    execute(dsn, "ALTER TABLE sales_order ALTER COLUMN unit_price TYPE numeric(10,1)")
    execute(dsn, "UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = 1")


@pytest.mark.slow
def test_a_type_change_with_a_lake_re_reads_the_table_straight_into_it(totesys_dsn, tmp_path):
    seed_sales_orders(totesys_dsn, 6_000)
    layout, state = LakeLayout(tmp_path / "lake"), tmp_path / "state.json"
    first_lsn = first_run(totesys_dsn, layout, state)

    sink = LakeSink(layout)
    with running_reader(
        totesys_dsn, sink, state, bulk_config(snapshot_chunk_pages=24), prepare=with_lake(layout)
    ) as reader:
        _rounding_type_change(totesys_dsn)
        wait_for_reread(reader, SO)
        execute(totesys_dsn, "UPDATE sales_order SET unit_price = 7.1 WHERE sales_order_id = 2")
        wait_until_confirmed(reader, current_lsn(totesys_dsn))
        _wait_until_no_reread_pending(state)
    assert reader.metrics.schema_rereads == 1
    assert not [e for e in sink.events if e.op is Op.SNAPSHOT], "re-read rows went through the stream"
    (read_at,) = _bulk_lsns(layout) - {first_lsn}
    assert read_at > first_lsn
    # The lake's column holds the old values and the rounded ones (lake.arrow_types.common_type).
    assert read_table(layout, "tables", SO).schema.field("unit_price").type == pa.decimal128(11, 2)
    assert_lake_and_warehouse_equal_the_source(layout, totesys_dsn, sink, tmp_path)


@pytest.mark.slow
def test_kill_9_during_a_type_change_re_read_with_a_lake_then_restart_ends_exact(totesys_dsn, tmp_path):
    """The type change is streamed while the re-read is pending in the state file: killed in
    the middle of it, a plain restart reads the table again (the slot will not show the change
    again), into the lake, and lake and warehouse equal the source."""
    seed_sales_orders(totesys_dsn, 10_000)
    layout, state = LakeLayout(tmp_path / "lake"), tmp_path / "state.json"
    first_lsn = first_run(totesys_dsn, layout, state)
    _rounding_type_change(totesys_dsn)

    _kill_child(totesys_dsn, layout, state, "type")
    assert FileStateStore(state).load().schema_rereads == ["sales_order"]
    execute(totesys_dsn, "UPDATE sales_order SET unit_price = 2.2 WHERE sales_order_id % 13 = 0")
    execute(totesys_dsn, "DELETE FROM sales_order WHERE sales_order_id % 67 = 0")

    sink = LakeSink(layout)
    with running_reader(
        totesys_dsn, sink, state, bulk_config(snapshot_chunk_pages=24), prepare=with_lake(layout)
    ) as reader:
        wait_for_reread(reader, SO)
        wait_until_confirmed(reader, current_lsn(totesys_dsn))
        _wait_until_no_reread_pending(state)
    assert not [e for e in sink.events if e.op is Op.SNAPSHOT]
    # The cut-off attempt, then whole (once more if the slot replays the Relation from before
    # the change, whose types differ from the last ones seen); no row twice at one position.
    assert len(_bulk_lsns(layout) - {first_lsn}) >= 2 and _ids_unique(layout)
    assert_lake_and_warehouse_equal_the_source(layout, totesys_dsn, sink, tmp_path)
