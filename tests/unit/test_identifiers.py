"""Identifiers of any spelling: a source table and columns named with quotes, spaces,
unicode, backticks and SQL fragments go from a real PostgreSQL through the reader (snapshot
and stream), Kinesis and the processor into the lake, are read back by other Delta readers
and by `totes query` (as of now and as of an LSN), and never run the SQL they spell."""

from __future__ import annotations


import polars as pl
import psycopg2

from lake.layout import LakeLayout
from lake.timetravel import state_as_of_lsn
from tests.hostile_names import _exercise_warehouse_statements, _hostile_tables

"""A file that only injected SQL would write."""

"""A column name that, pasted between double quotes unescaped, closes the identifier and
runs a COPY that writes PWN (it fits PostgreSQL's 63-byte limit)."""
"""Added to totesys's currency table: the warehouse projects that table and must not mind."""


# -- the warehouse's statements, with hostile names --------------------------------------------


def test_warehouse_statements_quote_hostile_names_on_duckdb(monkeypatch):
    from warehouse_sync import DuckDBTarget

    dimension, fact = _hostile_tables(monkeypatch)
    with DuckDBTarget() as target:
        _exercise_warehouse_statements(target, dimension, fact)


def test_state_as_of_an_lsn_for_a_key_whose_column_names_hold_commas(tmp_path):
    from tests.lake_fixtures import Source
    from change_events import Column, TableSchema
    from lake.writer import LakeWriter

    schema = TableSchema(
        "public.pairs",
        (Column("com,ma", "integer", 0, -1, True), Column("[x", "integer", 0, -1, True), Column("v", "text", 0)),
    )
    source, writer = Source(), LakeWriter(tmp_path)
    writer.write_batch("s1", source.snapshot(schema, [{"com,ma": "1", "[x": "2", "v": "a"}]))
    with source.transaction() as tx:
        tx.update(schema, {"com,ma": "1", "[x": "2", "v": "b"})
    writer.write_batch("s1", tx.events)
    layout = LakeLayout(tmp_path)
    rows = state_as_of_lsn(layout, "public.pairs", tx.lsn).to_pylist()
    assert [(r["com,ma"], r["[x"], r["v"]) for r in rows] == [(1, 2, "b")]


def test_lake_folders_escape_what_other_readers_cannot_open_and_keep_older_folders(tmp_path):
    import pyarrow as pa
    from deltalake import write_deltalake

    from lake.layout import CHANGES

    layout = LakeLayout(tmp_path)
    name = 'public.we"ird/`t` ü~'
    uri = layout.uri(CHANGES, name)
    assert uri == f"{layout.root}/changes/public.we~22ird~2F~60t~60~20~C3~BC~7E"
    write_deltalake(uri, pa.table({"x": [1]}))
    legacy = "public.with space"  # a folder written before names were escaped
    write_deltalake(tmp_path / "changes" / legacy, pa.table({"x": [2]}))
    assert layout.tables(CHANGES) == [name, legacy]
    assert layout.uri(CHANGES, legacy) == f"{layout.root}/changes/{legacy}"
    assert pl.read_delta(uri)["x"].to_list() == [1]
    assert layout.uri(CHANGES, "public.sales_order") == f"{layout.root}/changes/public.sales_order"


def test_the_replication_fix_quotes_a_role_name_that_holds_sql():
    """The sentence for a role that may not replicate names a statement to paste: a role
    called `bob; DROP TABLE x` must come out as one quoted identifier, not as two statements."""
    from cdc_reader.source import explain

    role = 'bob"; DROP TABLE sales_order; --'
    error = psycopg2.OperationalError("FATAL:  permission denied to start WAL sender")
    dsn = psycopg2.extensions.make_dsn(host="db.example", port="5432", user=role, dbname="totesys")
    message = explain(dsn, error)
    quoted = '"bob""; DROP TABLE sales_order; --"'
    assert f"ALTER ROLE {quoted} WITH REPLICATION" in message
    assert f"GRANT rds_replication TO {quoted}" in message
