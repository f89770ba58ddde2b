"""Test helpers for the reader: an in-memory sink, a projection of events into table state,
and the source's own rows in the same text form, so "the stream equals the source" is one
dictionary comparison."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime

import psycopg2
import pytest
from psycopg2 import sql

from cdc_reader.reader import READER_SESSION, FileStateStore, Reader, ReaderConfig, session_options
from change_events import Op
from cdc_reader.source import current_wal_lsn
from tests.fakes import MemorySink
from totesys.schema import TABLES
from totesys.simulator import Simulator

State = dict[str, dict[tuple, dict[str, str | None]]]


def apply_events(events, state: State | None = None) -> State:
    """Current state of every table from its events, in (lsn, seq) order, deduplicated."""
    state = state if state is not None else {}
    seen = set()
    for event in sorted(events, key=lambda e: e.event_id):
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        table = state.setdefault(event.table, {})
        key = tuple(event.key.get(k) for k in event.schema.key_names)
        if event.op is Op.TRUNCATE:
            table.clear()
        elif event.op is Op.DELETE:
            table.pop(key, None)
        else:
            previous = table.get(key, {})
            row = {name: previous.get(name) for name in event.unchanged}
            row.update(event.after)
            table[key] = row
    return state


def with_all_columns(state: State) -> State:
    """Rows written before a column was added lack it; the table now says NULL there."""
    filled: State = {}
    for table, rows in state.items():
        columns = {c for row in rows.values() for c in row}
        filled[table] = {k: {c: row.get(c) for c in columns} for k, row in rows.items()}
    return filled


def source_state(dsn: str, tables, schema: str = "public") -> State:
    """Every row of `tables` as text, the way the reader's session renders values (format()
    uses each type's output function, as pgoutput and COPY do; `::text` would not for bool)."""
    state: State = {}
    with psycopg2.connect(dsn, options=session_options()) as conn, conn.cursor() as cur:
        for table in tables:
            cur.execute(
                "SELECT a.attname, COALESCE(a.attnum = ANY(i.indkey), false) FROM pg_attribute a "
                "LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (sql.Identifier(schema, table).as_string(conn),),
            )
            columns = cur.fetchall()
            names = [n for n, _ in columns]
            keys = [n for n, k in columns if k]
            cur.execute(
                sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(
                        sql.SQL("CASE WHEN {0} IS NOT NULL THEN format('%s', {0}) END").format(sql.Identifier(n))
                        for n in names
                    ),
                    sql.Identifier(schema, table),
                )
            )
            rows = {}
            for values in cur.fetchall():
                row = dict(zip(names, values))
                rows[tuple(row[k] for k in keys)] = row
            state[f"{schema}.{table}"] = rows
    return state


current_lsn = current_wal_lsn


FAST = ReaderConfig(
    tables=TABLES, heartbeat_seconds=0.2, watermark_seconds=0.1, feedback_seconds=0.1, idle_wait_seconds=0.05
)


@contextmanager
def running_reader(dsn: str, sink: MemorySink, state_path, config: ReaderConfig = FAST, *, prepare=None):
    """A reader in a thread; on exit it is stopped and any error it raised is re-raised.
    `prepare(reader)` runs before it starts (e.g. to set test hooks)."""
    reader = Reader(dsn, sink, sink, FileStateStore(state_path), config)
    if prepare is not None:
        prepare(reader)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run():
        try:
            reader.run(stop)
        except BaseException as error:
            errors.append(error)
            reader.failure = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while not reader.streaming.wait(0.05):
            if not thread.is_alive():
                break
        yield reader
    finally:
        stop.set()
        thread.join(timeout=30)
    if errors:
        raise errors[0]


def wait_until_confirmed(reader: Reader, lsn: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while reader.metrics.confirmed_lsn < lsn:
        failure = getattr(reader, "failure", None)
        if failure is not None:
            raise AssertionError(f"the reader died: {failure!r}") from failure
        if time.monotonic() > deadline:
            raise AssertionError(f"reader confirmed {reader.metrics.confirmed_lsn:X}, not {lsn:X}")
        time.sleep(0.05)


__all__ = [
    "FAST",
    "MemorySink",
    "READER_SESSION",
    "apply_events",
    "current_lsn",
    "replace",
    "running_reader",
    "source_state",
    "wait_until_confirmed",
]


def state_diff(got: State, want: State, limit: int = 5) -> list[str]:
    """A few human-readable differences between two states (for assertion messages)."""
    out = []
    for table in sorted(set(got) | set(want)):
        a, b = got.get(table, {}), want.get(table, {})
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                if key not in a or key not in b:
                    out.append(f"{table} {key}: {'missing' if key not in a else 'extra'} in the stream")
                else:
                    cols = {
                        c: (a[key].get(c), b[key].get(c))
                        for c in set(a[key]) | set(b[key])
                        if a[key].get(c) != b[key].get(c)
                    }
                    out.append(f"{table} {key}: stream vs source {cols}")
                if len(out) >= limit:
                    return out
    return out


UNTIL = datetime(2024, 11, 15, 18, 0)


def _run_sql(dsn: str, *statements: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


def _catch_up(dsn, reader):
    wait_until_confirmed(reader, current_lsn(dsn))


@pytest.fixture(name="seeded")
def seeded_source(totesys_dsn):
    """A fresh totesys with 20 days of history up to UNTIL."""
    with Simulator(totesys_dsn, seed=11) as simulator:
        simulator.seed_history(20, until=UNTIL)
    return totesys_dsn
