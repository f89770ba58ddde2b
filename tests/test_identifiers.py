"""Identifiers of any spelling: a source table and columns named with quotes, spaces,
unicode, backticks and SQL fragments go from a real PostgreSQL through the reader (snapshot
and stream), Kinesis and the processor into the lake, are read back by other Delta readers
and by `totes query` (as of now and as of an LSN), and never run the SQL they spell."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from pathlib import Path

import duckdb
import polars as pl
import psycopg2
import pytest
from psycopg2 import sql
from typer.testing import CliRunner

from change_events import format_lsn
from lake.layout import LakeLayout
from lake.timetravel import changes_as_of_lsn, current_state, state_as_of_lsn
from tests.conftest import make_scratch_dir
from tests.e2e_helpers import wait_for
from totes_cli.app import app
from totes_cli.pipeline import Pipeline, PipelineConfig
from totesys.schema import TABLES
from cdc_reader.source import current_wal_lsn

PWN = f"/tmp/{uuid.uuid4().hex[:8]}"
"""A file that only injected SQL would write."""

INJECTION = f"""a"FROM(SELECT 1"a");COPY(SELECT 1)TO'{PWN}';SELECT"a"""
"""A column name that, pasted between double quotes unescaped, closes the identifier and
runs a COPY that writes PWN (it fits PostgreSQL's 63-byte limit)."""

TABLE = 'we"ird.`tab` ünï; --'
EXTRA_CURRENCY_COLUMN = 'x"; DROP TABLE dim_currency; --'
"""Added to totesys's currency table: the warehouse projects that table and must not mind."""
COLUMNS = [
    (INJECTION, "text"),
    ('a"b', "integer PRIMARY KEY"),
    ("with space", "text"),
    ("ünï", "text"),
    (f"""x"); COPY (SELECT 1) TO '{PWN}'; --""", "text"),
    ("`tick`", "text"),
    ('"', "text"),
    ("it's", "integer"),
]
NAMES = [name for name, _ in COLUMNS]
KEY = 'a"b'


def _row(i: int, version: int = 0) -> dict:
    return {INJECTION: f"inj{i}", KEY: i, "with space": f"space {i}.{version}", "ünï": f"ü{i}",
            NAMES[4]: f"x{i}", "`tick`": f"t{i}", '"': f"q{i}", "it's": i * 10 + version}


def _execute(dsn: str, statement: sql.Composable, rows=()) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            if rows:
                for row in rows:
                    cur.execute(statement, [row[n] for n in NAMES])
            else:
                cur.execute(statement)
    finally:
        conn.close()


def _insert(dsn: str, rows: list[dict]) -> None:
    _execute(dsn, sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(TABLE), sql.SQL(", ").join(map(sql.Identifier, NAMES)),
        sql.SQL(", ").join(sql.Placeholder() * len(NAMES))), rows)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _by_key(rows: list[dict]) -> dict[int, dict]:
    return {row[KEY]: {n: row[n] for n in NAMES} for row in rows}


@pytest.fixture(autouse=True)
def no_pwn():
    """PWN neither before nor after a test (a failing run on unquoted code writes it)."""
    Path(PWN).unlink(missing_ok=True)
    yield
    Path(PWN).unlink(missing_ok=True)


