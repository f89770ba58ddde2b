"""Identifiers of any spelling: a source table and columns named with quotes, spaces,
unicode, backticks and SQL fragments go from a real PostgreSQL through the reader (snapshot
and stream), Kinesis and the processor into the lake, are read back by other Delta readers
and by `totes query` (as of now and as of an LSN), and never run the SQL they spell."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import duckdb
import polars as pl
import pytest
from psycopg2 import sql
from typer.testing import CliRunner

from change_events import format_lsn
from lake.layout import LakeLayout
from lake.timetravel import changes_as_of_lsn, current_state, state_as_of_lsn
from tests.conftest import scratch_folder
from tests.run_process import wait_for
from totes_cli.app import app
from totes_cli.pipeline import Pipeline, PipelineConfig
from totesys.schema import TABLES
from cdc_reader.source import current_wal_lsn
from tests.hostile_names import COLUMNS, INJECTION, NAMES, PWN, _execute, _q

"""A file that only injected SQL would write."""

"""A column name that, pasted between double quotes unescaped, closes the identifier and
runs a COPY that writes PWN (it fits PostgreSQL's 63-byte limit)."""

TABLE = 'we"ird.`tab` ünï; --'
EXTRA_CURRENCY_COLUMN = 'x"; DROP TABLE dim_currency; --'
"""Added to totesys's currency table: the warehouse projects that table and must not mind."""
KEY = 'a"b'


def _row(i: int, version: int = 0) -> dict:
    return {
        INJECTION: f"inj{i}",
        KEY: i,
        "with space": f"space {i}.{version}",
        "ünï": f"ü{i}",
        NAMES[4]: f"x{i}",
        "`tick`": f"t{i}",
        '"': f"q{i}",
        "it's": i * 10 + version,
    }


def _insert(dsn: str, rows: list[dict]) -> None:
    _execute(
        dsn,
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(TABLE),
            sql.SQL(", ").join(map(sql.Identifier, NAMES)),
            sql.SQL(", ").join(sql.Placeholder() * len(NAMES)),
        ),
        rows,
    )


def _by_key(rows: list[dict]) -> dict[int, dict]:
    return {row[KEY]: {n: row[n] for n in NAMES} for row in rows}


@pytest.fixture
def home():
    yield from scratch_folder("totes-ident-")


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
    totesys_dsn, home, own_kinesalite
):
    _execute(
        totesys_dsn,
        sql.SQL("CREATE TABLE {} ({})").format(
            sql.Identifier(TABLE),
            sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in COLUMNS),
        ),
    )
    snapshot_rows = [_row(i) for i in range(1, 5)]
    _insert(totesys_dsn, snapshot_rows)
    _execute(
        totesys_dsn, sql.SQL("ALTER TABLE currency ADD COLUMN {} text").format(sql.Identifier(EXTRA_CURRENCY_COLUMN))
    )
    _execute(
        totesys_dsn,
        sql.SQL("INSERT INTO currency (currency_code, last_updated, {}) VALUES ('GBP', now(), 'x')").format(
            sql.Identifier(EXTRA_CURRENCY_COLUMN)
        ),
    )

    lake = home / "lake"
    pipeline = Pipeline(
        PipelineConfig(
            source_dsn=totesys_dsn,
            lake=str(lake),
            warehouse=str(home / "wh.duckdb"),
            tables=TABLES + (TABLE,),
            heartbeat_seconds=0.5,
        )
    )
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        after_snapshot = current_wal_lsn(totesys_dsn)
        _run_pipeline_until(pipeline, thread, after_snapshot)
        # The stream: an insert, an update of a quoted column, a delete by the quoted key.
        _insert(totesys_dsn, [_row(5)])
        _execute(
            totesys_dsn,
            sql.SQL("UPDATE {} SET {} = 'moved', {} = 21 WHERE {} = 2").format(
                sql.Identifier(TABLE), sql.Identifier("with space"), sql.Identifier("it's"), sql.Identifier(KEY)
            ),
        )
        _execute(totesys_dsn, sql.SQL("DELETE FROM {} WHERE {} = 3").format(sql.Identifier(TABLE), sql.Identifier(KEY)))
        _execute(
            totesys_dsn,
            sql.SQL("INSERT INTO currency (currency_code, last_updated, {}) VALUES ('EUR', now(), 'y')").format(
                sql.Identifier(EXTRA_CURRENCY_COLUMN)
            ),
        )
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
    assert log.height == 7 and log.columns[: len(NAMES)] == NAMES

    # `totes query`: the view carries the names; selecting them works, now and as of an LSN.
    quoted, view = ", ".join(map(_q, NAMES)), _q(TABLE)
    result = totes("query", f"SELECT {quoted} FROM {view} ORDER BY 2", "--lake", str(lake), "--format", "json")
    assert result.exit_code == 0, result.output
    assert _by_key(json.loads(result.stdout)) == expected
    result = totes(
        "query",
        f"SELECT {quoted} FROM {view} ORDER BY 2",
        "--lake",
        str(lake),
        "--format",
        "json",
        "--as-of",
        format_lsn(snapshot_lsn),
    )
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
    from change_events import Column, TableSchema
    from tests.lake_fixtures import Source
    from lake.writer import LakeWriter

    schema = TableSchema("public.plain", (Column(INJECTION, "text", 0, -1), Column("id", "integer", 0, -1, True)))
    LakeWriter(tmp_path).write_batch("s1", Source().snapshot(schema, [{INJECTION: "x", "id": "1"}]))
    result = totes(
        "query",
        f"SELECT {_q(INJECTION)}, id FROM plain",
        "--lake",
        str(tmp_path),
        "--format",
        "json",
        catch_exceptions=True,
    )
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
