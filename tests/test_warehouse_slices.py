"""A sync in slices: a backlog much larger than a slice is applied in bounded slices, each
ending on a whole source transaction (or inside an LSN of snapshot reads), and the result
is the warehouse one sync of everything gives, on both engines, interrupted or not."""

from __future__ import annotations

import bisect
from datetime import date

import pytest

import warehouse_sync.apply as apply_module
from tests.warehouse_fixtures import assert_same_warehouse, dump_warehouse, mixed_history, write_lake
from warehouse_sync import (
    DuckDBTarget,
    PostgresTarget,
    checkpoint_lsn,
    dangling_references,
    duplicate_current_rows,
    sync_once,
)
from warehouse_sync.schema import PARTIAL, SOURCES
from warehouse_sync.slices import MIN_SEQ, LsnCount, Position, plan_slices
from warehouse_sync.transforms import FACT_SPECS

TODAY = date(2024, 11, 18)
TABLES = len(SOURCES)


class Crash(Exception):
    pass


# -- where the cuts fall (pure) ------------------------------------------------------------------

def _sizes(ends: list[Position], counts: list[LsnCount], seqs: dict[tuple[int, int], list[int]]) -> list[int]:
    """Events each slice holds, counted from the inputs."""
    events = sorted((c.lsn, c.table, s) for c in counts
                    for s in (seqs.get((c.lsn, c.table)) or [MIN_SEQ + 1] * c.events))
    cuts = [bisect.bisect_right(events, (end.lsn, end.table, end.seq)) for end in ends]
    return [high - low for low, high in zip([0, *cuts], cuts)]


def test_a_backlog_is_cut_at_whole_transactions_into_slices_no_larger_than_asked():
    counts = [LsnCount(0x100 * i, i % TABLES, 7, False) for i in range(1, 1001)]
    ends = plan_slices(counts, 0x100 * 1000 + 5, TABLES, lambda *_: pytest.fail("no snapshot here"), 50)
    assert ends == sorted(set(ends)) and all(end.is_complete(TABLES) for end in ends)
    assert ends[-1] == Position.complete(0x100 * 1000 + 5, TABLES)
    sizes = _sizes(ends, counts, {})
    assert sum(sizes) == 7000 and max(sizes) == 49 and len(ends) == 143  # 7 whole transactions a slice


def test_a_transaction_larger_than_a_slice_is_one_slice_of_its_own():
    counts = [LsnCount(0x100, 8, 30, False), LsnCount(0x200, 8, 400, False), LsnCount(0x200, 9, 100, False),
              LsnCount(0x300, 8, 30, False)]
    ends = plan_slices(counts, 0x300, TABLES, lambda *_: pytest.fail("not snapshot reads"), 100)
    assert ends == [Position.complete(0x100, TABLES), Position.complete(0x200, TABLES), Position.complete(0x300, TABLES)]
    assert _sizes(ends, counts, {}) == [30, 500, 30]


def test_an_lsn_of_snapshot_reads_is_cut_between_tables_and_inside_a_large_one():
    lsn = 0x5000
    seqs = {(lsn, 0): list(range(0, 30)), (lsn, 5): list(range(30, 40)), (lsn, 8): list(range(100, 350, 1))}
    counts = [LsnCount(lsn, table, len(s), True) for (_, table), s in seqs.items()]
    counts.append(LsnCount(lsn + 0x100, 8, 20, False))
    asked = []

    def snapshot_seqs(at, table):
        asked.append((at, table))
        return seqs[(at, table)]

    ends = plan_slices(counts, lsn + 0x100, TABLES, snapshot_seqs, 100)
    assert asked == [(lsn, 8)]  # the tables that fit are not read
    assert ends == [Position(lsn, 8, 159), Position(lsn, 8, 259), Position.complete(lsn, TABLES),
                    Position.complete(lsn + 0x100, TABLES)]
    assert _sizes(ends, counts, seqs) == [100, 100, 90, 20]


def test_a_full_slice_ends_before_the_next_snapshot_table():
    lsn = 0x5000
    seqs = {(lsn, 0): list(range(100)), (lsn, 8): list(range(100, 250))}
    counts = [LsnCount(lsn, table, len(s), True) for (_, table), s in seqs.items()]
    ends = plan_slices(counts, lsn, TABLES, lambda at, table: seqs[(at, table)], 100)
    assert ends == [Position(lsn, 8, MIN_SEQ), Position(lsn, 8, 199), Position.complete(lsn, TABLES)]
    assert _sizes(ends, counts, seqs) == [100, 100, 50]


# -- against the warehouses ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def history():
    return mixed_history()


@pytest.fixture(scope="module")
def lake(history, tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("lake"), history.source.events)


@pytest.fixture(scope="module")
def reference(history, lake):
    """The warehouse after one sync of the whole history, in one slice."""
    target = DuckDBTarget()
    result = sync_once(lake, target, history.final_lsn, today=TODAY)
    assert len(result.slices) == 1
    tables = dump_warehouse(target)
    target.close()
    return tables


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


