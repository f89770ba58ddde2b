"""Thin adapters over the two warehouse engines: a DuckDB file and PostgreSQL (psycopg2).

Everything else (the SQL the sync runs, the transforms) is shared; an adapter only knows how
to run a statement, return a query's rows as a polars frame, make a polars frame visible to
SQL as a relation for the current transaction (`stage`), and delimit transactions. The few
dialect differences are attributes here (`dialect`, `for_update`, `series`) or live in the
DDL renderer (`warehouse_sync.schema`).

polars, pyarrow and pgpq are imported by the methods that use them: reading the checkpoint
(`value`) needs neither, so a catch-up with nothing new (totes_cli/catch_up.py) loads only DuckDB.

Why one file (~440 lines): the two adapters answer the same small interface side by side, so
a dialect difference is seen next to its twin; split per engine if either grows.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import psycopg2
from psycopg2 import sql as pgsql

from change_events.errors import is_lost_connection
from cdc_reader.source import connect
from warehouse_sync.schema import DUCKDB, POSTGRES, column_list, conform, quote_identifier, quote_literal

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from warehouse_sync.bulk_source import SnapshotPart

APPLICATION_NAME = "totes-sync"
STAGE_BATCH_ROWS = 100_000
"""Rows per binary COPY when a dataset is staged in PostgreSQL (what is held at a time)."""


def _application_name(dsn: str) -> dict[str, str]:
    """The sync's sessions name themselves (pg_stat_activity), unless the DSN names them."""
    return {} if "application_name" in dsn else {"application_name": APPLICATION_NAME}


