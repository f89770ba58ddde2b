"""The bulk snapshot beside writers of the same tables: a snapshot commit that loses a race with the
stream's merge into the same state table is retried, and a generated million-row table read in bulk
while it changes equals the source at one LSN."""

from __future__ import annotations

import threading

import psycopg2
import pyarrow as pa
import pytest

from lake.layout import LakeLayout
from lake.timetravel import read_table
from tests.bulk_helpers import LakeSink, bulk_config, seed_sales_orders
from tests.e2e_helpers import execute as _execute
from tests.reader_harness import current_lsn, running_reader, wait_until_confirmed
from totesys.schema import TABLES


@pytest.mark.parametrize("commit", ["chunk state", "snapshot done"])
def test_a_snapshot_commit_that_loses_a_race_with_the_streams_merge_is_retried(tmp_path, commit):
    """While a reset or a re-read writes its snapshot, the processor goes on merging the
    stream into the same state table. A snapshot commit made on a version that a merge has
    since passed loses the commit race (deltalake: "a concurrent transaction deleted data
    this operation read"); it is tried again on the new version, once."""
    from datetime import date

    from deltalake import DeltaTable

    from change_events import Column, TableSchema
    from lake.snapshot_load import TableLoad, changelog_rows

    schema = TableSchema("public.t", (Column("id", "integer", 23, -1, True), Column("v", "text", 25)))
    layout = LakeLayout(tmp_path / "lake")
    load = TableLoad(layout, schema, 100)

    def rows(chunk: int) -> pa.Table:
        ids = [str(chunk * 10 + i) for i in range(3)]
        return changelog_rows(schema, pa.table({"id": ids, "v": ["a"] * 3}), 100, chunk * 10, chunk, date(2026, 1, 1))

    load.prepare(list(rows(0).schema)[:2])
    load.write_chunk(0, 100, rows(0))
    refresh, merged = load.state.refresh, []

    def refresh_then_a_merge_lands():
        table = refresh()
        if not merged:  # the stream's merge commits right after the snapshot read the version
            merged.append(DeltaTable(load.state.uri).delete("id = 1"))
        return table

    load.state.refresh = refresh_then_a_merge_lands
    if commit == "chunk state":
        load.write_chunk(1, 100, rows(1))
        assert load.state_chunks(2) == {0, 1}
    else:
        load.mark_done()
        assert load.is_done()
    assert merged
    state = read_table(layout, "tables", "public.t")
    ids = state.column("id").to_pylist()
    assert len(ids) == len(set(ids)) and 1 not in ids


@pytest.mark.slow
def test_a_generated_million_row_table_read_while_it_changes_equals_the_source(totesys_dsn, tmp_path):
    """1,000,000 generated sales orders, read in parallel chunks straight into the lake while
    rows of read and unread chunks change; then the lake as of one exact LSN is compared with
    the source under that LSN's snapshot, every row and column (`totes verify`'s comparison,
    by chunk digests, drilling into chunks that differ). Row by row in Python would take
    minutes; the value-by-value comparisons of every type are the tests above."""
    from verify.run import verify

    seed_sales_orders(totesys_dsn, 1_000_000)
    layout = LakeLayout(tmp_path / "lake")
    sink = LakeSink(layout)
    changed = threading.Event()

    def change_the_table(table, chunk, step):
        if table == "public.sales_order" and step == "written" and not changed.is_set():
            changed.set()
            _execute(totesys_dsn, "UPDATE sales_order SET units_sold = units_sold + 7 WHERE sales_order_id % 997 = 0")
            _execute(totesys_dsn, "DELETE FROM sales_order WHERE sales_order_id % 991 = 0")

    def prepare(reader):
        reader.lake = layout
        reader.bulk_chunk_hook = change_the_table

    config = bulk_config(snapshot_chunk_pages=2048, snapshot_batch_bytes=4 << 20)
    with running_reader(totesys_dsn, sink, tmp_path / "state.json", config, prepare=prepare) as reader:
        wait_until_confirmed(reader, current_lsn(totesys_dsn), timeout=300)
        result = verify(totesys_dsn, str(layout.root), None, tuple(TABLES), timeout=120)
    assert changed.is_set() and reader.bulk_stats.rows >= 1_000_000
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM sales_order")
        (orders,) = cur.fetchone()
    conn.close()
    reports = {r.table: r for r in result.reports}
    assert reports["public.sales_order"].rows == orders > 990_000
    out_of_sync = [
        (r.table, r.missing[:3], r.extra[:3], list(r.different)[:3]) for r in result.reports if not r.in_sync
    ]
    assert not out_of_sync, out_of_sync
