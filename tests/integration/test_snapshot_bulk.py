"""The initial snapshot on the bulk path: COPY chunks under the slot's exported snapshot
straight into the lake, in parallel, resumable after a kill, in memory that does not grow
with the table (cdc_reader/bulk_snapshot.py, lake/snapshot_load.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg2
import pyarrow as pa
import pytest

from cdc_reader.bulk_snapshot import BulkSnapshot, plan_tables
from cdc_reader.catalog import read_table_schema
from cdc_reader.reader import FileStateStore
from cdc_reader import lifecycle
from change_events import Op
from lake.layout import LakeLayout
from lake.snapshot_load import SNAPSHOT_SHARD, chunk_app
from lake.timetravel import read_table
from lake.writer import LakeWriter
from bench import orders
from tests.bulk_helpers import LakeSink, bulk_config, lake_rows, run_child, seed_sales_orders, source_rows, with_lake
from tests.lake_fixtures import table_snapshot
from tests.moto_s3 import moto_s3  # noqa: F401  (moto_s3: a fixture)
from tests.e2e_helpers import execute as _execute
from tests.fakes import MemorySink
from tests.reader_harness import current_lsn, running_reader, wait_until_confirmed
from totesys.schema import TABLES

REAL_SNAPSHOT = "snapshot_2024-11-15_aidan-mooney"
CHILD = Path(__file__).resolve().parents[1].joinpath("bulk_snapshot_child.py")


def _bulk_snapshot(dsn: str, layout: LakeLayout, table: str, chunk_pages: int, **options) -> BulkSnapshot:
    """`table` read into the lake by a BulkSnapshot (run 1) under a snapshot exported here,
    as the reader reads under its slot's; the BulkSnapshot, for its stats."""
    conn = psycopg2.connect(dsn)
    try:
        plans = plan_tables(conn, [read_table_schema(conn, "public", table)], chunk_pages=chunk_pages)
        conn.set_session(isolation_level="REPEATABLE READ")
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            bulk = BulkSnapshot(dsn, layout, 1, plans, chunk_pages=chunk_pages, **options)
            bulk.run_under(cur.fetchone()[0], 1)
        conn.rollback()
    finally:
        conn.close()
    return bulk


def _assert_lake_equals_source(layout, dsn, tables=TABLES) -> None:
    for table in tables:
        got, want = lake_rows(layout, dsn, table), source_rows(dsn, table)
        assert got.keys() == want.keys(), (table, sorted(set(got) ^ set(want))[:5])
        bad = [k for k in want if got[k] != want[k]]
        assert not bad, (table, bad[:3], [(got[k], want[k]) for k in bad[:1]])


def _without(rows: list[dict], *columns: str) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k not in columns} for r in rows), key=repr)


def test_every_type_read_in_binary_lands_as_the_streamed_text_would(totesys_dsn, tmp_path):
    """Columns read in binary (integers, floats, bool, dates, timestamps, bytea, text, numeric(p,s))
    and those read as the server's text (unconstrained numeric, oid, json, arrays, uuid,
    interval, enums, "char") land as the lake's conversion of the text pgoutput sends."""
    _execute(totesys_dsn, "CREATE TYPE mood AS ENUM ('sad', 'ok')")
    _execute(
        totesys_dsn,
        """CREATE TABLE every_type (
        id integer PRIMARY KEY, small smallint, big bigint, f4 real, f8 double precision, yes boolean,
        day date, at timestamp(3), at_tz timestamp with time zone, raw bytea, words text,
        padded character(5), short varchar(8), price numeric(12,3), exact numeric, o oid, doc jsonb,
        j json, ids integer[], u uuid, span interval, m mood, c "char", t time)""",
    )
    _execute(
        totesys_dsn,
        r"""INSERT INTO every_type VALUES
        (1, -32768, 9223372036854775807, 'NaN', 'Infinity', true, '0001-01-01', '9999-12-31 23:59:59.999',
         '2024-03-01 12:00:00.123456+05:30', '\x00ff5c0a', E'tab\there\nnew line \\ back\\slash \\N', 'ab',
         'x', -123456789.125, 1.000000000000000000001, 4000000000, '{"b": [1, 2.50], "a": "\u00e9"}',
         '{"b":1,  "a":2}', '{1,NULL,3}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 year 2 mons -3 days 04:05:06.7',
         'ok', 'q', '23:59:59.999999'),
        (2, NULL, NULL, '-1.5e-30', 1.0000000000000002, false, '2024-02-29', '2024-02-29 00:00:00',
         '1970-01-01 00:00:00+00', '', '', '     ', '', 0, 'NaN', 0, 'null', '[]', '{}', NULL, '0', 'sad', ' ', NULL),
        (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL)""",
    )
    layout = LakeLayout(tmp_path / "lake")
    bulk = _bulk_snapshot(totesys_dsn, layout, "every_type", chunk_pages=1)
    assert bulk.stats.rows == 3 and bulk.stats.dead_lettered == 0
    got, want = lake_rows(layout, totesys_dsn, "every_type"), source_rows(totesys_dsn, "every_type")
    assert got.keys() == want.keys()
    differ = [(k, c, got[k][c], want[k][c]) for k in want for c in want[k] if repr(got[k][c]) != repr(want[k][c])]
    assert not differ  # repr: NaN equals NaN
    assert got[(1,)]["words"] == "tab\there\nnew line \\ back\\slash \\N"
    assert got[(2,)]["padded"] == "     " and got[(1,)]["raw"] == b"\x00\xff\\\n"