class Target:
    """What the sync needs from a warehouse engine."""

    dialect: str
    schema_ready: bool = False
    """Set once `ensure_schema` has run on this connection."""
    for_update: str = ""
    """Suffix that locks the rows a SELECT reads until the transaction ends."""

    def execute(self, statement: str) -> None:
        raise NotImplementedError

    def query(self, statement: str) -> pl.DataFrame:
        raise NotImplementedError

    def value(self, statement: str) -> object:
        """The first column of a query's first row (None without a row), with no frame built."""
        raise NotImplementedError

    def select(self, statement: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        """A query of any size whose columns are `schema`'s, in its order, as a frame of
        exactly those types."""
        return conform(self.query(statement), schema)

    def stage(self, name: str, frame: pl.DataFrame) -> str:
        """Make `frame` readable as relation `name` until the transaction ends; return `name`."""
        raise NotImplementedError

    def stage_part(self, name: str, part: SnapshotPart, columns: list[str]) -> str:
        """Make `columns` of a table's events at one LSN (`bulk_source.snapshot_part`)
        readable as relation `name` until the transaction ends, without holding them all."""
        raise NotImplementedError

    def series(self, count: int) -> str:
        """A FROM item with `count` rows."""
        raise NotImplementedError

    def begin(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def lost_connection(self, error: BaseException) -> bool:
        """`error` means the connection is gone (worth a new one and a retry)."""
        return False

    def reconnect(self) -> None:
        """Replace a lost connection with a new one."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


DUCKDB_MEMORY_LIMIT = "192MB"
"""DuckDB's own memory (its cache of the database's blocks, its operators) in a sync: by
default it caches up to 80 % of the machine's memory, so the process grew with the
warehouse; past this it reads blocks again and spills to disk."""
DUCKDB_CHECKPOINT_THRESHOLD = "1GB"
"""The WAL size past which a DuckDB commit checkpoints. DuckDB compares it with the WAL so far
plus its estimate of the committing transaction, which for updates is their undo versions
(a vector's worth per column they touch): by its default, 16 MB, the is_current flips of a
slice of 1,000 updates spread over a large fact table made every commit a checkpoint,
rewriting each row group the slice touched, i.e. all of them. The WAL itself grows by well
under 1 MB a slice of 1,000 changes; it is checkpointed by the read copy's publisher
(`read_copy`), at close, and past this size."""


class DuckDBTarget(Target):
    """A DuckDB database file (or `:memory:`)."""

    dialect = DUCKDB

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        connection: duckdb.DuckDBPyConnection | None = None,
        memory_limit: str | None = DUCKDB_MEMORY_LIMIT,
    ):
        self.path = str(path)
        self.connection = connection if connection is not None else duckdb.connect(self.path)
        self.connection.execute("SET TimeZone = 'UTC'")
        if memory_limit is not None and self.path != ":memory:":
            self.connection.execute(f"SET memory_limit = '{memory_limit.replace(chr(39), '')}'")
        if self.path != ":memory:":
            self.connection.execute(f"SET checkpoint_threshold = '{DUCKDB_CHECKPOINT_THRESHOLD}'")
        self._staged: set[str] = set()
        self._views: set[str] = set()

    def __repr__(self) -> str:
        return f"DuckDBTarget({self.path!r})"

    def execute(self, statement: str) -> None:
        self.connection.execute(statement)

    def query(self, statement: str) -> pl.DataFrame:
        import polars as pl

        frame = pl.from_arrow(self.connection.sql(statement).to_arrow_table())
        assert isinstance(frame, pl.DataFrame)  # nosec B101 # type narrowing only
        return frame

    def value(self, statement: str) -> object:
        # fetchall, not fetchone: DuckDB keeps a result it has not read to its end open on the
        # connection and refuses the connection's next statement until it is.
        rows = self.connection.execute(statement).fetchall()
        return rows[0][0] if rows else None

    def stage(self, name: str, frame: pl.DataFrame) -> str:
        self.connection.register(name, frame.to_arrow())
        self._staged.add(name)
        return name

    def stage_part(self, name: str, part: SnapshotPart, columns: list[str]) -> str:
        # DuckDB reads the files itself each time a statement reads the relation, only the
        # columns and row groups it needs, within its memory limit: nothing is copied first.
        # Files on this disk go to its own Parquet reader (multi-threaded, no Arrow batches
        # in between); a lake elsewhere is handed over as the Arrow dataset.
        if part.paths is None:
            self.connection.register(name, part.dataset)
            self._staged.add(name)
            return name
        files = ", ".join(quote_literal(path) for path in part.paths) or "NULL"
        self.connection.execute(
            f"CREATE OR REPLACE TEMP VIEW {quote_identifier(name)} AS SELECT {column_list(columns)} "  # nosec B608 # names quoted, paths literals, where of int()s
            f"FROM read_parquet([{files}], union_by_name = true) WHERE {part.where}"
        )
        self._views.add(name)
        return name

    def series(self, count: int) -> str:
        return f"range({int(count)})"

    def _unstage(self) -> None:
        for name in self._staged:
            self.connection.unregister(name)
        self._staged.clear()
        for name in self._views:
            self.connection.execute(f"DROP VIEW IF EXISTS {quote_identifier(name)}")
        self._views.clear()

    def begin(self) -> None:
        self.connection.begin()

    def commit(self) -> None:
        self.connection.commit()
        self._unstage()

    def rollback(self) -> None:
        self.connection.rollback()
        self._unstage()

    def close(self) -> None:
        self.connection.close()


def _pg_type(dtype: pl.DataType) -> str:
    import polars as pl

    if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16):
        return "integer"
    if dtype in (pl.Int64, pl.UInt32, pl.UInt64):
        return "bigint"
    if dtype in (pl.String, pl.Null):
        return "text"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype == pl.Date:
        return "date"
    if dtype == pl.Time:
        return "time"
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    if isinstance(dtype, pl.Decimal):
        return f"numeric({dtype.precision},{dtype.scale})" if dtype.precision else "numeric"
    raise TypeError(f"no PostgreSQL type for staging a {dtype} column")


def _binary_ready(frame: pl.DataFrame) -> pa.Table:
    """`frame` as Arrow whose every column has the binary form of its staged column's type
    (`_pg_type`): binary COPY checks no types, so an int2 sent into an integer would be
    misread. Times and timestamps in microseconds, PostgreSQL's precision."""
    import polars as pl
    import pyarrow as pa

    columns = []
    for name, dtype in frame.schema.items():
        column = pl.col(name)
        if dtype in (pl.Int8, pl.Int16, pl.UInt8, pl.UInt16):
            column = column.cast(pl.Int32)
        elif dtype in (pl.UInt32, pl.UInt64):
            column = column.cast(pl.Int64)
        elif dtype == pl.Null:
            column = column.cast(pl.String)
        elif dtype == pl.Time:
            column = column.cast(pl.Int64).floordiv(1000)  # ns → us, made time64[us] below
        elif isinstance(dtype, pl.Datetime) and dtype.time_unit != "us":
            column = column.dt.cast_time_unit("us")
        columns.append(column)
    table = frame.select(columns).to_arrow()
    fields = [
        pa.field(name, pa.time64("us")) if frame.schema[name] == pl.Time else table.schema.field(name)
        for name in table.column_names
    ]
    return table.cast(pa.schema(fields))


def _binary_copy(table: pa.Table) -> io.BytesIO:
    """`table` in PostgreSQL's binary COPY format (pgpq): no text to format or parse."""
    import pgpq

    encoder = pgpq.ArrowToPostgresBinaryEncoder(table.schema)
    buffer = io.BytesIO()
    buffer.write(encoder.write_header())
    for batch in table.to_batches():
        buffer.write(encoder.write_batch(batch))
    buffer.write(encoder.finish())
    buffer.seek(0)
    return buffer


def _from_copy_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """Column `name` of PostgreSQL's CSV output (text, the session in UTC) as `dtype`."""
    import polars as pl

    text = pl.col(name)
    if dtype == pl.Boolean:
        return (text == "t").alias(name)
    if dtype == pl.Date:
        return text.str.to_date("%Y-%m-%d").alias(name)
    if dtype == pl.Time:
        return text.str.to_time("%H:%M:%S%.f").alias(name)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone:
        moment = text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%#z", time_unit="us")
        return moment.dt.convert_time_zone(dtype.time_zone).alias(name)
    if isinstance(dtype, pl.Datetime):
        return text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us").alias(name)
    return text.cast(dtype).alias(name)


class PostgresTarget(Target):
    """A PostgreSQL database (psycopg2); the session runs in UTC."""

    dialect = POSTGRES
    for_update = " FOR UPDATE"

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.connection = self._connect()

    def _connect(self):
        # keepalives included; a failure is one sentence without the password
        connection = connect(self.dsn, what="warehouse", **_application_name(self.dsn))
        with connection.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        connection.commit()
        return connection

    def __repr__(self) -> str:
        return "PostgresTarget(...)"

    def execute(self, statement: str) -> None:
        with self.connection.cursor() as cur:
            cur.execute(statement)

    def query(self, statement: str) -> pl.DataFrame:
        import polars as pl

        with self.connection.cursor() as cur:
            cur.execute(statement)
            names = [d.name for d in cur.description]
            rows = cur.fetchall()
        if not rows:
            return pl.DataFrame(schema={n: pl.Null for n in names})
        return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)

    def value(self, statement: str) -> object:
        with self.connection.cursor() as cur:
            cur.execute(statement)
            row = cur.fetchone()
        return None if row is None else row[0]

    def select(self, statement: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        """Through COPY TO as CSV, parsed by polars: no Python object per row or value."""
        import polars as pl

        buffer = io.BytesIO()
        with self.connection.cursor() as cur:
            cur.copy_expert(f"COPY ({statement}) TO STDOUT WITH (FORMAT csv)", buffer)
        if buffer.tell() == 0:
            return pl.DataFrame(schema=schema)
        buffer.seek(0)
        text = pl.read_csv(buffer, has_header=False, schema={name: pl.String() for name in schema})
        return text.select([_from_copy_text(name, dtype) for name, dtype in schema.items()])

    def stage(self, name: str, frame: pl.DataFrame) -> str:
        columns = pgsql.SQL(", ").join(
            pgsql.SQL("{} {}").format(pgsql.Identifier(n), pgsql.SQL(_pg_type(t))) for n, t in frame.schema.items()
        )
        with self.connection.cursor() as cur:
            cur.execute(pgsql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(pgsql.Identifier(name)))
            cur.execute(pgsql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(pgsql.Identifier(name), columns))
            if frame.height:
                copy = pgsql.SQL("COPY {} FROM STDIN WITH (FORMAT binary)").format(pgsql.Identifier(name))
                cur.copy_expert(copy.as_string(self.connection), _binary_copy(_binary_ready(frame)))
        return name

    def stage_part(self, name: str, part: SnapshotPart, columns: list[str]) -> str:
        import polars as pl

        schema = dict(pl.DataFrame(part.dataset.schema.empty_table()).select(columns).schema)
        self.stage(name, pl.DataFrame(schema=schema))
        copy = pgsql.SQL("COPY {} FROM STDIN WITH (FORMAT binary)").format(pgsql.Identifier(name))
        with self.connection.cursor() as cur:
            for batch in part.dataset.to_batches(columns=columns, batch_size=STAGE_BATCH_ROWS):
                if batch.num_rows:
                    frame = pl.from_arrow(batch)
                    assert isinstance(frame, pl.DataFrame)  # nosec B101 # type narrowing only
                    cur.copy_expert(copy.as_string(self.connection), _binary_copy(_binary_ready(frame)))
        return name

    def series(self, count: int) -> str:
        return f"generate_series(1, {int(count)})"

    def begin(self) -> None:
        pass  # psycopg2 opens a transaction with the first statement

    def commit(self) -> None:
        self.connection.commit()

    def rollback(self) -> None:
        if self.connection.closed:
            return  # the server rolled the transaction back when the connection went
        try:
            self.connection.rollback()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            pass  # lost right now: the same

    def close(self) -> None:
        self.connection.close()

    def lost_connection(self, error: BaseException) -> bool:
        return is_lost_connection(error) or bool(self.connection.closed)

    def reconnect(self) -> None:
        try:
            self.connection.close()
        except psycopg2.Error:
            pass
        self.connection = self._connect()


def is_postgres_dsn(warehouse: str) -> bool:
    text = str(warehouse)
    return text.startswith(("postgresql://", "postgres://")) or ("=" in text and "dbname" in text)


def open_target(warehouse: str | Path) -> Target:
    """A PostgreSQL DSN (URL or key=value) opens PostgreSQL; anything else is a DuckDB file."""
    if is_postgres_dsn(str(warehouse)):
        return PostgresTarget(str(warehouse))
    path = Path(warehouse).expanduser()
    if str(warehouse) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    if str(warehouse) == ":memory:":
        return DuckDBTarget(":memory:")
    return DuckDBTarget(path, connection=_connect_duckdb_waiting(path))


DUCKDB_LOCK_WAIT_SECONDS = 10.0
"""How long a writer waits for readers that opened the DuckDB file itself (they let go
within moments; see warehouse_sync/read_copy.py)."""


def _connect_duckdb_waiting(path: Path) -> duckdb.DuckDBPyConnection:
    import time

    deadline = time.monotonic() + DUCKDB_LOCK_WAIT_SECONDS
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as error:
            if "Could not set lock" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
