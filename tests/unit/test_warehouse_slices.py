"""A sync in slices: a backlog much larger than a slice is applied in bounded slices, each
ending on a whole source transaction (or inside an LSN of snapshot reads), and the result
is the warehouse one sync of everything gives, on both engines, interrupted or not."""

from __future__ import annotations

import bisect

import pytest

from warehouse_sync.slices import MIN_SEQ, LsnCount, Position, plan_slices
from tests.warehouse_fixtures import TABLES


# -- where the cuts fall (pure) ------------------------------------------------------------------


def _sizes(ends: list[Position], counts: list[LsnCount], seqs: dict[tuple[int, int], list[int]]) -> list[int]:
    """Events each slice holds, counted from the inputs."""
    events = sorted(
        (c.lsn, c.table, s) for c in counts for s in (seqs.get((c.lsn, c.table)) or [MIN_SEQ + 1] * c.events)
    )
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
    counts = [
        LsnCount(0x100, 8, 30, False),
        LsnCount(0x200, 8, 400, False),
        LsnCount(0x200, 9, 100, False),
        LsnCount(0x300, 8, 30, False),
    ]
    ends = plan_slices(counts, 0x300, TABLES, lambda *_: pytest.fail("not snapshot reads"), 100)
    assert ends == [
        Position.complete(0x100, TABLES),
        Position.complete(0x200, TABLES),
        Position.complete(0x300, TABLES),
    ]
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
    assert ends == [
        Position(lsn, 8, 159),
        Position(lsn, 8, 259),
        Position.complete(lsn, TABLES),
        Position.complete(lsn + 0x100, TABLES),
    ]
    assert _sizes(ends, counts, seqs) == [100, 100, 90, 20]


def test_a_full_slice_ends_before_the_next_snapshot_table():
    lsn = 0x5000
    seqs = {(lsn, 0): list(range(100)), (lsn, 8): list(range(100, 250))}
    counts = [LsnCount(lsn, table, len(s), True) for (_, table), s in seqs.items()]
    ends = plan_slices(counts, lsn, TABLES, lambda at, table: seqs[(at, table)], 100)
    assert ends == [Position(lsn, 8, MIN_SEQ), Position(lsn, 8, 199), Position.complete(lsn, TABLES)]
    assert _sizes(ends, counts, seqs) == [100, 100, 50]


# -- a reset cut between its truncates and its rows (pure) -----------------------------------------


def test_a_truncate_ending_a_slice_is_no_deletion_of_a_row_a_later_snapshot_read_brings_back():
    """A reset truncates every table at L1 and writes its rows back at L2 as snapshot reads;
    a slice may end between the two. The keys whose next event after the slice is a snapshot
    read (`returning`) keep their fact rows, as they do when both are in one slice; a row
    that comes back through an insert, or not at all, keeps its deletion."""
    import polars as pl

    from warehouse_sync.steps import _without_replaced_truncates

    versions = pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 4],
            "_op": ["t", "t", "t", "t", "r"],
            "_lsn": [100, 100, 100, 100, 200],
            "_seq": [0, 0, 0, 0, 3],
        }
    )
    returning = pl.Series("id", [1, 9], dtype=pl.Int64)  # 2 comes back by an insert, 3 never
    kept = _without_replaced_truncates(versions, "id", returning)
    assert kept.select("id", "_op", "_lsn").rows() == [(2, "t", 100), (3, "t", 100), (4, "r", 200)]
    assert _without_replaced_truncates(versions, "id").select("id").to_series().to_list() == [1, 2, 3, 4]
