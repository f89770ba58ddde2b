"""A sync in slices: a backlog much larger than a slice is applied in bounded slices, each
ending on a whole source transaction (or inside an LSN of snapshot reads), and the result
is the warehouse one sync of everything gives, on both engines, interrupted or not."""

from __future__ import annotations

from datetime import date

import pytest

import warehouse_sync.apply as apply_module
from warehouse_sync.position import read_position
from tests.warehouse_fixtures import assert_same_warehouse, dump_warehouse
from warehouse_sync import (
    DuckDBTarget,
    PostgresTarget,
    checkpoint_lsn,
    dangling_references,
    duplicate_current_rows,
    sync_once,
)
from warehouse_sync.schema import PARTIAL, SOURCES
from warehouse_sync.slices import Position
from warehouse_sync.transforms import FACT_SPECS
from tests.scripted_source import TABLE_ORDER, write_lake
from tests.warehouse_fixtures import TABLES, _transaction_sizes
from tests.warehouse_history import _copy_rows, mixed_history

TODAY = date(2024, 11, 18)


class CrashBetweenSlices(Exception):
    pass


# -- against the warehouses ----------------------------------------------------------------------


@pytest.fixture(params=["duckdb", "postgres"])
def open_warehouse(request):
    """A function that opens the same empty warehouse again (a new connection each time)."""
    targets = []
    if request.param == "duckdb":
        path = request.getfixturevalue("tmp_path") / "warehouse.duckdb"

        def opener():
            targets.append(DuckDBTarget(path))
            return targets[-1]
    else:
        dsn = request.getfixturevalue("empty_database")

        def opener():
            targets.append(PostgresTarget(dsn))
            return targets[-1]

    yield opener
    for target in targets:
        target.close()


def test_a_backlog_in_slices_equals_one_sync(history_of_every_kind, history_lake, sliced_reference, open_warehouse):
    target = open_warehouse()
    result = sync_once(history_lake, target, history_of_every_kind.final_lsn, today=TODAY, slice_events=4)
    assert (
        result.events == len(history_of_every_kind.source.events) and result.to_lsn == history_of_every_kind.final_lsn
    )
    held = len(history_of_every_kind.source.events) - sum(result.bulk_loaded.values())  # the rest stays in the engine
    assert len(result.slices) >= held // 4
    snapshot_lsn = history_of_every_kind.source.commits[0]
    largest = max(size for lsn, size in _transaction_sizes(history_of_every_kind).items() if lsn != snapshot_lsn)
    assert max(size for _, size in result.slices) <= max(4, largest)  # what each slice held
    assert any(not end.is_complete(TABLES) for end, _ in result.slices)  # the snapshot was cut inside its LSN
    assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
    assert_same_warehouse(dump_warehouse(target), sliced_reference)


def test_a_crash_between_slices_resumes_exactly_where_it_stopped(
    history_of_every_kind, history_lake, sliced_reference, open_warehouse, monkeypatch
):
    original = apply_module._apply_slice
    committed = []  # the end positions of the slices committed before the crash
    before = []

    def crash_on_the_seventh(layout, target, start, end, today, tables, result, read):
        if len(committed) == 6:
            before.append(result)
            raise CrashBetweenSlices()
        done = original(layout, target, start, end, today, tables, result, read)
        committed.append(end)
        return done

    monkeypatch.setattr(apply_module, "_apply_slice", crash_on_the_seventh)
    with pytest.raises(CrashBetweenSlices):
        sync_once(history_lake, open_warehouse(), history_of_every_kind.final_lsn, today=TODAY, slice_events=4)
    monkeypatch.undo()
    target = open_warehouse()
    assert read_position(target) == committed[-1]
    result = sync_once(history_lake, target, history_of_every_kind.final_lsn, today=TODAY, slice_events=4)
    assert [end for end, _ in before[0].slices] == committed
    assert (
        result.events == len(history_of_every_kind.source.events) - before[0].events
    )  # nothing read twice, nothing skipped
    assert_same_warehouse(dump_warehouse(target), sliced_reference)


def test_no_slice_shows_half_a_transaction(history_of_every_kind, history_lake, tmp_path, monkeypatch):
    """After every slice the warehouse is what syncing whole up to that point gives: at a
    complete LSN exactly that warehouse; inside the snapshot, fact rows only up to the cut."""
    original = apply_module._apply_slice
    seen: list[tuple[Position, dict]] = []

    def watched(layout, target, start, end, *rest):
        done = original(layout, target, start, end, *rest)
        seen.append((end, dump_warehouse(target)))
        return done

    monkeypatch.setattr(apply_module, "_apply_slice", watched)
    target = DuckDBTarget(tmp_path / "sliced.duckdb")
    sync_once(history_lake, target, history_of_every_kind.final_lsn, today=TODAY, slice_events=5)
    monkeypatch.undo()
    assert len(seen) > 8
    whole = DuckDBTarget()  # synced whole up to each complete end (steps equal one sync: exactly_once)
    for end, tables in seen:
        if end.is_complete(TABLES):
            sync_once(history_lake, whole, end.lsn, today=TODAY)
            assert end.lsn in history_of_every_kind.source.commits or end.lsn == history_of_every_kind.final_lsn
            assert_same_warehouse(tables, dump_warehouse(whole))
            continue
        assert tables[PARTIAL.name].rows() == [(1, end.lsn, list(SOURCES)[end.table], end.seq)]
        for spec in FACT_SPECS:
            positions = tables[spec.table.name].select("source_lsn", "source_seq").rows()
            table = list(SOURCES).index(spec.source)
            assert all(Position(lsn, table, seq) <= end for lsn, seq in positions)
    whole.close()