def _transaction_sizes(history) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for event in history.source.events:
        sizes[event.lsn] = sizes.get(event.lsn, 0) + 1
    return sizes


def test_a_backlog_in_slices_equals_one_sync(history, lake, reference, open_warehouse):
    target = open_warehouse()
    result = sync_once(lake, target, history.final_lsn, today=TODAY, slice_events=4)
    assert result.events == len(history.source.events) and result.to_lsn == history.final_lsn
    assert len(result.slices) >= len(history.source.events) // 4
    snapshot_lsn = history.source.commits[0]
    largest = max(size for lsn, size in _transaction_sizes(history).items() if lsn != snapshot_lsn)
    assert max(size for _, size in result.slices) <= max(4, largest)  # what each slice held
    assert any(not end.is_complete(TABLES) for end, _ in result.slices)  # the snapshot was cut inside its LSN
    assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
    assert_same_warehouse(dump_warehouse(target), reference)


def test_a_crash_between_slices_resumes_exactly_where_it_stopped(history, lake, reference, open_warehouse,
                                                               monkeypatch):
    original = apply_module._apply_slice
    committed = []  # the end positions of the slices committed before the crash
    before = []

    def crash_on_the_seventh(layout, target, start, end, today, tables, result, read):
        if len(committed) == 6:
            before.append(result)
            raise Crash()
        done = original(layout, target, start, end, today, tables, result, read)
        committed.append(end)
        return done

    monkeypatch.setattr(apply_module, "_apply_slice", crash_on_the_seventh)
    with pytest.raises(Crash):
        sync_once(lake, open_warehouse(), history.final_lsn, today=TODAY, slice_events=4)
    monkeypatch.undo()
    target = open_warehouse()
    assert apply_module._read_position(target) == committed[-1]
    result = sync_once(lake, target, history.final_lsn, today=TODAY, slice_events=4)
    assert [end for end, _ in before[0].slices] == committed
    assert result.events == len(history.source.events) - before[0].events  # nothing read twice, nothing skipped
    assert_same_warehouse(dump_warehouse(target), reference)


def test_no_slice_shows_half_a_transaction(history, lake, tmp_path, monkeypatch):
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
    sync_once(lake, target, history.final_lsn, today=TODAY, slice_events=5)
    monkeypatch.undo()
    assert len(seen) > 8
    whole = DuckDBTarget()  # synced whole up to each complete end (steps equal one sync: exactly_once)
    for end, tables in seen:
        if end.is_complete(TABLES):
            sync_once(lake, whole, end.lsn, today=TODAY)
            assert end.lsn in history.source.commits or end.lsn == history.final_lsn
            assert_same_warehouse(tables, dump_warehouse(whole))
            continue
        assert tables[PARTIAL.name].rows() == [(1, end.lsn, list(SOURCES)[end.table], end.seq)]
        for spec in FACT_SPECS:
            positions = tables[spec.table.name].select("source_lsn", "source_seq").rows()
            table = list(SOURCES).index(spec.source)
            assert all(Position(lsn, table, seq) <= end for lsn, seq in positions)
    whole.close()


def test_a_continuous_sync_follows_small_steps_and_slices_a_large_one(history, lake, reference):
    target, tables = DuckDBTarget(), {}
    first = sync_once(lake, target, history.points[0][0], today=TODAY, tables=tables, slice_events=4)
    assert len(first.slices) > 1  # the snapshot, in slices
    small = sync_once(lake, target, history.source.commits[1], today=TODAY, tables=tables, slice_events=4)
    assert len(small.slices) == 1 and small.events == _transaction_sizes(history)[history.source.commits[1]]
    rest = sync_once(lake, target, history.final_lsn, today=TODAY, tables=tables, slice_events=4)
    largest = max(_transaction_sizes(history).values())
    assert len(rest.slices) > 1 and max(size for _, size in rest.slices) <= max(4, largest)
    assert checkpoint_lsn(target) == history.final_lsn
    assert_same_warehouse(dump_warehouse(target), reference)


def test_a_continuous_sync_holds_at_most_a_slice_of_what_the_lake_has_past_its_position(history, lake, reference):
    """Between runs the cache holds the events past the sync's position only while they fit
    a slice; a lake far ahead (a backlog, a snapshot landed) is read in slices instead."""
    target, tables = DuckDBTarget(), {}
    first_lsn = history.points[0][0]
    ahead = sum(1 for event in history.source.events if event.lsn > first_lsn)
    assert ahead > 3 * 4
    sync_once(lake, target, first_lsn, today=TODAY, tables=tables, slice_events=4)
    assert tables and sum(feed.held.height for feed in tables.values() if feed.held is not None) <= 4
    rest = sync_once(lake, target, history.final_lsn, today=TODAY, tables=tables, slice_events=4)
    assert len(rest.slices) > 1 and max(size for _, size in rest.slices) <= max(_transaction_sizes(history).values())
    assert sum(feed.held.height for feed in tables.values() if feed.held is not None) <= 4
    assert_same_warehouse(dump_warehouse(target), reference)