@pytest.fixture
def home():
    path = make_scratch_dir("totes-ident-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_kinesalite(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_KINESIS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def _run_pipeline_until(pipeline: Pipeline, thread: threading.Thread, lsn: int) -> None:
    def done():
        assert not pipeline.errors, pipeline.errors
        assert thread.is_alive(), "the pipeline stopped"
        return pipeline.caught_up_with(lsn)
    wait_for(done, 120, f"the warehouse to reach {lsn:X}")


def totes(*args: str, catch_exceptions: bool = False):
    return CliRunner().invoke(app, list(args), catch_exceptions=catch_exceptions, env={"COLUMNS": "240"})


@pytest.mark.slow
def test_hostile_table_and_column_names_flow_from_postgres_to_the_lake_and_totes_query(
        totesys_dsn, home, own_kinesalite):
    _execute(totesys_dsn, sql.SQL("CREATE TABLE {} ({})").format(
        sql.Identifier(TABLE),
        sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in COLUMNS)))
    snapshot_rows = [_row(i) for i in range(1, 5)]
    _insert(totesys_dsn, snapshot_rows)
    _execute(totesys_dsn, sql.SQL("ALTER TABLE currency ADD COLUMN {} text").format(
        sql.Identifier(EXTRA_CURRENCY_COLUMN)))
    _execute(totesys_dsn, sql.SQL("INSERT INTO currency (currency_code, last_updated, {}) "
                                  "VALUES ('GBP', now(), 'x')").format(sql.Identifier(EXTRA_CURRENCY_COLUMN)))

    lake = home / "lake"
    pipeline = Pipeline(PipelineConfig(source_dsn=totesys_dsn, lake=str(lake), warehouse=str(home / "wh.duckdb"),
                                       tables=TABLES + (TABLE,), heartbeat_seconds=0.5))
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        after_snapshot = current_wal_lsn(totesys_dsn)
        _run_pipeline_until(pipeline, thread, after_snapshot)
        # The stream: an insert, an update of a quoted column, a delete by the quoted key.
        _insert(totesys_dsn, [_row(5)])
        _execute(totesys_dsn, sql.SQL("UPDATE {} SET {} = 'moved', {} = 21 WHERE {} = 2").format(
            sql.Identifier(TABLE), sql.Identifier("with space"), sql.Identifier("it's"), sql.Identifier(KEY)))
        _execute(totesys_dsn, sql.SQL("DELETE FROM {} WHERE {} = 3").format(sql.Identifier(TABLE), sql.Identifier(KEY)))
        _execute(totesys_dsn, sql.SQL("INSERT INTO currency (currency_code, last_updated, {}) "
                                      "VALUES ('EUR', now(), 'y')").format(sql.Identifier(EXTRA_CURRENCY_COLUMN)))
        streamed = current_wal_lsn(totesys_dsn)
        _run_pipeline_until(pipeline, thread, streamed)
    finally:
        pipeline.stop.set()
        thread.join(60)
    assert not pipeline.errors, pipeline.errors
    # The sync read past the hostile lake table and projected the currency rows.
    with duckdb.connect(str(home / "wh.duckdb"), read_only=True) as warehouse:
        assert warehouse.execute("SELECT currency_code FROM dim_currency ORDER BY 1").fetchall() == [("EUR",), ("GBP",)]

    expected = _by_key(snapshot_rows + [_row(5)])
    expected[2].update({"with space": "moved", "it's": 21})
    del expected[3]
    layout = LakeLayout(lake)
    qualified = f"public.{TABLE}"
    assert qualified in layout.tables()
    assert _by_key(current_state(layout, qualified).to_pylist()) == expected
    log = changes_as_of_lsn(layout, qualified, streamed)
    assert log.num_rows == 4 + 3
    (snapshot_lsn,) = {r["_lsn"] for r in log.to_pylist() if r["_op"] == "r"}
    assert _by_key(state_as_of_lsn(layout, qualified, snapshot_lsn).to_pylist()) == _by_key(snapshot_rows)

    # Other Delta readers read the lake's tables, names intact.
    state = pl.read_delta(layout.state_uri(qualified)).filter(~pl.col("_deleted"))
    assert _by_key(state.select(NAMES).to_dicts()) == expected
    log = pl.read_delta(layout.changes_uri(qualified))
    assert log.height == 7 and log.columns[:len(NAMES)] == NAMES

    # `totes query`: the view carries the names; selecting them works, now and as of an LSN.
    quoted, view = ", ".join(map(_q, NAMES)), _q(TABLE)
    result = totes("query", f"SELECT {quoted} FROM {view} ORDER BY 2", "--lake", str(lake), "--format", "json")
    assert result.exit_code == 0, result.output
    assert _by_key(json.loads(result.stdout)) == expected
    result = totes("query", f"SELECT {quoted} FROM {view} ORDER BY 2", "--lake", str(lake), "--format", "json",
                   "--as-of", format_lsn(snapshot_lsn))
    assert result.exit_code == 0, result.output
    assert _by_key(json.loads(result.stdout)) == _by_key(snapshot_rows)
    changes = _q(f"changes_{TABLE}")
    result = totes("query", f"SELECT count(*) AS n FROM {changes}", "--lake", str(lake), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 7}]
    assert not Path(PWN).exists(), "a column name ran the SQL it spells"