@pytest.mark.slow
def test_the_bulk_snapshot_writes_what_the_streamed_snapshot_wrote(totesys_dsn, shared_snapshot, tmp_path):
    """The real 2024-11 totesys: the lake built the old way (every row as an op='r' event
    through the sink and the lake writer) and the lake the bulk path writes hold the same rows,
    lineage included, but for where they came from (_shard, _batch) and how they are numbered."""
    from totesys.snapshots import load_snapshot

    load_snapshot(totesys_dsn, shared_snapshot(REAL_SNAPSHOT))
    old, new = LakeLayout(tmp_path / "old"), LakeLayout(tmp_path / "new")
    sink = MemorySink()
    with running_reader(totesys_dsn, sink, tmp_path / "old.json", bulk_config(slot="old_way")):
        pass
    LakeWriter(old).write_batch("s0", [e.event for e in sink.events], [])
    bulk_sink = LakeSink(new)
    with running_reader(
        totesys_dsn, bulk_sink, tmp_path / "new.json", bulk_config(slot="bulk_way"), prepare=with_lake(new)
    ) as reader:
        wait_until_confirmed(reader, current_lsn(totesys_dsn))
    assert not [e for e in bulk_sink.events if e.op is Op.SNAPSHOT]
    old_lsn = {e.lsn for e in sink.events}.pop()
    for table in TABLES:
        for kind in ("changes", "tables"):
            before, after = table_snapshot(old, kind, f"public.{table}"), table_snapshot(new, kind, f"public.{table}")
            assert {r["_lsn"] for r in after} <= {FileStateStore(tmp_path / "new.json").load().snapshot_lsn}
            assert {r["_lsn"] for r in before} <= {old_lsn}
            assert _without(after, "_lsn", "_seq", "_shard") == _without(before, "_lsn", "_seq", "_shard"), (
                kind,
                table,
            )
    _assert_lake_equals_source(new, totesys_dsn)


@pytest.mark.slow
def test_a_large_table_read_in_parallel_chunks_while_it_changes_ends_equal_to_the_source(totesys_dsn, tmp_path):
    """100k sales orders in ~15 chunks on 3 connections; while the chunks are read, rows of
    chunks already written and of chunks not read yet are updated, deleted and inserted. The
    snapshot does not see them (it is the slot's), the stream brings them right after."""
    seed_sales_orders(totesys_dsn, 100_000)
    layout = LakeLayout(tmp_path / "lake")
    sink = LakeSink(layout)
    changed = threading.Event()

    def change_the_table(table, chunk, step):
        if step == "written" and not changed.is_set():
            changed.set()
            _execute(totesys_dsn, "UPDATE sales_order SET units_sold = units_sold + 7 WHERE sales_order_id % 97 = 0")
            _execute(totesys_dsn, "DELETE FROM sales_order WHERE sales_order_id % 89 = 0")
            _execute(totesys_dsn, orders.COPY, {"every": 1000, "remainder": 1, "units": 1, "price": 1.5})

    def prepare(reader):
        reader.lake = layout
        reader.bulk_chunk_hook = change_the_table

    with running_reader(totesys_dsn, sink, tmp_path / "state.json", bulk_config(), prepare=prepare) as reader:
        wait_until_confirmed(reader, current_lsn(totesys_dsn), timeout=120)
    assert changed.is_set()
    assert reader.bulk_stats.rows >= 100_000
    assert not [e for e in sink.events if e.op is Op.SNAPSHOT]
    state = FileStateStore(tmp_path / "state.json").load()
    assert isinstance(state.phase, lifecycle.Streaming)
    log = read_table(layout, "changes", "public.sales_order")
    chunks = {
        b for b, s in zip(log.column("_batch").to_pylist(), log.column("_shard").to_pylist()) if s == SNAPSHOT_SHARD
    }
    assert len(chunks) >= 10  # it was read in chunks
    _assert_lake_equals_source(layout, totesys_dsn)


