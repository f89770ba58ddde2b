"""The warehouse side of `totes verify`: what it holds, and what it should hold.

- Facts are compared at the verification's LSN L: per business key the version live at L,
  from the lineage columns (`warehouse_sync.as_of`), against the fact projection of the
  source's rows at L (`transforms.fact_rows`).
- Dimensions hold the latest values, so they are compared at the warehouse's own checkpoint
  W (>= L): against the transforms applied to the lake's state at W. (The lake itself is
  compared with the source at L.) A dimension keeps the last values of a deleted source row
  while a fact points at it: such a row is not counted as extra.
- dim_date is a calendar, not a source table's projection: it must hold exactly the days the
  sync's transform makes (`transforms.calendar_days`: CALENDAR_START to a year past the day of
  the sync, and every day a fact row references), each with its calendar values. The day of
  the last sync is known only through the calendar's last day, so the expected calendar ends
  where the warehouse's does, unless that is past a year from today or short of a referenced day.
- A DuckDB warehouse is read through the copy its writer publishes (read_copy.py), so a
  running sync is never in the way; a PostgreSQL one directly.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

import polars as pl
import pyarrow as pa

from lake.layout import LakeLayout
from lake.timetravel import state_as_of_lsn
from verify.core import KeyRange
from warehouse_sync import transforms as tf
from warehouse_sync.as_of import fact_rows_as_of
from warehouse_sync.schema import (
    BY_NAME,
    CHECKPOINT,
    DIM_DATE,
    Table,
    conform,
    projected_columns,
    quote_identifier as q,
    references_to,
)
from warehouse_sync.targets import is_postgres_dsn


CALENDAR_SOURCE = "sales_order"
"""The source table named as dim_date's: its re-read makes the sync add the calendar's days again."""


class WarehouseReader:
    """Read-only queries over a DuckDB file's readable copy, or over PostgreSQL."""

    def __init__(self, warehouse: str):
        self.warehouse = warehouse
        if is_postgres_dsn(warehouse):
            from warehouse_sync.targets import PostgresTarget

            self._target = PostgresTarget(warehouse)
            self._query = self._target.query
            self._close = self._target.close
        else:
            from warehouse_sync.read_copy import connect_for_reading

            connection = connect_for_reading(warehouse)
            self._query = lambda statement: pl.from_arrow(connection.sql(statement).to_arrow_table())
            self._close = connection.close

    def query(self, statement: str) -> pl.DataFrame:
        return self._query(statement)

    def close(self) -> None:
        self._close()

    def tables(self) -> set[str]:
        return set(self.query("SELECT table_name FROM information_schema.tables")["table_name"].to_list())

    def checkpoint(self) -> int | None:
        if CHECKPOINT.name not in self.tables():
            return None
        return self.query(f"SELECT max(lsn) AS lsn FROM {q(CHECKPOINT.name)}")["lsn"].item()  # nosec B608 # a constant name


def fact_spec(source: str) -> tf.FactSpec | None:
    return tf.FACT_BY_SOURCE.get(source)


def expected_facts(spec: tf.FactSpec, source_rows: pa.Table, lsn: int) -> pa.Table:
    """The fact columns the source's rows at `lsn` project to (lineage left out)."""
    frame = pl.from_arrow(source_rows)
    assert isinstance(frame, pl.DataFrame)  # nosec B101 # type narrowing only
    versions = frame.with_columns(
        pl.lit("r").alias("_op"),
        pl.lit(lsn, pl.Int64).alias("_lsn"),
        pl.lit(0, pl.Int64).alias("_seq"),
        pl.lit(None, pl.Datetime("us", "UTC")).alias("_commit_ts"),
    )
    columns = projected_columns(spec.table)
    return tf.fact_rows(spec, versions).select(columns).to_arrow()


def actual_facts(reader: WarehouseReader, spec: tf.FactSpec, chunk: KeyRange, lsn: int) -> pa.Table:
    fact = spec.table
    columns = projected_columns(fact)
    rows = reader.query(fact_rows_as_of(fact, lsn, where=chunk.sql(q(spec.business_key))))
    schema = fact.polars_schema
    return conform(rows, {c: schema[c] for c in columns}).to_arrow()


def expected_dimension(layout: LakeLayout, name: str, lsn: int, schema: str = "public") -> pa.Table:
    spec = tf.DIMENSION_BY_NAME[name]
    frames = []
    for source in spec.sources:
        frame = pl.from_arrow(state_as_of_lsn(layout, f"{schema}.{source}", lsn))
        assert isinstance(frame, pl.DataFrame)  # nosec B101 # type narrowing only
        frames.append(frame)
    return spec.build(*frames).to_arrow()


def actual_dimension(reader: WarehouseReader, name: str) -> pa.Table:
    table = BY_NAME[name]
    return conform(reader.query(f"SELECT * FROM {q(name)}"), table.polars_schema).to_arrow()  # nosec B608 # name quoted by q()


def referenced_days(reader: WarehouseReader) -> pl.Series:
    """Every day some fact row (any version) of the warehouse points at."""
    present = reader.tables()
    parts = [
        f"SELECT DISTINCT {q(column.name)} AS date_id FROM {q(fact.name)}"  # nosec B608 # names quoted by q()
        for fact, column in references_to(DIM_DATE.name)
        if fact.name in present
    ]
    if not parts:
        return pl.Series("date_id", [], dtype=pl.Date)
    return reader.query(" UNION ".join(parts))["date_id"].cast(pl.Date).drop_nulls()


def expected_calendar(referenced: pl.Series, last_day: date | None, today: date | None = None) -> pa.Table:
    """The dim_date rows a warehouse whose calendar ends on `last_day` should hold (see the
    module's docstring): the transform's calendar as of the latest sync day that day allows."""
    today = today or datetime.now(timezone.utc).date()
    synced_on = today if last_day is None else min(today, last_day - tf.CALENDAR_AHEAD)
    return tf.dim_date(tf.calendar_days(referenced, synced_on)).to_arrow()


def referenced(reader: WarehouseReader, name: str, keys: list) -> set:
    """Those of `keys` (a dimension's) that some fact row points at."""
    if not keys:
        return set()
    values = ", ".join(str(int(k)) for k in keys)
    found: set = set()
    present = reader.tables()
    for fact, column in references_to(name):
        if fact.name in present:
            rows = reader.query(
                f"SELECT DISTINCT {q(column.name)} AS k FROM {q(fact.name)} "  # nosec B608 # names quoted by q(), keys int()
                f"WHERE {q(column.name)} IN ({values})"
            )
            found |= set(rows["k"].to_list())
    return found


def dimension_source(name: str) -> str:
    return tf.DIMENSION_BY_NAME[name].source


def table(name: str) -> Table:
    return BY_NAME[name]
