"""Helpers for the bulk snapshot's tests: a sink that writes what the reader streams into a
real lake (as the processor would, without Kinesis), a generated sales_order, and the lake
and the source compared as typed rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg2

from bench.orders import INSERT, start_generating
from cdc_reader.catalog import read_table_schema
from cdc_reader.reader import FileStateStore, ReaderConfig
from change_events.wire import EncodedChange
from lake.layout import LakeLayout
from lake.writer import LakeWriter
from tests.lake_fixtures import lake_state, typed_rows
from tests.reader_harness import FAST, current_lsn, replace, running_reader, source_state, wait_until_confirmed
from tests.fakes import MemorySink
from totesys.simulator import Simulator

SHARD = "shard-0"
BULK = replace(FAST, snapshot_chunk_pages=128, snapshot_connections=3, snapshot_batch_bytes=256 << 10)


class LakeSink(MemorySink):
    """The reader's sink and durability: every event and marker it hands on is written to the
    lake by `LakeWriter.write_batch` (one shard); durable is the lake watermark."""

    def __init__(self, layout: LakeLayout):
        super().__init__()
        self.writer = LakeWriter(layout)
        self._pending: list = []
        self._lock = threading.Lock()

    def add(self, event) -> None:
        super().add(event)
        self._pending.append(event.event if isinstance(event, EncodedChange) else event)

    def publish_watermark(self, lsn: int) -> None:
        super().publish_watermark(lsn)
        self._write([lsn])

    def flush(self) -> None:
        self._write([])

    def _write(self, markers: list[int]) -> None:
        with self._lock:
            events, self._pending = self._pending, []
            if events or markers:
                self.writer.write_batch(SHARD, events, markers)

    def durable_lsn(self) -> int:
        return self.writer.lake_watermark([SHARD])


def seed_sales_orders(dsn: str, rows: int) -> None:
    """A few days of totesys history, then `rows` more generated sales orders."""
    with Simulator(dsn, seed=5) as simulator:
        simulator.seed_history(2, until=datetime(2024, 11, 15, 18))
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            ids, base = start_generating(cur)
            cur.execute(INSERT, {**ids, "lo": base + 1, "hi": base + rows})
            cur.execute(
                "SELECT setval('sales_order_sales_order_id_seq', (SELECT max(sales_order_id) FROM sales_order))"
            )
        conn.commit()
    finally:
        conn.close()


def source_rows(dsn: str, table: str) -> dict[tuple, dict]:
    """The source's rows of `table`, typed as the lake types them, by key."""
    with psycopg2.connect(dsn) as conn:
        schema = read_table_schema(conn, "public", table)
    text = source_state(dsn, [table])[f"public.{table}"]
    rows = typed_rows(schema, list(text.values()))
    return {tuple(r[k] for k in schema.key_names): r for r in rows}


def lake_rows(layout: LakeLayout, dsn: str, table: str) -> dict[tuple, dict]:
    with psycopg2.connect(dsn) as conn:
        keys = read_table_schema(conn, "public", table).key_names
    return lake_state(layout, f"public.{table}", keys)


def bulk_config(**changes) -> ReaderConfig:
    return replace(BULK, **changes)


def with_lake(layout: LakeLayout):
    """A `running_reader` `prepare` that gives the reader `layout` as its lake (the bulk path)."""
    return lambda reader: setattr(reader, "lake", layout)


def first_run(dsn: str, layout: LakeLayout, state: Path, **config) -> int:
    """The initial snapshot into the lake and streaming, until caught up: the snapshot's LSN."""
    with running_reader(dsn, LakeSink(layout), state, bulk_config(**config), prepare=with_lake(layout)) as reader:
        wait_until_confirmed(reader, current_lsn(dsn))
    return FileStateStore(state).load().snapshot_lsn


def run_child(child: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The script `child` run by this Python with the repository on its path, its output kept
    (the kill children end themselves with SIGKILL part way)."""
    return subprocess.run(
        [sys.executable, str(child), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )


def wait_for_reread(reader, table: str, timeout: float = 120) -> None:
    """Until `reader` has read `table` again (schema-qualified)."""
    deadline = time.monotonic() + timeout
    while table not in reader.reread:
        assert getattr(reader, "failure", None) is None, f"the reader died: {reader.failure!r}"
        assert time.monotonic() < deadline, "the re-read did not finish"
        time.sleep(0.1)


def assert_lake_and_warehouse_equal_the_source(layout, dsn, sink, tmp_path) -> None:
    """Every lake table equals the source, and so does a warehouse synced from the lake."""
    from tests.e2e_helpers import check_against_source, read_source
    from totesys.schema import TABLES
    from warehouse_sync import open_target, sync_once

    for table in TABLES:
        got, want = lake_rows(layout, dsn, table), source_rows(dsn, table)
        assert got.keys() == want.keys(), (table, sorted(set(got) ^ set(want))[:5])
        assert [k for k in want if got[k] != want[k]] == [], table
    target = open_target(str(tmp_path / "warehouse.duckdb"))
    try:
        sync_once(layout, target, sink.durable_lsn())
        check_against_source(target, read_source(dsn))
    finally:
        target.close()


def kill_at_chunk(kill_at: int, on_first=None):
    """A `Reader.bulk_chunk_hook` that kills the process (SIGKILL) once the `kill_at`-th
    sales_order chunk's change log is written, before its state; `on_first()` runs at the first."""
    logged = []
    lock = threading.Lock()

    def hook(table: str, chunk: int, step: str) -> None:
        if step == "logged" and table == "public.sales_order":
            with lock:
                logged.append(chunk)
                if len(logged) == 1 and on_first is not None:
                    on_first()
                if len(logged) == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

    return hook
