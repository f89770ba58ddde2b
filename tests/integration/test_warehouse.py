"""The warehouse's tables against §3 of the spec, on DuckDB and PostgreSQL, and the pure
pieces of the sync (replay of versions, fact versioning, dimensions, calendar)."""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from decimal import Decimal

import polars as pl
import psycopg2
import pytest

from warehouse_sync import DuckDBTarget, PostgresTarget, ensure_schema, open_target

POSTGRES_TYPES = {
    "int": ("integer", None, None),
    "serial": ("integer", None, None),
    "bigint": ("bigint", None, None),
    "varchar": ("character varying", None, None),
    "date": ("date", None, None),
    "time": ("time without time zone", None, None),
    "boolean": ("boolean", None, None),
    "numeric(10,2)": ("numeric", 10, 2),
    "numeric": ("numeric", None, None),
    "timestamptz": ("timestamp with time zone", None, None),
}


def test_postgres_tables_match_the_spec_column_by_column(empty_database, warehouse_spec):
    target = open_target(empty_database)  # a DSN opens PostgreSQL
    assert isinstance(target, PostgresTarget)
    try:
        ensure_schema(target)
        ensure_schema(target)
    finally:
        target.close()
    with psycopg2.connect(empty_database) as conn, conn.cursor() as cur:
        for table, spec in warehouse_spec.tables.items():
            cur.execute(
                "SELECT column_name, data_type, numeric_precision, numeric_scale, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s "
                "ORDER BY ordinal_position",
                (table,),
            )
            columns = cur.fetchall()
            expected = []
            for name, type_, null in spec:
                data_type, precision, scale = POSTGRES_TYPES[type_]
                if data_type in ("integer", "bigint"):
                    precision, scale = (32, 0) if data_type == "integer" else (64, 0)
                expected.append((name, data_type, precision, scale, "YES" if null else "NO"))
            assert [c[:5] for c in columns] == expected, table
            for (name, type_, _), column in zip(spec, columns):
                assert ("nextval(" in (column[5] or "")) == (type_ == "serial"), (table, name)
            cur.execute(
                "SELECT a.attname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
                "AND a.attnum = ANY(c.conkey) WHERE c.conrelid = %s::regclass AND c.contype = 'p'",
                (table,),
            )
            assert [r[0] for r in cur.fetchall()] == [warehouse_spec.primary_keys[table]]
            cur.execute(
                "SELECT a.attname, c.confrelid::regclass::text FROM pg_constraint c JOIN pg_attribute a "
                "ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
                "WHERE c.conrelid = %s::regclass AND c.contype = 'f'",
                (table,),
            )
            assert dict(cur.fetchall()) == warehouse_spec.foreign_keys.get(table, {}), table


AWKWARD_VALUES = pl.DataFrame(
    {
        "text": ["", None, "a,b", 'a "quoted" word', "two\nlines", r"\N", "NULL", " spaced "],
        "number": [1, None, -2_147_483_648, 2_147_483_647, 0, 7, 8, 9],
        "big": [None, 2**62, -(2**62), 0, 1, 2, 3, 4],
        "money": [
            Decimal("0.01"),
            None,
            Decimal("-99999999.99"),
            Decimal("99999999.99"),
            Decimal("0"),
            Decimal("1.50"),
            Decimal("2"),
            Decimal("3.25"),
        ],
        "day": [
            date(2024, 2, 29),
            None,
            date(1, 1, 1),
            date(9999, 12, 31),
            date(2022, 11, 3),
            date(2024, 11, 15),
            date(2024, 1, 1),
            date(2025, 2, 25),
        ],
        "moment": [
            time(0, 0),
            None,
            time(23, 59, 59, 999_999),
            time(12, 0, 0, 1),
            time(9, 30, 0, 123_000),
            time(1, 2, 3),
            time(4, 5, 6),
            time(7, 8, 9),
        ],
        "local": [
            datetime(2024, 11, 15, 10, 0, 0, 123_000),
            None,
            datetime(2022, 11, 3, 14, 20, 49, 962_000),
            datetime(2024, 1, 1),
            datetime(2024, 1, 1, 0, 0, 0, 1),
            datetime(2000, 1, 1),
            datetime(2030, 6, 1),
            datetime(1999, 12, 31, 23, 59, 59, 999_999),
        ],
        "utc": [
            datetime(2024, 11, 15, 10, 0, 0, 123_456, tzinfo=timezone.utc),
            None,
            datetime(2022, 11, 3, tzinfo=timezone.utc),
        ]
        + [datetime(2024, 1, 1, 0, 0, i, tzinfo=timezone.utc) for i in range(5)],
        "flag": [True, None, False, True, False, True, False, True],
    },
    schema={
        "text": pl.String(),
        "number": pl.Int32(),
        "big": pl.Int64(),
        "money": pl.Decimal(10, 2),
        "day": pl.Date(),
        "moment": pl.Time(),
        "local": pl.Datetime("us"),
        "utc": pl.Datetime("us", "UTC"),
        "flag": pl.Boolean(),
    },
)


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_staged_rows_read_back_through_the_bulk_paths_are_the_same_values(engine, request):
    """What the sync stages (binary COPY FROM into PostgreSQL, Arrow into DuckDB) and reads
    back (COPY TO as CSV parsed by polars, Arrow from DuckDB) keeps every value: NULL apart
    from '' and from the text '\\N', quotes, commas, newlines, microseconds, time zones."""
    target = DuckDBTarget() if engine == "duckdb" else PostgresTarget(request.getfixturevalue("empty_database"))
    try:
        target.begin()
        staged = target.stage("_awkward", AWKWARD_VALUES)
        columns = ", ".join(f'"{name}"' for name in AWKWARD_VALUES.columns)
        back = target.select(
            f'SELECT {columns} FROM "{staged}" ORDER BY "number" NULLS FIRST, "text"', dict(AWKWARD_VALUES.schema)
        )
        empty = target.select(f'SELECT {columns} FROM "{staged}" WHERE false', dict(AWKWARD_VALUES.schema))
        target.rollback()
    finally:
        target.close()
    want = AWKWARD_VALUES.sort("number", "text", nulls_last=False)
    assert back.schema == want.schema and empty.schema == want.schema and empty.height == 0
    assert back.rows() == want.rows()
