"""State merges paced by their cost (lake.merge_schedule): they wait beside the batches, the
change logs and the watermark never wait for them, and a killed writer's state is found
behind its log and merged exactly. Counted and ordered, never timed: the merge's cost comes
from a fake clock."""

from __future__ import annotations

import threading
import time

import pytest

from lake import LakeWriter
from lake.changelog import ChangeLog
from lake.delta_io import SMALL_FILE_ROWS
from lake.state import StateTable
from tests.stream_helpers import publish_transaction
from tests.lake_fixtures import SALES_ORDER, Source, expected_state, lake_state, sales_order_row

TABLE, KEYS = SALES_ORDER.table, SALES_ORDER.key_names


def _batch(src: Source, first: int, version: int = 0, rows: int = SMALL_FILE_ROWS + 1) -> list:
    """A transaction of more than a few rows (so a trickle's delay does not apply)."""
    with src.transaction() as tx:
        for order in range(first, first + rows):
            if version == 0:
                tx.insert(SALES_ORDER, sales_order_row(order))
            else:
                tx.update(SALES_ORDER, sales_order_row(order, version))
    return tx


def _costly(monkeypatch, now: list[float], seconds: float) -> list[int]:
    """Every state merge moves the fake clock by `seconds`; returns the list it counts into."""
    calls: list[int] = []
    apply = StateTable.apply

    def timed(self, *args, **kwargs):
        calls.append(1)
        now[0] += seconds
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(StateTable, "apply", timed)
    return calls


def test_a_paced_table_is_merged_at_most_its_share_of_the_time_and_ends_exact(tmp_path, monkeypatch):
    now = [0.0]
    merges = _costly(monkeypatch, now, 4.0)
    writer = LakeWriter(tmp_path / "lake", merge_share=0.25, clock=lambda: now[0])
    src, events = Source(), []

    tx = _batch(src, 0)
    events += tx.events
    result = writer.write_batch("s1", tx.events, markers=[tx.lsn])
    assert result.tables[TABLE].appended == len(tx.events) and result.marker == tx.lsn
    assert not merges and writer.states_put_off == 1, "the batch does not merge"
    assert writer.lake_watermark(["s1"]) == tx.lsn, "the watermark does not wait for the state"

    assert writer.merge_due_states() == 1  # never merged: due at once; it took 4 s
    assert lake_state(writer.layout, TABLE, KEYS) == expected_state(events, TABLE)
    # it ended at 4 s, so the table pauses until 4 + 4 * (1 / 0.25 - 1) = 16 s
    for version, due in ((1, 0), (2, 0), (3, 1)):  # a batch at 4 s, 8 s, 12 s; looked at 4 s later each
        tx = _batch(src, 0, version)
        events += tx.events
        writer.write_batch("s1", tx.events, markers=[tx.lsn])
        now[0] += 4.0
        assert writer.merge_due_states() == due, f"at {now[0]} s"
    assert len(merges) == 2, "the three batches are merged in one merge"
    log = ChangeLog(writer.layout, TABLE)
    log.refresh()
    assert log.appends("s1") == 4
    assert writer.states_put_off == 0
    assert lake_state(writer.layout, TABLE, KEYS) == expected_state(events, TABLE)


def test_a_killed_writers_state_behind_its_log_is_found_and_merged_exact(tmp_path):
    src, events = Source(), []
    killed = LakeWriter(tmp_path / "lake", merge_share=0.5)
    for first, version in ((0, 0), (0, 1), (100, 0), (0, 2)):
        tx = _batch(src, first, version)
        events += tx.events
        killed.write_batch("s1", tx.events, markers=[tx.lsn])
        if first == 0 and version == 0:
            assert killed.merge_due_states() == 1  # the state exists, then falls behind
    assert lake_state(killed.layout, TABLE, KEYS) != expected_state(events, TABLE)
    # the process is killed here: nothing flushed, nothing merged at exit

    after = LakeWriter(tmp_path / "lake", merge_share=0.5)
    assert after.find_unmerged(["s1", "s2"]) == 1
    assert after.merge_due_states() == 1
    assert lake_state(after.layout, TABLE, KEYS) == expected_state(events, TABLE)
    assert after.find_unmerged(["s1", "s2"]) == 0


