"""Record ids of a part loaded in bulk come from groups of consecutive `seq` (no sort): each
event's rank among the part's seqs, whatever the gaps, and parts planned whole."""

from __future__ import annotations

import polars as pl
import pytest

from warehouse_sync import bulk
from warehouse_sync.schema import SOURCES
from warehouse_sync.slices import LsnCount, Position, plan_slices


def _ranks(seqs: list[int]) -> list[int]:
    numbering = bulk.numbering(pl.Series("_seq", seqs, dtype=pl.Int64))
    assert numbering is not None
    frame = pl.DataFrame({"_seq": seqs}).with_columns(_wh_g=pl.col("_seq") // (1 << numbering.shift))
    joined = frame.join(numbering.groups, on="_wh_g", how="left", maintain_order="left")
    return (joined["_wh_before"] + joined["_seq"] - joined["_wh_first"]).to_list()


@pytest.mark.parametrize(
    "seqs",
    [
        list(range(558, 11_745)),  # one run: the real snapshot's table
        [c << 20 | p for c in range(5) for p in range(700)],  # the bulk snapshot's chunks
        [(c << 20) + 3 + p for c in (0, 2, 3, 7) for p in range(c + 1)],  # runs of any length
        [1, 3, 5, 7, 8, 9, 100],  # gaps everywhere
        [0],
    ],
)
def test_each_event_gets_its_rank_among_the_seqs(seqs):
    assert _ranks(seqs) == list(range(len(seqs)))


def test_too_many_groups_or_a_negative_seq_leave_it_to_a_window(monkeypatch):
    monkeypatch.setattr(bulk, "MAX_GROUPS", 3)
    assert bulk.numbering(pl.Series("_seq", [1, 3, 5, 7], dtype=pl.Int64)) is None
    assert bulk.numbering(pl.Series("_seq", [-1, 0, 1], dtype=pl.Int64)) is None


def test_a_part_weighs_nothing_in_the_plan_and_stays_whole():
    sales = list(SOURCES).index("sales_order")
    counts = [LsnCount(100, 0, 30, True), LsnCount(100, sales, 1_000, True), LsnCount(200, sales, 5, False)]
    parts = bulk.plan(counts, {"sales_order"}, lambda part: pl.Series("_seq", range(1_000), dtype=pl.Int64))
    assert [(p.lsn, p.source) for p in parts] == [(100, "sales_order")]
    ends = plan_slices(bulk.weighed(counts, parts), 200, len(SOURCES), lambda lsn, table: [], slice_events=50)
    assert ends == [Position.complete(200, len(SOURCES))]  # one slice: the part is in the engine, not held
    assert parts[0].within(Position.complete(0, len(SOURCES)), ends[0])
    assert not bulk.plan(counts, set(), lambda part: pl.Series("_seq", [0], dtype=pl.Int64))  # not fresh
