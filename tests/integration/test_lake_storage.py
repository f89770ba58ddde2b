"""Storage that stays bounded and recoverable: maintenance with a short time-travel retention
(seconds here, so the tests are quick; the commands refuse less than a minute) reclaims what
merges and small appends wrote, keeps every version of the window readable, forgets older
ones, and never takes what a writer or the warehouse sync still needs."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lake import LakeLayout, LakeWriter
from lake import timetravel as tt
from lake.changelog import ChangeLog
from lake.maintenance import MaintenanceCadence, RetentionError, lake_sizes, maintain, parse_retention
from tests.lake_fixtures import SALES_ORDER, TODAY, Source, expected_state, lake_state, sales_order_row
from tests.warehouse_fixtures import assert_same_warehouse, dump_warehouse
from tests.warehouse_history import mixed_history
from tests.scripted_source import write_lake
from warehouse_sync import DuckDBTarget, sync_once

SO, SO_KEY = SALES_ORDER.table, SALES_ORDER.key_names
RETENTION = timedelta(seconds=3)
ROWS = 20_000


def _totals(layout: LakeLayout) -> tuple[int, int]:
    sizes = lake_sizes(layout)
    return sum(s.stored_bytes for s in sizes), sum(s.live_bytes for s in sizes)


def _updates(src: Source, writer: LakeWriter, events: list, count: int, start: int, shard: str = "s1") -> None:
    """`count` batches of one update each, to rows spread over the table (each merge rewrites
    the file holding its row)."""
    for n in range(start, start + count):
        with src.transaction() as tx:
            tx.update(SALES_ORDER, sales_order_row(n * 3779 % ROWS, version=n + 1))
        events += tx.events
        writer.write_batch(shard, tx.events)


def _snapshot_lake(tmp_path, rows: int) -> tuple[LakeLayout, LakeWriter, Source, list]:
    """A lake holding `rows` sales orders from one snapshot batch: its layout, its writer, the
    source and the events so far."""
    layout = LakeLayout(tmp_path / "lake")
    writer = LakeWriter(layout, today=lambda: TODAY)
    src = Source()
    events = src.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(rows)])
    writer.write_batch("s1", events)
    return layout, writer, src, events


def test_maintenance_bounds_the_lake_and_keeps_time_travel_inside_the_retention(tmp_path):
    layout, writer, src, events = _snapshot_lake(tmp_path, ROWS)
    _updates(src, writer, events, 30, 0)
    stored, live = _totals(layout)
    assert stored > 5 * live  # what the merges and small appends left behind

    maintain(layout, RETENTION)  # compacts; what it replaced is kept for the window
    time.sleep(RETENTION.total_seconds() + 0.2)
    # (version, the state as of it, the earliest moment the next commit can have replaced it)
    window = [(layout.open(layout.state_uri(SO)).version(), expected_state(events, SO), None)]
    for n in range(30, 33):
        replaced_after = time.time()
        _updates(src, writer, events, 1, n)
        window[-1] = window[-1][:2] + (replaced_after,)
        window.append((layout.open(layout.state_uri(SO)).version(), expected_state(events, SO), None))
    window[-1] = window[-1][:2] + (time.time(),)  # replaced by the compaction, if by anything
    report = maintain(layout, RETENTION)
    cutoff = time.time() - RETENTION.total_seconds()

    stored, live = _totals(layout)
    assert stored <= 3 * live, (stored, live)
    assert sum(len(r.vacuumed) for r in report) >= 30  # every superseded state file at least
    # Every version current at some moment of the window reads as it was (however slowly this
    # ran, the last one was current when maintenance began), by version and by time.
    inside = [(version, rows) for version, rows, replaced_after in window if replaced_after >= cutoff]
    assert inside
    for version, rows in inside:
        assert lake_state(layout, SO, SO_KEY, version=version) == rows
    newest = max(c.version for c in tt.history(layout, SO))
    assert (
        lake_state(layout, SO, SO_KEY, as_of=datetime.now(timezone.utc))
        == lake_state(layout, SO, SO_KEY, version=newest)
        == expected_state(events, SO)
    )
    # Versions older than the window are gone: their log entries, or their files.
    for kind in ("tables", "changes"):
        for version in (0, 1, 20):
            with pytest.raises(Exception):  # noqa: B017 - deltalake raises several kinds
                tt.read_table(layout, kind, SO, version=version)
    # The change log still holds every event, and the shard's high-water survived.
    assert tt.read_table(layout, "changes", SO).num_rows == len(events)
    log = ChangeLog(layout, SO)
    log.refresh()
    assert log.high_water("s1") == (events[-1].lsn, events[-1].seq)
    assert writer.write_batch("s1", events[-5:]).tables[SO].appended == 0


def test_a_sync_stalled_longer_than_the_retention_ends_exact(tmp_path):
    """A continuous sync holds each change log open at the version it read last. Maintenance
    then compacts, vacuums and cleans up the log entries after that version: the next run
    must still see every event appended since (not mistake the missing log entry for 'no new
    commit'), and end equal to one sync of the whole history."""
    history = mixed_history()
    today = history.source.clock.date()
    reference = DuckDBTarget()
    sync_once(write_lake(tmp_path / "reference", history.source.events), reference, history.final_lsn, today=today)

    layout = LakeLayout(tmp_path / "lake")
    writer = LakeWriter(layout)
    stalled_at = history.points[1][0]
    transactions = [list(group) for _, group in itertools.groupby(history.source.events, key=lambda e: e.lsn)]
    for events in (t for t in transactions if t[0].lsn <= stalled_at):
        writer.write_batch("shardId-000000000000", events)
    target, feeds = DuckDBTarget(), {}
    sync_once(layout, target, stalled_at, today=today, tables=feeds)

    for events in (t for t in transactions if t[0].lsn > stalled_at):
        writer.write_batch("shardId-000000000000", events)
    time.sleep(RETENTION.total_seconds() + 0.2)
    maintain(layout, RETENTION)

    sync_once(layout, target, history.final_lsn, today=today, tables=feeds)
    assert_same_warehouse(dump_warehouse(target), dump_warehouse(reference))
    # A sync that was stopped instead (a new process: nothing cached) reads the current
    # version of each change log, which holds every event.
    restarted = DuckDBTarget()
    sync_once(layout, restarted, stalled_at, today=today)
    sync_once(layout, restarted, history.final_lsn, today=today)
    assert_same_warehouse(dump_warehouse(restarted), dump_warehouse(reference))


def test_a_writer_whose_table_moved_on_past_cleaned_up_log_entries_still_writes_once(tmp_path):
    """Two shards write one table; one of them idles while the other's commits are checkpointed
    and their log entries cleaned up. The idle shard's next batch lands, exactly once."""
    layout = LakeLayout(tmp_path / "lake")
    busy, idle = LakeWriter(layout, today=lambda: TODAY), LakeWriter(layout, today=lambda: TODAY)
    src = Source()
    events = src.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(2000)])
    idle.write_batch("s2", events)
    _updates(src, busy, events, 12, 0)
    time.sleep(RETENTION.total_seconds() + 0.2)
    maintain(layout, RETENTION)
    later = []
    _updates(src, idle, later, 2, 100, shard="s2")
    assert idle.write_batch("s2", later).tables[SO].appended == 0  # a replay adds nothing
    assert tt.read_table(layout, "changes", SO).num_rows == len(events) + 2
    assert lake_state(layout, SO, SO_KEY) == expected_state(events + later, SO)