def test_the_poller_logs_batches_and_moves_the_watermark_while_a_paced_merge_runs(tmp_path, kinesis):
    from cdc_reader.publisher import Publisher
    from stream_processors.handler import StreamProcessor
    from stream_processors.poller import LocalPoller, ShardOffsets
    from tests.stream_helpers import new_stream

    stream = new_stream(kinesis, shards=1)
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    lake = LakeWriter(tmp_path / "lake", merge_share=0.5)
    poller = LocalPoller(
        kinesis, stream, StreamProcessor(lake), ShardOffsets(tmp_path / "offsets.json"), batch_window=0.0
    )
    publisher = Publisher(kinesis, stream)
    src, events = Source(), []
    merging, release = threading.Event(), threading.Event()
    apply = StateTable.apply

    def slow(self, *args, **kwargs):  # a merge of a large table: held until released
        merging.set()
        assert release.wait(60)
        return apply(self, *args, **kwargs)

    def publish(first: int, version: int):
        tx = _batch(src, first, version)
        events.extend(tx.events)
        publish_transaction(publisher, tx)
        return tx.lsn

    def wait_for(condition, what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    stop = threading.Event()
    runner = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StateTable, "apply", slow)
        runner.start()
        first = publish(0, 0)
        wait_for(merging.is_set, "the first batch's merge never started")
        for version in (1, 2):  # the merge is held: the batches still land, the watermark moves
            lsn = publish(0, version)
            wait_for(lambda: lake.lake_watermark([shard]) >= lsn, "a batch waited for the state merge")
        log = ChangeLog(lake.layout, TABLE)
        log.refresh()
        assert log.appends(shard) == 3 and lake.lake_watermark([shard]) > first
        release.set()
        stop.set()
        poller.wake()
        runner.join(60)
    assert not runner.is_alive()
    assert lake.states_put_off == 0  # what waited is merged when the poller stops
    assert lake_state(lake.layout, TABLE, KEYS) == expected_state(events, TABLE)


def test_a_backlog_put_off_is_merged_in_pieces_of_bounded_rows_and_ends_exact(tmp_path, monkeypatch):
    """A merge holds every row it takes in (and DataFusion's join of them): a backlog's
    appends put off for one merge are taken in pieces of at most MERGE_PIECE_ROWS rows (whole
    appends; one append larger than that is one piece)."""
    rows_per_batch = SMALL_FILE_ROWS + 1
    monkeypatch.setattr("lake.state.MERGE_PIECE_ROWS", 2 * rows_per_batch, raising=False)
    sources: list[int] = []
    merge = StateTable._merge

    def counted(self, target, source, *args, **kwargs):
        sources.append(source.num_rows)
        return merge(self, target, source, *args, **kwargs)

    monkeypatch.setattr(StateTable, "_merge", counted)
    writer = LakeWriter(tmp_path / "lake", merge_share=0.5)
    src, events = Source(), []
    for first in range(0, 5 * rows_per_batch, rows_per_batch):  # five appends of new keys, all put off
        tx = _batch(src, first, rows=rows_per_batch)
        events += tx.events
        writer.write_batch("s1", tx.events, markers=[tx.lsn])
    assert not sources and writer.states_put_off == 1

    assert writer.merge_due_states() == 1
    assert sources == [2 * rows_per_batch, 2 * rows_per_batch, rows_per_batch], "pieces of two appends, then one"
    assert lake_state(writer.layout, TABLE, KEYS) == expected_state(events, TABLE)
    state = StateTable(writer.layout, TABLE)
    state.refresh()
    assert state.consumed("s1") == 5
    assert writer.find_unmerged(["s1"]) == 0


def _panic() -> BaseException:
    """What a Rust library's panic looks like through pyo3: a BaseException, so `except
    Exception` lets it through (each extension module makes its own such class)."""
    panic = type("PanicException", (BaseException,), {"__module__": "pyo3_runtime"})
    return panic("called `Option::unwrap()` on a `None` value")


def test_a_merge_that_panics_stays_due_and_the_next_one_ends_exact(tmp_path, monkeypatch):
    """A panic in deltalake's merge (seen once at Ctrl-C) must not kill the merges' thread:
    like any failed merge it is logged and stays due, and the change log keeps its events."""
    writer = LakeWriter(tmp_path / "lake", merge_share=0.5)
    src = Source()
    tx = _batch(src, 0)
    writer.write_batch("s1", tx.events, markers=[tx.lsn])
    apply = StateTable.apply

    def panicking(self, *args, **kwargs):
        raise _panic()

    monkeypatch.setattr(StateTable, "apply", panicking)
    assert writer.merge_due_states() == 0
    assert writer.states_put_off == 1, "the merge waits again"

    monkeypatch.setattr(StateTable, "apply", apply)
    assert writer.merge_due_states(everything=True) == 1
    assert lake_state(writer.layout, TABLE, KEYS) == expected_state(tx.events, TABLE)


def test_a_keyboard_interrupt_in_a_merge_is_not_swallowed(tmp_path, monkeypatch):
    writer = LakeWriter(tmp_path / "lake", merge_share=0.5)
    tx = _batch(Source(), 0)
    writer.write_batch("s1", tx.events, markers=[tx.lsn])

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(StateTable, "apply", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.merge_due_states()
