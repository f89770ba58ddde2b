"""`totes verify`: source, lake and warehouse compared at one LSN, chunk by chunk.

The pure core (chunk plans, hashing, drill-down) is tested over Arrow tables; the rest
against a real PostgreSQL, a real pipeline (kinesalite, Delta, DuckDB) and real planted
divergences."""

from __future__ import annotations


import pyarrow as pa

from verify.core import KeyRange, TableReport, compare_chunk, plan_chunks


# -- the pure core ------------------------------------------------------------------------------


def test_chunks_cover_every_key_and_reach_past_both_ends():
    plan = plan_chunks(1, 1_000, 1_000, 300)
    assert plan[0].low is None and plan[-1].high is None
    assert len(plan) == 4
    for key in (-5, 1, 299, 300, 301, 1_000, 10**9):
        assert sum(1 for c in plan if (c.low is None or key >= c.low) and (c.high is None or key < c.high)) == 1
    assert plan_chunks(None, None, 0, 10) == [KeyRange(0, None, None)]
    assert KeyRange(1, 10, 20).sql('"k"') == '"k" >= 10 AND "k" < 20'


def test_a_chunk_in_sync_is_not_drilled_into_and_each_kind_of_difference_names_its_key():
    source = pa.table({"id": [1, 2, 3, 4], "name": ["a", "b", "c", None], "n": [1, 2, 3, 4]})
    same = TableReport("t", "lake", "t", 1)
    compare_chunk(same, "id", ["id", "name", "n"], source, source.take([3, 1, 0, 2]))
    assert same.in_sync and same.chunks == 1 and same.chunks_differing == 0 and same.rows == 4

    side = pa.table({"id": [1, 2, 4, 9], "name": ["a", "B", "x", "z"], "n": [1, 2, 4, 9]})
    report = TableReport("t", "lake", "t", 1)
    compare_chunk(report, "id", ["id", "name", "n"], source, side)
    assert report.missing == [3] and report.extra == [9]
    assert report.different == {2: ["name"], 4: ["name"]}  # NULL and text differ
    assert report.chunks_differing == 1 and not report.in_sync