def _checkpoints(uri: str) -> int:
    return len(list(Path(uri, "_delta_log").glob("*.checkpoint*.parquet")))


def test_writers_leave_checkpoints_to_maintenance_and_older_tables_follow(tmp_path):
    """Every checkpoint written within the retention is kept, and each lists every live file
    and tombstone: the writers' few commits a second must not add one every few commits.
    Maintenance checkpoints each round, and brings a table made with a shorter interval in line."""
    layout, writer, src, events = _snapshot_lake(tmp_path, 200)
    _updates(src, writer, events, 30, 0)
    uris = [layout.state_uri(SO), layout.changes_uri(SO)]
    assert [_checkpoints(uri) for uri in uris] == [0, 0]

    layout.open(uris[0]).alter.set_table_properties({"delta.checkpointInterval": "10"})  # an older lake's
    maintain(layout, RETENTION)
    assert [_checkpoints(uri) for uri in uris] == [1, 1]
    assert {layout.open(uri).metadata().configuration["delta.checkpointInterval"] for uri in uris} == {"100"}
    assert lake_state(layout, SO, SO_KEY) == expected_state(events, SO)


def _live_files(layout: LakeLayout, uri: str) -> dict[str, int]:
    actions = layout.open(uri).get_add_actions(flatten=True)
    return dict(zip(actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist(), strict=True))


def test_compacting_a_growing_change_log_leaves_its_full_files_alone(tmp_path):
    """Today's partition of a change log grows all day and every round compacts it: a round
    that rewrote the whole partition each time would keep a copy of it per round inside the
    retention. Files already a few hundred KiB stay; only the small ones are packed."""
    layout, writer, src, events = _snapshot_lake(tmp_path, 8000)
    uri = layout.changes_uri(SO)
    ((full, size),) = _live_files(layout, uri).items()
    assert 150 * 1024 < size < 400 * 1024  # what a few hours of the demo's busiest table write
    _updates(src, writer, events, 6, 0)
    maintain(layout, RETENTION)
    live = _live_files(layout, uri)
    assert full in live and len(live) == 2, live
    assert tt.read_table(layout, "changes", SO).num_rows == len(events)


def test_retention_is_a_duration_of_at_least_a_minute():
    assert parse_retention("24h") == timedelta(hours=24)
    assert parse_retention("90m") == timedelta(minutes=90)
    assert parse_retention("7d") == timedelta(days=7)
    assert parse_retention("2") == timedelta(hours=2)
    with pytest.raises(RetentionError, match="not a duration"):
        parse_retention("a day")
    with pytest.raises(RetentionError, match="1m or more"):
        parse_retention("30s")


