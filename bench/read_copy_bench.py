"""What publishing the warehouse's copy for readers costs the sync (warehouse_sync/read_copy.py).

A DuckDB warehouse of ~100k fact_sales_order rows (dims filled to satisfy the foreign keys);
then rounds of a small sync-sized change (500 new versions, 1,000 closed) followed by the
publish the sync does: CHECKPOINT + a `cp` of the file. Beside it, the alternative of one
`COPY FROM DATABASE` into a fresh file (a consistent copy too, but it rebuilds every index).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from bench import Report, Row
from warehouse_sync.read_copy import publish_copy, published_path
from warehouse_sync.schema import DUCKDB, schema_ddl

NAME = "read_copy"
DESCRIPTION = "warehouse copy for readers: checkpoint + cp after a sync, on a ~100k-fact DuckDB warehouse"


def _fill(connection, table: str, rows: int) -> None:
    columns = connection.execute(f"DESCRIBE {table}").fetchall()
    values = []
    for index, (name, kind, *_) in enumerate(columns):
        if kind == "DATE":
            values.append("DATE '2023-06-01' + i::int")
        elif kind in ("INTEGER", "BIGINT"):
            values.append("i + 1" if index == 0 else "1")
        elif kind == "VARCHAR":
            values.append("'x'")
        elif kind == "BOOLEAN":
            values.append("false")
        else:
            values.append("NULL")
    connection.execute(f"INSERT INTO {table} SELECT {', '.join(values)} FROM range({rows}) t(i)")  # nosec B608 # bench table names


FACTS = """INSERT INTO fact_sales_order SELECT i, i, DATE '2024-01-01' + (i % 300)::int, TIME '10:00',
    DATE '2024-01-01', TIME '10:00', 1 + i % 20, 1 + i % 20, i % 1000, 2.5, 1 + i % 3, 1 + i % 50,
    DATE '2024-02-01', DATE '2024-03-01', 1 + i % 30, true, false, 'c', i, 0, now(), NULL
    FROM range({start}, {stop}) t(i)"""


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    facts, rounds = (20_000, 5) if quick else (100_000, 20)
    folder = Path(tempfile.mkdtemp(prefix="totes-bench-copy-"))
    path = folder / "warehouse.duckdb"
    connection = duckdb.connect(str(path))
    for statement in schema_ddl(DUCKDB):
        connection.execute(statement)
    _fill(connection, "dim_date", 1000)
    for table in ("dim_staff", "dim_counterparty", "dim_currency", "dim_design", "dim_location"):
        _fill(connection, table, 60)
    connection.execute(FACTS.format(start=0, stop=facts))
    connection.execute("CHECKPOINT")
    say(f"warehouse: {facts:,} fact rows, {path.stat().st_size / 2**20:.1f} MiB")
    publish, total = [], facts
    for round_ in range(rounds):
        connection.begin()
        connection.execute(f"UPDATE fact_sales_order SET is_current = false WHERE sales_record_id % 100 = {round_}")
        connection.execute(FACTS.format(start=total, stop=total + 500))
        connection.commit()
        total += 500
        started = time.perf_counter()
        publish_copy(connection, path, published_path(path))
        publish.append(time.perf_counter() - started)
    other = folder / "copied.duckdb"
    started = time.perf_counter()
    connection.execute(f"ATTACH '{other}' AS copied")
    connection.execute("COPY FROM DATABASE warehouse TO copied")
    connection.execute("DETACH copied")
    copy_from_database = time.perf_counter() - started
    size = path.stat().st_size
    connection.close()
    median, worst = statistics.median(publish), max(publish)
    report = Report(
        raw={
            "facts": total,
            "file_bytes": size,
            "publish_seconds": publish,
            "copy_from_database_seconds": copy_from_database,
        }
    )
    report.rows.append(
        Row(
            f"warehouse copy for readers after a sync: CHECKPOINT + cp, {total:,} fact rows ({size / 2**20:.1f} MiB)",
            f"median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms per copy (COPY FROM DATABASE instead: "
            f"{copy_from_database * 1000:.0f} ms)",
            "small beside a sync; at most one a second",
            "python -m bench read_copy",
        )
    )
    return report