def test_a_continuous_sync_follows_small_steps_and_slices_a_large_one(
    history_of_every_kind, history_lake, sliced_reference
):
    target, tables = DuckDBTarget(), {}
    first = sync_once(
        history_lake, target, history_of_every_kind.points[0][0], today=TODAY, tables=tables, slice_events=4
    )
    assert len(first.slices) > 1  # the snapshot, in slices
    small = sync_once(
        history_lake, target, history_of_every_kind.source.commits[1], today=TODAY, tables=tables, slice_events=4
    )
    assert (
        len(small.slices) == 1
        and small.events == _transaction_sizes(history_of_every_kind)[history_of_every_kind.source.commits[1]]
    )
    rest = sync_once(history_lake, target, history_of_every_kind.final_lsn, today=TODAY, tables=tables, slice_events=4)
    largest = max(_transaction_sizes(history_of_every_kind).values())
    assert len(rest.slices) > 1 and max(size for _, size in rest.slices) <= max(4, largest)
    assert checkpoint_lsn(target) == history_of_every_kind.final_lsn
    assert_same_warehouse(dump_warehouse(target), sliced_reference)


def test_a_continuous_sync_holds_at_most_a_slice_of_what_the_lake_has_past_its_position(
    history_of_every_kind, history_lake, sliced_reference
):
    """Between runs the cache holds the events past the sync's position only while they fit
    a slice; a lake far ahead (a backlog, a snapshot landed) is read in slices instead."""
    target, tables = DuckDBTarget(), {}
    first_lsn = history_of_every_kind.points[0][0]
    ahead = sum(1 for event in history_of_every_kind.source.events if event.lsn > first_lsn)
    assert ahead > 3 * 4
    sync_once(history_lake, target, first_lsn, today=TODAY, tables=tables, slice_events=4)
    assert tables and sum(feed.held.height for feed in tables.values() if feed.held is not None) <= 4
    rest = sync_once(history_lake, target, history_of_every_kind.final_lsn, today=TODAY, tables=tables, slice_events=4)
    assert len(rest.slices) > 1 and max(size for _, size in rest.slices) <= max(
        _transaction_sizes(history_of_every_kind).values()
    )
    assert sum(feed.held.height for feed in tables.values() if feed.held is not None) <= 4
    assert_same_warehouse(dump_warehouse(target), sliced_reference)


@pytest.fixture(scope="module")
def reset_lake(tmp_path_factory):
    """The mixed history, then a reset as the reader does one with a lake: every table
    truncated through the stream at the new slot's LSN (L1), every row written again as a
    snapshot read at a later LSN (L2). Returns the lake, the LSN before the reset and L2."""
    src = mixed_history().source
    before = src.lsn
    rows = _copy_rows(src)
    with src.transaction():  # L1
        for table in TABLE_ORDER:
            src.truncate(table)
    with src.transaction(snapshot=True):  # L2
        for table in TABLE_ORDER:
            for row in rows[table].values():
                src.insert(table, **row)
    return write_lake(tmp_path_factory.mktemp("reset-lake"), src.events), before, src.lsn


def test_a_reset_in_slices_equals_one_sync_and_deletes_no_fact(reset_lake, open_warehouse):
    """Slices cut between the truncates at L1 and the rows at L2 still show the reset as
    one sync does: no fact deleted and copied, whatever the slice size."""
    lake, before_lsn, reset_lsn = reset_lake
    whole = DuckDBTarget()
    sync_once(lake, whole, before_lsn, today=TODAY)
    before = dump_warehouse(whole)
    assert len(sync_once(lake, whole, reset_lsn, today=TODAY).slices) == 1
    reference = dump_warehouse(whole)
    whole.close()
    for spec in FACT_SPECS:  # the reset brought every row back unchanged: no fact version more
        assert_same_warehouse({spec.table.name: reference[spec.table.name]}, {spec.table.name: before[spec.table.name]})
    target = open_warehouse()
    result = sync_once(lake, target, reset_lsn, today=TODAY, slice_events=4)
    assert any(end.is_complete(TABLES) and before_lsn < end.lsn < reset_lsn for end, _ in result.slices)  # cut after L1
    assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
    assert_same_warehouse(dump_warehouse(target), reference)