# -- totes query over a lake written by the processor's writer ---------------------------------

def test_totes_query_never_runs_the_sql_a_column_name_spells(tmp_path):
    """A plainly named table whose first column closes its quotes and runs a COPY: the old
    view DDL pasted the name between double quotes unescaped, and DuckDB ran the COPY."""
    from tests.lake_fixtures import Source, _schema
    from lake.writer import LakeWriter

    schema = _schema("public.plain", [(INJECTION, "text"), ("id", "integer")], "id")
    LakeWriter(tmp_path).write_batch("s1", Source().snapshot(schema, [{INJECTION: "x", "id": "1"}]))
    result = totes("query", f"SELECT {_q(INJECTION)}, id FROM plain", "--lake", str(tmp_path), "--format", "json",
                   catch_exceptions=True)
    assert not Path(PWN).exists(), "a column name ran the SQL it spells"
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{INJECTION: "x", "id": 1}]


def test_totes_query_attaches_a_warehouse_whose_path_holds_a_quote(tmp_path):
    import duckdb

    folder = tmp_path / "it's here"
    folder.mkdir()
    warehouse = folder / "wh.duckdb"
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute("CREATE TABLE dim_currency AS SELECT 1 AS currency_id")
    result = totes("query", "SELECT currency_id FROM dim_currency", "--warehouse", str(warehouse), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"currency_id": 1}]


# -- the warehouse's statements, with hostile names --------------------------------------------

def _hostile_tables(monkeypatch):
    from warehouse_sync import schema as ws

    dimension = ws.Table('dim "x"; DROP TABLE dim_date; --', (
        ws.Column('id "k"', "int"), ws.Column("name`s ü", "varchar", nullable=True)), 'id "k"')
    monkeypatch.setitem(ws.BY_NAME, dimension.name, dimension)
    fact = ws.Table("fact 'f' ünï", (
        ws.Column('rec"id', "serial"), ws.Column("bk`", "int"),
        ws.Column('ref "d"', "int", references=dimension.name),
        ws.Column("is_current", "boolean"), ws.Column("valid_to", "timestamptz", nullable=True),
    ), 'rec"id', business_key="bk`", indexes=ws._fact_indexes("bk`"))
    return dimension, fact


