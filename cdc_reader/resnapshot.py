"""Re-reading one table while streaming continues (the watermark method of DBLog, as
Debezium's incremental snapshots do it).

The table is read in primary-key chunks. Each chunk is bracketed in the WAL by a low and a
high watermark message written by the reader itself:

    low watermark  ->  SELECT the next chunk  ->  high watermark

The stream delivers every change committed between the two. A row of the chunk that such a
change touched may be older than the change, so it is dropped; every other row of the chunk
is exactly the row's state at the high watermark and is emitted there as an `op='r'` event.
Downstream, (lsn, seq) ordering then never lets the re-read row overwrite a newer change,
and never loses one. The stream is not paused at any point; one chunk is held in memory.

This is the path where the reader has no lake (`--durability kinesis`), and for the
re-reads that make up for a cut-off snapshot through the sink; with a lake, a table read
again (`--resnapshot`, or after a type change) goes straight into it instead (bulk_reread.py).
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from psycopg2 import sql

from cdc_reader.assembler import LogicalMessage
from cdc_reader.snapshot import parse_copy_line
from change_events import ChangeEvent, Op, TableSchema

log = logging.getLogger("totes.reader")

WATERMARK_PREFIX = "totes-resnapshot"

Key = tuple


@dataclass
class _Chunk:
    id: str
    rows: dict[Key, list[str | None]]
    complete_table: bool
    open: bool = False
    changed: set[Key] = field(default_factory=set)
    truncated: bool = False


class IncrementalSnapshot:
    """One table's re-read, chunk by chunk. The reader calls `read_chunk` when `wants_chunk`,
    shows it every output of the stream through `observe`, and emits what that returns."""

    def __init__(self, schema: TableSchema, chunk_rows: int = 5_000, on_window: Callable[[], None] | None = None):
        if not schema.key_names:
            raise ValueError(f"{schema.table} has no primary key to read it in chunks by")
        self.schema = schema
        self.chunk_rows = chunk_rows
        self.rows_emitted = 0
        self.done = False
        self._last_key: Key | None = None
        self._chunk: _Chunk | None = None
        self._ids = itertools.count()
        # Unique across runs and processes: a slot that was not confirmed sends an earlier
        # run's watermarks again, and they must never close one of this run's chunks.
        self._run = secrets.token_hex(8)
        self._on_window = on_window  # tests: runs between the SELECT and the high watermark
        names = schema.column_names
        self._key_positions = [names.index(k) for k in schema.key_names]

    @property
    def wants_chunk(self) -> bool:
        return not self.done and self._chunk is None

    # -- reading -------------------------------------------------------------------------
    def read_chunk(self, conn) -> None:
        """Low watermark, the next chunk, high watermark: three short transactions."""
        chunk_id = f"{self._run}-{next(self._ids)}"
        self._mark(conn, chunk_id, "low")
        rows = self._select(conn)
        if self._on_window is not None:
            self._on_window()
        self._mark(conn, chunk_id, "high")
        self._chunk = _Chunk(
            chunk_id,
            {tuple(row[i] for i in self._key_positions): row for row in rows},
            complete_table=len(rows) < self.chunk_rows,
        )
        if rows:
            self._last_key = tuple(rows[-1][i] for i in self._key_positions)

    def _mark(self, conn, chunk_id: str, mark: str) -> None:
        content = json.dumps({"table": self.schema.table, "chunk": chunk_id, "mark": mark})
        with conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(true, %s, %s)", (WATERMARK_PREFIX, content))
        conn.commit()

    def _select(self, conn) -> list[list[str | None]]:
        namespace, _, table = self.schema.table.partition(".")
        keys = sql.SQL(", ").join(map(sql.Identifier, self.schema.key_names))
        after = sql.SQL("")
        params: list = []
        if self._last_key is not None:
            after = sql.SQL("WHERE ({}) > ({})").format(
                keys, sql.SQL(", ").join(sql.Placeholder() * len(self._last_key))
            )
            params = list(self._last_key)
        query = sql.SQL("SELECT {} FROM {} {} ORDER BY {} LIMIT {}").format(
            sql.SQL(", ").join(map(sql.Identifier, self.schema.column_names)),
            sql.Identifier(namespace, table),
            after,
            keys,
            sql.Literal(self.chunk_rows),
        )
        with conn.cursor() as cur:
            # COPY gives each value in its output-function text, exactly as pgoutput sends it.
            copy = sql.SQL("COPY ({}) TO STDOUT").format(sql.SQL(cur.mogrify(query.as_string(conn), params).decode()))
            lines: list[bytes] = []

            class _Sink:
                def write(self, data):
                    lines.append(data if isinstance(data, bytes) else data.encode())

            cur.copy_expert(copy.as_string(conn), _Sink())
        conn.commit()
        text = b"".join(lines).decode("utf-8")
        return [parse_copy_line(line) for line in text.split("\n")[:-1]]

    # -- the stream ----------------------------------------------------------------------
    def observe(self, out) -> list[list[str | None]]:
        """Rows to emit now (at the high watermark), else []."""
        chunk = self._chunk
        if chunk is None:
            return []
        if isinstance(out, LogicalMessage):
            if out.prefix != WATERMARK_PREFIX:
                return []
            mark = json.loads(out.content)
            if mark.get("chunk") != chunk.id:
                return []
            if mark["mark"] == "low":
                chunk.open = True
                return []
            self._chunk = None
            if chunk.complete_table:
                self.done = True
            if chunk.truncated:
                return []
            rows = [row for key, row in chunk.rows.items() if key not in chunk.changed]
            self.rows_emitted += len(rows)
            return rows
        if isinstance(out, ChangeEvent) and chunk.open and out.table == self.schema.table:
            if out.op is Op.TRUNCATE:
                chunk.truncated = True
            else:
                chunk.changed.add(tuple(out.key.get(k) for k in self.schema.key_names))
                if out.before:  # the key itself may have changed
                    chunk.changed.add(tuple(out.before.get(k) for k in self.schema.key_names))
        return []
