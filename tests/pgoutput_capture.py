"""Test helper: capture the raw pgoutput messages a real server emits for some SQL.

    with PgoutputCapture(dsn) as cap:          # publication FOR ALL TABLES + pgoutput slot
        cap.execute("INSERT INTO t VALUES (%s)", (1,))
        payloads = cap.changes()               # list[bytes], one per pgoutput message

`changes()` reads (and consumes) the slot through `pg_logical_slot_get_binary_changes`;
`peek()` reads without consuming; `stream()` reads the same bytes over a real replication
connection (psycopg2's LogicalReplicationConnection), the way the reader does.
"""

from __future__ import annotations

import select
import time
import uuid
from collections.abc import Iterable

import psycopg2
from psycopg2 import sql
from psycopg2.extras import LogicalReplicationConnection

from cdc_reader.source import SESSION_SETTINGS


def _session_options() -> str:
    # libpq `options`: run the decoding session with the settings the reader uses.
    return " ".join(f"-c {name}={value.replace(' ', '')}" for name, value in SESSION_SETTINGS.items())


class PgoutputCapture:
    """A publication and a pgoutput logical slot on `dsn`, dropped again on exit."""

    def __init__(
        self,
        dsn: str,
        *,
        tables: Iterable[str] | None = None,
        messages: bool = True,
        extra_options: dict[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        token = uuid.uuid4().hex[:12]
        self.slot = f"capture_{token}"
        self.publication = f"capture_pub_{token}"
        self.tables = list(tables) if tables is not None else None
        self.options: dict[str, str] = {"proto_version": "1", "publication_names": self.publication}
        if messages:
            self.options["messages"] = "true"
        if extra_options:
            self.options.update(extra_options)
        self.conn = None  # runs the caller's SQL
        self._reader = None  # reads the slot, with the decoding session settings

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "PgoutputCapture":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        self.conn = psycopg2.connect(self.dsn)
        self.conn.autocommit = True
        self._reader = psycopg2.connect(self.dsn, options=_session_options())
        self._reader.autocommit = True
        with self.conn.cursor() as cur:
            if self.tables is None:
                cur.execute(sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(sql.Identifier(self.publication)))
            else:
                cur.execute(
                    sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                        sql.Identifier(self.publication), sql.SQL(", ").join(sql.SQL(t) for t in self.tables)
                    )
                )
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.conn is None:
            return
        try:
            with self.conn.cursor() as cur:
                if self.wait_until_slot_released():
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
                cur.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(self.publication)))
        finally:
            self.conn.close()
            self.conn = None

    def wait_until_slot_released(self, timeout: float = 10.0) -> bool:
        """Wait for a just-closed walsender to let go of the slot; False if the slot is gone."""
        deadline = time.monotonic() + timeout
        with self.conn.cursor() as cur:
            while True:
                cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
                row = cur.fetchone()
                if row is None:
                    return False
                if not row[0]:
                    return True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"slot {self.slot} still active after {timeout} s")
                time.sleep(0.02)

    # -- SQL -----------------------------------------------------------------------------
    def execute(self, statement: str, params=None) -> None:
        """Run one statement in its own (autocommit) transaction."""
        with self.conn.cursor() as cur:
            cur.execute(statement, params)

    def transaction(self, statements: Iterable[tuple[str, object]]) -> None:
        """Run several (statement, params) pairs in one transaction."""
        self.conn.autocommit = False
        try:
            with self.conn.cursor() as cur:
                for statement, params in statements:
                    cur.execute(statement, params)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            self.conn.autocommit = True

    def executemany(self, statement: str, rows: Iterable) -> None:
        """Run `statement` once per row, all in one transaction."""
        self.transaction((statement, row) for row in rows)

    # -- reading the slot ----------------------------------------------------------------
    def _read(self, function: str) -> list[bytes]:
        args: list[str] = []
        for name, value in self.options.items():
            args += [name, value]
        placeholders = ", ".join(["%s"] * len(args))
        with self._reader.cursor() as cur:
            cur.execute(f"SELECT data FROM {function}(%s, NULL, NULL, {placeholders})", [self.slot, *args])
            return [bytes(row[0]) for row in cur.fetchall()]

    def changes(self) -> list[bytes]:
        """Every message since the last `changes()`, consuming them from the slot."""
        return self._read("pg_logical_slot_get_binary_changes")

    def peek(self) -> list[bytes]:
        """Every message not yet consumed, leaving them in the slot."""
        return self._read("pg_logical_slot_peek_binary_changes")

    def stream(self, count: int, timeout: float = 20.0, **kwargs) -> list[bytes]:
        """The first `count` messages of the slot, over a streaming replication connection.

        Nothing is confirmed to the server, so the slot still holds them afterwards.
        """
        with self.replication_stream(**kwargs) as stream:
            return [stream.next(timeout) for _ in range(count)]

    def replication_stream(self, **kwargs) -> "ReplicationStream":
        """A replication connection on the slot; once closed, the slot is free again."""
        return ReplicationStream(self.dsn, self.slot, self.options, on_close=self.wait_until_slot_released, **kwargs)


class ReplicationStream:
    """A psycopg2 logical replication connection reading a slot's raw pgoutput messages."""

    def __init__(
        self, dsn: str, slot: str, options: dict[str, str], *, settings: dict[str, str] | None = None, on_close=None
    ) -> None:
        self._on_close = on_close
        session = _session_options()
        for name, value in (settings or {}).items():
            session += f" -c {name}={value}"
        self._conn = psycopg2.connect(dsn, connection_factory=LogicalReplicationConnection, options=session)
        self._cur = self._conn.cursor()
        self._cur.start_replication(slot_name=slot, decode=False, options=options)

    def __enter__(self) -> "ReplicationStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next(self, timeout: float = 20.0) -> bytes:
        """The next message's payload; TimeoutError when none arrives within `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._cur.read_message()
            if message is not None:
                return bytes(message.payload)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no replication message within {timeout} s")
            select.select([self._cur], [], [], min(remaining, 1.0))

    def close(self) -> None:
        if not self._conn.closed:
            self._conn.close()
            if self._on_close is not None:
                self._on_close()