def _exercise_warehouse_statements(target, dimension, fact) -> None:
    from datetime import datetime, timezone

    from warehouse_sync import apply as wa
    from warehouse_sync import transforms as tf
    from warehouse_sync.schema import create_table

    target.begin()
    target.execute("CREATE TABLE dim_date AS SELECT 1 AS canary")
    for statement in create_table(dimension, target.dialect) + create_table(fact, target.dialect):
        target.execute(statement)
    rows = pl.DataFrame({'id "k"': [1, 2, 3], "name`s ü": ["a", "b'); --", 'c"']},
                        schema={'id "k"': pl.Int32, "name`s ü": pl.String})
    assert wa._upsert(target, dimension, rows) == 3
    assert wa._upsert(target, dimension, rows.with_columns(pl.lit("z").alias("name`s ü")).head(1)) == 1
    wa._delete_keys(target, dimension, pl.Series([3], dtype=pl.Int32))
    assert wa._select(target, dimension).sort('id "k"').rows() == [(1, "z"), (2, "b'); --")]

    spec = tf.FactSpec(fact, "nowhere", lambda: [])
    first = pl.DataFrame({"bk`": [7], 'ref "d"': [1], "is_current": [True], "valid_to": [None]},
                         schema={"bk`": pl.Int32, 'ref "d"': pl.Int32, "is_current": pl.Boolean,
                                 "valid_to": pl.Datetime("us", "UTC")})
    result = wa.SyncResult(0, 1)
    wa._write_facts(target, spec, tf.FactChanges(first, pl.DataFrame()), result)
    closes = pl.DataFrame({'rec"id': [1], "valid_to": [datetime(2024, 5, 1, tzinfo=timezone.utc)]},
                          schema={'rec"id': pl.Int32, "valid_to": pl.Datetime("us", "UTC")})
    wa._write_facts(target, spec, tf.FactChanges(first.with_columns(pl.lit(2).alias('ref "d"')), closes), result)
    facts = wa._select(target, fact).sort('rec"id')
    assert facts.select('rec"id', "bk`", 'ref "d"', "is_current").rows() == [(1, 7, 1, False), (2, 7, 2, True)]
    current = wa._select(target, fact, f" WHERE is_current AND {_q('bk`')} = 7")
    assert current['rec"id'].to_list() == [2]
    target.commit()
    assert target.query("SELECT count(*) AS n FROM dim_date").item() == 1, "the name's DROP ran"


def test_warehouse_statements_quote_hostile_names_on_duckdb(monkeypatch):
    from warehouse_sync import DuckDBTarget

    dimension, fact = _hostile_tables(monkeypatch)
    with DuckDBTarget() as target:
        _exercise_warehouse_statements(target, dimension, fact)


def test_warehouse_statements_quote_hostile_names_on_postgres(monkeypatch, empty_database):
    from warehouse_sync import PostgresTarget

    dimension, fact = _hostile_tables(monkeypatch)
    with PostgresTarget(empty_database) as target:
        _exercise_warehouse_statements(target, dimension, fact)
        literal = "'" + fact.name.replace("'", "''") + "'"
        indexes = target.query(f"SELECT indexname FROM pg_indexes WHERE tablename = {literal}")
        assert set(indexes["indexname"].to_list()) == {f"{fact.name}_pkey", f"{fact.name}_current_key",
                                                       f"{fact.name}_bk`_idx"}


# -- what the reader tells an operator to run --------------------------------------------------

def test_the_publication_fix_the_reader_names_runs_as_given_for_a_hostile_table(totesys_dsn):
    from cdc_reader.source_setup import SourceSetupError, ensure_publication

    _execute(totesys_dsn, sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(sql.Identifier(TABLE)))
    _execute(totesys_dsn, sql.SQL('CREATE PUBLICATION {} FOR TABLE address').format(sql.Identifier('their"s')))
    conn = psycopg2.connect(totesys_dsn)
    try:
        with pytest.raises(SourceSetupError) as raised:
            ensure_publication(conn, 'their"s', "public", ("address", TABLE))
        fix = str(raised.value).split(": run ", 1)[1]
        _execute(totesys_dsn, sql.SQL(fix))
        assert ensure_publication(conn, 'their"s', "public", ("address", TABLE)) is False
    finally:
        conn.close()


def test_state_as_of_an_lsn_for_a_key_whose_column_names_hold_commas(tmp_path):
    from tests.lake_fixtures import Source
    from change_events import Column, TableSchema
    from lake.writer import LakeWriter

    schema = TableSchema("public.pairs", (Column("com,ma", "integer", 0, -1, True),
                                          Column("[x", "integer", 0, -1, True), Column("v", "text", 0)))
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
