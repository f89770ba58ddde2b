"""Identifiers of any spelling: a source table and columns named with quotes, spaces,
unicode, backticks and SQL fragments go from a real PostgreSQL through the reader (snapshot
and stream), Kinesis and the processor into the lake, are read back by other Delta readers
and by `totes query` (as of now and as of an LSN), and never run the SQL they spell."""

from __future__ import annotations


import psycopg2
import pytest
from psycopg2 import sql

from tests.hostile_names import _execute, _exercise_warehouse_statements, _hostile_tables

"""A file that only injected SQL would write."""

"""A column name that, pasted between double quotes unescaped, closes the identifier and
runs a COPY that writes PWN (it fits PostgreSQL's 63-byte limit)."""

TABLE = 'we"ird.`tab` ünï; --'
"""Added to totesys's currency table: the warehouse projects that table and must not mind."""


def test_warehouse_statements_quote_hostile_names_on_postgres(monkeypatch, empty_database):
    from warehouse_sync import PostgresTarget

    dimension, fact = _hostile_tables(monkeypatch)
    with PostgresTarget(empty_database) as target:
        _exercise_warehouse_statements(target, dimension, fact)
        literal = "'" + fact.name.replace("'", "''") + "'"
        indexes = target.query(f"SELECT indexname FROM pg_indexes WHERE tablename = {literal}")
        assert set(indexes["indexname"].to_list()) == {
            f"{fact.name}_pkey",
            f"{fact.name}_current_key",
            f"{fact.name}_bk`_idx",
        }


# -- what the reader tells an operator to run --------------------------------------------------


def test_the_publication_fix_the_reader_names_runs_as_given_for_a_hostile_table(totesys_dsn):
    from cdc_reader.source_setup import SourceSetupError, ensure_publication

    _execute(totesys_dsn, sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(TABLE)))
    _execute(totesys_dsn, sql.SQL("CREATE PUBLICATION {} FOR TABLE address").format(sql.Identifier('their"s')))
    conn = psycopg2.connect(totesys_dsn)
    try:
        with pytest.raises(SourceSetupError) as raised:
            ensure_publication(conn, 'their"s', "public", ("address", TABLE))
        fix = str(raised.value).split(": run ", 1)[1]
        _execute(totesys_dsn, sql.SQL(fix))
        assert ensure_publication(conn, 'their"s', "public", ("address", TABLE)) is False
    finally:
        conn.close()
