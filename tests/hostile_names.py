"""Table and column names that spell SQL, and the warehouse statements every dialect must quote."""

from __future__ import annotations

import uuid

import polars as pl
import psycopg2
from psycopg2 import sql

PWN = f"/tmp/{uuid.uuid4().hex[:8]}"


INJECTION = f"""a"FROM(SELECT 1"a");COPY(SELECT 1)TO'{PWN}';SELECT"a"""


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


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _hostile_tables(monkeypatch):
    from warehouse_sync import schema as ws
    from warehouse_sync.star_schema import _fact_indexes

    dimension = ws.Table(
        'dim "x"; DROP TABLE dim_date; --',
        (ws.Column('id "k"', "int"), ws.Column("name`s ü", "varchar", nullable=True)),
        'id "k"',
    )
    monkeypatch.setitem(ws.BY_NAME, dimension.name, dimension)
    fact = ws.Table(
        "fact 'f' ünï",
        (
            ws.Column('rec"id', "serial"),
            ws.Column("bk`", "int"),
            ws.Column('ref "d"', "int", references=dimension.name),
            ws.Column("is_current", "boolean"),
            ws.Column("valid_to", "timestamptz", nullable=True),
        ),
        'rec"id',
        business_key="bk`",
        indexes=_fact_indexes("bk`"),
    )
    return dimension, fact


def _exercise_warehouse_statements(target, dimension, fact) -> None:
    from datetime import datetime, timezone

    from warehouse_sync import apply as wa
    from warehouse_sync import sql as wsql
    from warehouse_sync import steps
    from warehouse_sync import transforms as tf
    from warehouse_sync.schema import create_table

    target.begin()
    target.execute("CREATE TABLE dim_date AS SELECT 1 AS canary")
    for statement in create_table(dimension, target.dialect) + create_table(fact, target.dialect):
        target.execute(statement)
    rows = pl.DataFrame(
        {'id "k"': [1, 2, 3], "name`s ü": ["a", "b'); --", 'c"']}, schema={'id "k"': pl.Int32, "name`s ü": pl.String}
    )
    assert wsql.upsert(target, dimension, rows) == 3
    assert wsql.upsert(target, dimension, rows.with_columns(pl.lit("z").alias("name`s ü")).head(1)) == 1
    wsql.delete_keys(target, dimension, pl.Series([3], dtype=pl.Int32))
    assert wsql.select(target, dimension).sort('id "k"').rows() == [(1, "z"), (2, "b'); --")]

    spec = tf.FactSpec(fact, "nowhere", lambda: [])
    first = pl.DataFrame(
        {"bk`": [7], 'ref "d"': [1], "is_current": [True], "valid_to": [None]},
        schema={"bk`": pl.Int32, 'ref "d"': pl.Int32, "is_current": pl.Boolean, "valid_to": pl.Datetime("us", "UTC")},
    )
    result = wa.SyncResult(0, 1)
    steps._write_facts(target, spec, tf.FactChanges(first, pl.DataFrame()), result)
    closes = pl.DataFrame(
        {'rec"id': [1], "valid_to": [datetime(2024, 5, 1, tzinfo=timezone.utc)]},
        schema={'rec"id': pl.Int32, "valid_to": pl.Datetime("us", "UTC")},
    )
    steps._write_facts(target, spec, tf.FactChanges(first.with_columns(pl.lit(2).alias('ref "d"')), closes), result)
    facts = wsql.select(target, fact).sort('rec"id')
    assert facts.select('rec"id', "bk`", 'ref "d"', "is_current").rows() == [(1, 7, 1, False), (2, 7, 2, True)]
    current = wsql.select(target, fact, f" WHERE is_current AND {_q('bk`')} = 7")
    assert current['rec"id'].to_list() == [2]
    target.commit()
    assert target.query("SELECT count(*) AS n FROM dim_date").item() == 1, "the name's DROP ran"
