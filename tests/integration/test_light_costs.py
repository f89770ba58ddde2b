"""What the running pipeline pays at light load, counted rather than timed: how often a
maintenance round opens (replays the log of) each lake table, which tables it leaves out, and
how many state merges a trickle of changes costs."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from lake import LakeLayout, LakeWriter
from lake.maintenance import COMPACT_FROM_FILES, SettledTables, lake_uris, maintain
from lake.changelog import ChangeLog
from lake.delta_io import SMALL_FILE_ROWS
from tests.stream_helpers import publish_transaction
from tests.lake_fixtures import PAYMENT, SALES_ORDER, Source, expected_state, lake_state, payment_row, sales_order_row


def _light_lake(root) -> LakeLayout:
    """Two tables, each a trickle of small batches: small files to compact, tombstones to keep."""
    src, writer = Source(), LakeWriter(root)
    for n in range(COMPACT_FROM_FILES + 2):
        with src.transaction() as tx:
            tx.insert(SALES_ORDER, sales_order_row(n))
            tx.insert(PAYMENT, payment_row(n))
        writer.write_batch("s1", tx.events, markers=[tx.lsn])
    return writer.layout


def test_a_maintenance_round_opens_each_table_once_and_keeps_the_data(tmp_path, monkeypatch):
    layout = _light_lake(tmp_path / "lake")
    before = lake_state(layout, SALES_ORDER.table, SALES_ORDER.key_names)
    opened: Counter[str] = Counter()
    open_table = LakeLayout.open

    def counting_open(self, uri, version=None):
        opened[uri] += 1
        return open_table(self, uri, version)

    monkeypatch.setattr(LakeLayout, "open", counting_open)
    report = maintain(layout, timedelta(hours=1), compact_from=COMPACT_FROM_FILES)
    monkeypatch.undo()
    assert {t.uri for t in report} == set(opened), "every table maintained, none opened twice"
    assert any(t.files_removed for t in report), "the small files were compacted"
    assert max(opened.values()) == 1, opened.most_common(3)
    assert lake_state(layout, SALES_ORDER.table, SALES_ORDER.key_names) == before


def test_a_running_pipelines_round_leaves_out_tables_settled_since_a_retention(tmp_path):
    layout = _light_lake(tmp_path / "lake")
    retention = timedelta(seconds=2)
    settled = SettledTables(retention.total_seconds())
    uris = lake_uris(layout)

    def round_now() -> list[str]:
        due = settled.due(uris, layout.has_commit)
        report = maintain(layout, retention, due, compact_from=COMPACT_FROM_FILES)
        sizes = settled.after_round(time.monotonic(), report, uris)
        assert {s.uri for s in sizes} == set(uris), "the cadence still sees every table's size"
        return due

    assert round_now() == uris  # compacts: the small files' removal is kept for the retention
    assert round_now() == uris  # within the retention of the last change: still to vacuum
    time.sleep(retention.total_seconds() + 1.2)
    assert round_now() == uris  # a retention after it: this round vacuums the rest (a commit of its own)
    time.sleep(retention.total_seconds() + 1.2)
    assert round_now() == uris  # a retention after that: nothing left to do, settled
    assert round_now() == []
    # what a settled table would have had done to it: nothing
    again = maintain(layout, retention, uris, compact_from=COMPACT_FROM_FILES)
    assert not any(t.files_removed or t.vacuumed for t in again), again
    # a new commit brings its tables back (the change log, the state and the progress)
    src = Source(start_lsn=0x9000000)
    with src.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(999))
    LakeWriter(layout).write_batch("s1", tx.events, markers=[tx.lsn])
    assert set(round_now()) == {
        layout.changes_uri(SALES_ORDER.table),
        layout.state_uri(SALES_ORDER.table),
        layout.uri("_progress"),
    }


def _writer_with_a_state_delay(lake: Path) -> tuple[list[float], Source, LakeWriter, list]:
    """A writer whose state merges wait 30 s on a clock the test moves (`now[0]`), the source
    of its changes, and a list for the events it is given."""
    now = [0.0]
    return now, Source(), LakeWriter(lake, state_delay=30.0, clock=lambda: now[0]), []


def test_a_trickles_state_merges_wait_for_the_delay_and_then_take_in_every_append(tmp_path):
    now, src, writer, events = _writer_with_a_state_delay(tmp_path / "lake")
    table, keys = SALES_ORDER.table, SALES_ORDER.key_names

    def trickle(order: int, version: int = 0) -> None:
        with src.transaction() as tx:
            tx.insert(SALES_ORDER, sales_order_row(order, version)) if version == 0 else tx.update(
                SALES_ORDER, sales_order_row(order, version)
            )
        events.extend(tx.events)
        writer.write_batch("s1", tx.events, markers=[tx.lsn])
        now[0] += 5.0  # a held window

    trickle(1)  # the first change after a quiet spell: merged at once
    assert lake_state(writer.layout, table, keys) == expected_state(events, table)
    merged_first = lake_state(writer.layout, table, keys)
    for n in range(2, 6):
        trickle(n)
    trickle(1, version=2)
    assert lake_state(writer.layout, table, keys) == merged_first, "the state waits"
    assert writer.states_put_off == 1
    log = ChangeLog(writer.layout, table)
    log.refresh()
    assert log.appends("s1") == 6, "the change log does not"
    assert writer.merge_due_states() == 0  # 25 s after the first put off
    now[0] += 5.0
    assert writer.merge_due_states() == 1  # 30 s after it
    assert writer.states_put_off == 0
    assert lake_state(writer.layout, table, keys) == expected_state(events, table)


def test_a_put_off_state_is_merged_by_the_next_large_batch_or_a_new_writer(tmp_path):
    now, src, writer, events = _writer_with_a_state_delay(tmp_path / "lake")
    table, keys = SALES_ORDER.table, SALES_ORDER.key_names
    for n in range(3):
        with src.transaction() as tx:
            tx.insert(SALES_ORDER, sales_order_row(n))
        events.extend(tx.events)
        writer.write_batch("s1", tx.events)
        now[0] += 1.0
    assert writer.states_put_off == 1
    # the process ends without merging: a writer after it (no delay) catches the state up
    with src.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(100))
    events.extend(tx.events)
    LakeWriter(writer.layout).write_batch("s1", tx.events)
    assert lake_state(writer.layout, table, keys) == expected_state(events, table)
    # and a batch of more than a few rows merges at once, whatever was put off
    with src.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(200))
    events.extend(tx.events)
    writer.write_batch("s1", tx.events)
    assert writer.states_put_off == 1
    with src.transaction() as tx:
        for n in range(300, 300 + SMALL_FILE_ROWS + 1):
            tx.insert(SALES_ORDER, sales_order_row(n))
    events.extend(tx.events)
    writer.write_batch("s1", tx.events)
    assert writer.states_put_off == 0
    assert lake_state(writer.layout, table, keys) == expected_state(events, table)


def test_the_poller_merges_put_off_states_once_due_and_all_of_them_when_it_stops(tmp_path, kinesis):
    import threading

    from cdc_reader.publisher import Publisher
    from stream_processors.handler import StreamProcessor
    from stream_processors.poller import LocalPoller, ShardOffsets
    from tests.stream_helpers import new_stream

    stream = new_stream(kinesis, shards=1)
    now = [0.0]
    lake = LakeWriter(tmp_path / "lake", state_delay=30.0, clock=lambda: now[0])
    poller = LocalPoller(
        kinesis, stream, StreamProcessor(lake), ShardOffsets(tmp_path / "offsets.json"), batch_window=0.0
    )
    publisher = Publisher(kinesis, stream)
    src, events = Source(), []
    table, keys = SALES_ORDER.table, SALES_ORDER.key_names
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    running = threading.Event()

    def trickle(order: int) -> None:
        with src.transaction() as tx:
            tx.insert(SALES_ORDER, sales_order_row(order))
        events.extend(tx.events)
        publish_transaction(publisher, tx)
        if running.is_set():  # the poller's own thread reads it
            deadline = time.monotonic() + 30
            while lake.lake_watermark([shard]) < tx.lsn:
                assert time.monotonic() < deadline, "the trickle never reached the lake"
                time.sleep(0.05)
        else:
            poller.poll_once()
        now[0] += 5.0

    for order in range(3):
        trickle(order)
    assert lake.states_put_off == 1 and lake_state(lake.layout, table, keys) != expected_state(events, table)
    stop = threading.Event()
    runner = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    running.set()
    runner.start()
    now[0] += 30.0  # due: the running poller merges it between rounds
    deadline = time.monotonic() + 30
    while lake.states_put_off:
        assert time.monotonic() < deadline, "the due merge never ran"
        time.sleep(0.05)
    assert lake_state(lake.layout, table, keys) == expected_state(events, table)
    trickle(10)  # put off again: the last merge was just now ...
    trickle(11)
    assert lake.states_put_off == 1
    stop.set()
    poller.wake()
    runner.join(30)
    assert not runner.is_alive()
    assert lake.states_put_off == 0  # ... and merged when the poller stops
    assert lake_state(lake.layout, table, keys) == expected_state(events, table)