def test_memory_holds_batches_not_the_chunk_nor_the_table(totesys_dsn, tmp_path):
    """A table many times the chunk size, each chunk many times the batch size: every batch
    read is about the batch size, nothing of a chunk is kept until its commits (the batches
    go straight into its files), and a re-read whose state must be merged holds one chunk,
    a small part of the table."""
    seed_sales_orders(totesys_dsn, 30_000)
    layout = LakeLayout(tmp_path / "lake")
    conn = psycopg2.connect(totesys_dsn)
    try:
        schema = read_table_schema(conn, "public", "sales_order")
        plans = plan_tables(conn, [schema], chunk_pages=32)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT sum(n), max(n) FROM (SELECT count(*) AS n FROM sales_order "
                "GROUP BY (ctid::text::point)[0]::bigint / 32) chunks"
            )
            total, largest_chunk = cur.fetchone()
        conn.commit()
        conn.set_session(isolation_level="REPEATABLE READ")
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            name = cur.fetchone()[0]
            bulk = BulkSnapshot(totesys_dsn, layout, 1, plans, chunk_pages=32, connections=2, batch_bytes=16 << 10)
            bulk.run_under(name, 1)
            again = BulkSnapshot(totesys_dsn, layout, 2, plans, chunk_pages=32, connections=2, batch_bytes=16 << 10)
            again.run_under(name, 3)  # another run at a later LSN: its state is merged
        conn.rollback()
    finally:
        conn.close()
    stats = bulk.stats
    assert plans[0].chunks >= 10
    assert stats.rows == total and stats.largest_chunk_rows == largest_chunk < total / 5
    assert stats.batches >= 4 * plans[0].chunks
    assert stats.largest_batch_bytes < (16 << 10) + 4096  # the batch size and the rest of a row
    assert stats.largest_batch_rows < largest_chunk / 4
    assert stats.largest_held_rows == 0
    assert 0 < again.stats.largest_held_rows <= largest_chunk
    assert lake_rows(layout, totesys_dsn, "sales_order") == source_rows(totesys_dsn, "sales_order")


@pytest.mark.slow
def test_kill_9_between_a_chunks_commits_then_restart_neither_doubles_nor_loses(totesys_dsn, tmp_path):
    """The reader is killed (SIGKILL) between one chunk's change log and state commits while
    other chunks are being read; rows of written and unwritten chunks change while it is down.
    The restart keeps the chunks the lake holds, reads the others under a new snapshot, and
    streams from the slot: the lake equals the source, and no chunk is there twice."""
    seed_sales_orders(totesys_dsn, 40_000)
    layout = LakeLayout(tmp_path / "lake")
    state_path = tmp_path / "state.json"
    child = run_child(CHILD, totesys_dsn, str(layout.root), str(state_path), "3")
    assert child.returncode == -9, child.stderr[-3000:]
    cut = FileStateStore(state_path).load()
    assert isinstance(cut.phase, lifecycle.Snapshotting) and cut.phase.bulk
    sales = cut.phase.tables.index("public.sales_order")
    chunks = cut.phase.chunks[sales]
    logged = _chunks_logged(layout, "public.sales_order", cut.phase.lsn, chunks)
    assert 0 < len(logged) < chunks, logged

    _execute(totesys_dsn, "DELETE FROM sales_order WHERE sales_order_id % 50 = 0")
    _execute(totesys_dsn, "UPDATE sales_order SET units_sold = units_sold + 3 WHERE sales_order_id % 7 = 0")
    _execute(totesys_dsn, "UPDATE staff SET last_name = last_name || '-x'")

    sink = LakeSink(layout)
    with running_reader(totesys_dsn, sink, state_path, bulk_config(), prepare=with_lake(layout)) as reader:
        wait_until_confirmed(reader, current_lsn(totesys_dsn), timeout=120)
    after = FileStateStore(state_path).load()
    assert isinstance(after.phase, lifecycle.Streaming) and after.snapshot_lsn == cut.phase.lsn
    again = _chunks_logged(layout, "public.sales_order", cut.phase.lsn, chunks)
    assert len(again) == chunks and all(again[c] == lsn for c, lsn in logged.items())
    assert {lsn for c, lsn in again.items() if c not in logged} == {max(again.values())} != {cut.phase.lsn}
    log = read_table(layout, "changes", "public.sales_order")
    ids = list(zip(log.column("_lsn").to_pylist(), log.column("_seq").to_pylist()))
    assert len(ids) == len(set(ids))
    assert not [e for e in sink.events if e.op is Op.SNAPSHOT]
    _assert_lake_equals_source(layout, totesys_dsn)


