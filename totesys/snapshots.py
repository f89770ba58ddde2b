"""Load a recorded totesys snapshot (a folder of <table>.parquet or <table>.json files).

The three real snapshots beside the repository were written by different tools: floats for
money, NaN for NULL ids, nanosecond or string timestamps. This normalises each column to
text PostgreSQL parses exactly and COPYs it in, parents before children, so every
constraint of the schema is checked by the server on the way in.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
from psycopg2 import sql

from cdc_reader.source import connect
from totesys.schema import TABLES

NULL = r"\N"


def snapshot_tables(folder: Path) -> dict[str, Path]:
    """The table files present in a snapshot folder, in insert order."""
    found = {}
    for table in TABLES:
        for suffix in (".parquet", ".json"):
            path = folder / f"{table}{suffix}"
            if path.exists():
                found[table] = path
                break
    return found


def read_table(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    return pl.read_json(path, infer_schema_length=None)


def _as_text(column: pl.Series, pg_type: str) -> pl.Series:
    """One column rendered as the text PostgreSQL should receive for `pg_type`."""
    dtype = column.dtype
    if dtype.is_float():
        column = column.fill_nan(None)
        if pg_type.startswith("numeric"):
            return column.round(2).map_elements(lambda v: f"{v:.2f}", return_dtype=pl.String)
        return column.cast(pl.Int64).cast(pl.String)
    if isinstance(dtype, pl.Datetime):
        return column.dt.strftime("%Y-%m-%d %H:%M:%S%.3f")
    if dtype == pl.Boolean:
        return column.map_elements(lambda v: "t" if v else "f", return_dtype=pl.String)
    return column.cast(pl.String)


def load_snapshot(dsn: str, folder: Path) -> dict[str, int]:
    """COPY every table file of `folder` into an empty totesys; return rows loaded per table."""
    loaded: dict[str, int] = {}
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            for table, path in snapshot_tables(folder).items():
                frame = read_table(path)
                cur.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    (sql.Identifier(table).as_string(conn),),
                )
                columns = [(name, pg_type) for name, pg_type in cur.fetchall() if name in frame.columns]
                text = pl.DataFrame([_as_text(frame[name], pg_type).alias(name) for name, pg_type in columns])
                buffer = io.BytesIO()
                text.write_csv(buffer, include_header=False, null_value=NULL)
                buffer.seek(0)
                copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, NULL {})").format(
                    sql.Identifier(table),
                    sql.SQL(", ").join(sql.Identifier(name) for name, _ in columns),
                    sql.Literal(NULL),
                )
                cur.copy_expert(copy.as_string(conn), buffer)
                loaded[table] = frame.height
            _advance_sequences(cur, loaded)
    finally:
        conn.close()
    return loaded


def _advance_sequences(cur, tables) -> None:
    """Make the serial ids continue after the loaded rows, as in the real database."""
    for table in tables:
        key = f"{table}_id"
        cur.execute(
            sql.SQL("SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE(max({}), 0) + 1, false) FROM {}").format(
                sql.Identifier(key), sql.Identifier(table)
            ),
            (sql.Identifier(table).as_string(cur.connection), key),
        )