def test_rounds_are_no_closer_than_a_sixth_of_the_retention():
    """A round reclaims only what left the retention window: an hour's retention gets no round
    every 10 s however fast the lake grows (they took CPU from the writers: p50 1.03 s against
    0.69 s without them), while the demo's minute still does."""
    hourly = MaintenanceCadence.for_retention(timedelta(hours=1), every=3600)
    hourly.last_at, hourly.last_stored, hourly.last_live = 0, 1_000, 1_000
    assert hourly.too_soon(599) and not hourly.due(599, stored=1_000_000)
    assert hourly.due(600, stored=1_000_000)
    demo = MaintenanceCadence.for_retention(timedelta(minutes=1), every=3600)
    demo.last_at, demo.last_stored, demo.last_live = 0, 1_000, 1_000
    assert demo.too_soon(9) and demo.due(10, stored=1_500)
    assert MaintenanceCadence.for_retention(timedelta(days=7), every=3600).min_gap == 3600


def test_maintenance_is_due_when_the_lake_grew_or_the_clock_says_so():
    cadence = MaintenanceCadence(every=3600, growth=0.5, min_gap=10, last_at=0)
    assert cadence.due(11, stored=0)  # never measured: the first round measures
    cadence.last_stored, cadence.last_live = 3_000, 1_000
    assert not cadence.due(5, stored=9_000)  # too soon after the last round
    assert not cadence.due(60, stored=3_400)
    assert cadence.due(60, stored=3_500)  # grew by half the live bytes
    assert cadence.due(3600, stored=3_000)  # an hour passed


def _column_chunks(layout: LakeLayout, uri: str) -> list:
    import pyarrow.parquet as pq

    chunks = []
    for path in _live_files(layout, uri):
        metadata = pq.ParquetFile(Path(uri) / path).metadata
        chunks += [
            metadata.row_group(g).column(c) for g in range(metadata.num_row_groups) for c in range(metadata.num_columns)
        ]
    return chunks


def test_a_few_row_commit_writes_no_dictionaries_and_keeps_the_statistics_reads_rely_on(tmp_path):
    """A few-row Parquet file is mostly per-column overhead (a dictionary page and page
    statistics for every column); small commits leave those out but keep chunk statistics on
    every column: without them deltalake's pyarrow dataset bounds the column by null, and a
    filter on it (DuckDB pushes filters down) skips the file, so its rows go missing."""
    import pyarrow.dataset as ds

    layout, writer, src, events = _snapshot_lake(tmp_path, 3)
    _updates(src, writer, events, 2, 0)
    uri = layout.changes_uri(SO)
    chunks = _column_chunks(layout, uri)
    assert chunks and not any(chunk.has_dictionary_page for chunk in chunks)
    assert all(chunk.is_stats_set for chunk in chunks)
    assert not any(chunk.has_column_index for chunk in chunks)
    actions = layout.open(uri).get_add_actions(flatten=True)
    assert None not in actions.column("max._lsn").to_pylist()  # the log can still skip files by LSN
    dataset = layout.open(uri).to_pyarrow_dataset()
    for op in ("r", "u"):  # a filter on a column no read prunes on still finds every row
        assert dataset.to_table(filter=ds.field("_op") == op).num_rows == sum(e.op.value == op for e in events)
    assert tt.read_table(layout, "changes", SO).num_rows == len(events)
    assert lake_state(layout, SO, SO_KEY) == expected_state(events, SO)

    bulk = src.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(100, 400)])
    writer.write_batch("s2", bulk)  # a big commit keeps the defaults: dictionaries pay off there
    assert any(chunk.has_dictionary_page for chunk in _column_chunks(layout, uri))


def test_a_running_pipelines_round_compacts_a_table_only_once_it_has_enough_small_files(tmp_path):
    """Packing a few small files each round rewrote the table's growing file every round (a
    copy kept for the retention each time); the pipeline's rounds wait for `compact_from`
    small files, so a table's file count follows its data: its full files and fewer than
    that many small ones."""
    layout, writer, src, events = _snapshot_lake(tmp_path, 8000)
    uri = layout.changes_uri(SO)
    _updates(src, writer, events, 3, 0)
    before = _live_files(layout, uri)
    report = {r.uri: r for r in maintain(layout, RETENTION, compact_from=5)}
    assert report[uri].files_removed == 0 and _live_files(layout, uri) == before  # three small files wait
    _updates(src, writer, events, 2, 3)
    report = {r.uri: r for r in maintain(layout, RETENTION, compact_from=5)}
    assert report[uri].files_removed == 5  # five small files: packed into one, the full one stays
    assert len(_live_files(layout, uri)) == 2
    assert tt.read_table(layout, "changes", SO).num_rows == len(events)
    assert lake_state(layout, SO, SO_KEY) == expected_state(events, SO)