def _chunks_logged(layout, table: str, run: int, chunks: int) -> dict[int, int]:
    from lake.changelog import ChangeLog

    log = ChangeLog(layout, table)
    log.refresh()
    found = {c: log.transaction_version(chunk_app(run, c)) for c in range(chunks)}
    return {c: lsn for c, lsn in found.items() if lsn is not None}


def test_empty_tables_and_chunks_of_every_type_convert(totesys_dsn):
    """An empty table (or chunk) is one commit with no rows, whatever its column types."""
    from lake.snapshot_load import changelog_rows
    from change_events import Column, TableSchema
    from datetime import date

    types = ["integer", "numeric(10,2)", "timestamp(3) without time zone", "boolean", "date", "bytea", "text"]
    schema = TableSchema("public.t", tuple(Column(f"c{i}", t, 0, 0, i == 0) for i, t in enumerate(types)))
    rows = changelog_rows(
        schema, pa.table({f"c{i}": pa.array([], pa.string()) for i in range(len(types))}), 5, 0, 0, date(2026, 1, 1)
    )
    assert rows.num_rows == 0 and rows.column("c3").type == pa.bool_()


def test_rows_the_lake_cannot_hold_go_to_the_dead_letters_and_the_rest_lands(totesys_dsn, tmp_path):
    """An 'infinity' timestamp fits no lake type: that row goes to the dead letters with the
    reason (as the processor does with such an event), every other row reaches the lake."""
    from lake.dead_letters import list_dead_letters

    seed_sales_orders(totesys_dsn, 2_000)
    _execute(totesys_dsn, "UPDATE sales_order SET created_at = 'infinity' WHERE sales_order_id = 7")
    layout = LakeLayout(tmp_path / "lake")
    # Small batches: the bad row is met while the chunk's COPY still has rows to send.
    bulk = _bulk_snapshot(totesys_dsn, layout, "sales_order", chunk_pages=8, batch_bytes=4 << 10)
    letters = list_dead_letters(layout)
    assert len(letters) == 1 and letters[0].source_table == "public.sales_order" and "infinity" in letters[0].reason
    assert bulk.stats.dead_lettered == 1
    got = lake_rows(layout, totesys_dsn, "sales_order")
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT sales_order_id FROM sales_order WHERE sales_order_id <> 7")
        assert set(got) == {row for row in cur.fetchall()}


def test_the_bulk_snapshot_writes_an_s3_lake(totesys_dsn, moto_s3):  # noqa: F811 (the fixture imported above)
    """In AWS the reader writes the snapshot to S3 (moto's server here): chunks in parallel,
    conditional-put commits, then a restart finds every chunk there and writes nothing again."""
    import uuid

    seed_sales_orders(totesys_dsn, 5_000)
    layout = LakeLayout(f"s3://{moto_s3.BUCKET}/{uuid.uuid4().hex[:12]}", moto_s3.storage_options)
    conn = psycopg2.connect(totesys_dsn)
    try:
        plans = plan_tables(
            conn, [read_table_schema(conn, "public", t) for t in ("sales_order", "staff")], chunk_pages=16
        )
        conn.set_session(isolation_level="REPEATABLE READ")
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            name = cur.fetchone()[0]
            first = BulkSnapshot(totesys_dsn, layout, 1, plans, chunk_pages=16)
            assert first.run_under(name, 1) == sum(p.chunks for p in plans) > 3
            again = BulkSnapshot(totesys_dsn, layout, 1, plans, chunk_pages=16)
            assert again.run_under(name, 1) == 0
        conn.rollback()
    finally:
        conn.close()
    for table in ("sales_order", "staff"):
        assert lake_rows(layout, totesys_dsn, table) == source_rows(totesys_dsn, table)


def test_a_source_that_does_not_answer_is_one_sentence_without_the_password():
    """The chunks' own (ADBC) connections fail as the reader's do: one sentence naming the
    fix, the password nowhere in it."""
    from cdc_reader.bulk_snapshot import connect_arrow
    from cdc_reader.source import SourceConnectionError

    with pytest.raises(SourceConnectionError) as failure:
        connect_arrow("postgresql://bob:s3cret-pw@127.0.0.1:1/totesys")
    assert "s3cret-pw" not in str(failure.value) and "127.0.0.1:1" in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__
