"""The source side of `totes verify`: one exported snapshot at an exact LSN, read in key ranges.

A temporary logical slot is created for the verification (dropped with its connection); its
consistent LSN L is the point compared everywhere, and its exported snapshot sees exactly the
transactions committed before L (as the bulk re-read's, cdc_reader/bulk_reread.py). Each
chunk is one `SELECT … WHERE key range` under that snapshot (index range scans, never one long
scan of the table), read as the bulk snapshot reads its chunks (cdc_reader/bulk_snapshot.py):
over ADBC, binary COPY decoded into Arrow in C++ and typed by `lake_columns`, so a source row
and its lake row have the same types before they are hashed, with no parsing in Python. A
chunk holding a value no lake type holds is read again as text COPY and typed by the lake's
own converters (`lake.arrow_types`), as the stream processor would meet it. Rows are read as the reader lets them leave (its personal-data
policy: masked and hashed values, no dropped column), so a source row compares with its lake row.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Iterator

import psycopg2.extras
import pyarrow as pa
from psycopg2 import sql

from cdc_reader.bulk_snapshot import _BATCH_SIZE_HINT, _NotInLake, _select_list, connect_arrow, lake_columns
from cdc_reader.copy_text import CopyBatches
from cdc_reader.catalog import read_table_schema
from cdc_reader.personal_data import NO_POLICY, Policy
from cdc_reader.source_setup import create_slot
from change_events import TableSchema
from lake.arrow_types import arrow_type, convert_column
from lake.delta_io import quote_identifier
from cdc_reader.source import commit_heartbeat, connect
from verify.core import KeyRange, plan_chunks

INTEGER_TYPES = ("smallint", "integer", "bigint")
COPY_BATCH_BYTES = 32 << 20


class SourceSnapshot:
    """The source as of one LSN, while the object is open (`with SourceSnapshot(dsn) as s`)."""

    def __init__(self, dsn: str, schema: str = "public", policy: Policy = NO_POLICY):
        self.dsn = dsn
        self.schema = schema
        self.policy = policy
        self.lsn = 0
        self._replication = None
        self._conn = None
        self._arrow = None
        self._arrow_cursor = None

    def __enter__(self) -> "SourceSnapshot":
        self._replication = connect(self.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
        slot = create_slot(self._replication.cursor(), f"totes_verify_{secrets.token_hex(4)}", temporary=True)
        self.lsn = slot.consistent_lsn
        self._conn = connect(self.dsn)
        self._conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with self._conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (slot.snapshot_name,))
            cur.execute("SET LOCAL enable_seqscan = off")  # a chunk is a key range: an index range scan
        self._arrow = connect_arrow(self.dsn)  # the chunks' reads, under the same snapshot
        self._arrow_cursor = self._arrow.cursor()
        self._arrow_cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        self._arrow_cursor.execute(f"SET TRANSACTION SNAPSHOT '{_snapshot_literal(slot.snapshot_name)}'")
        self._arrow_cursor.execute("SET LOCAL enable_seqscan = off")
        self._emit_commit_after()
        return self

    def _emit_commit_after(self) -> None:
        """A commit of our own after L (an empty heartbeat message, which the reader passes
        over), so the lake watermark passes L soon even when the source is idle."""
        commit_heartbeat(self.dsn)

    def __exit__(self, *exc) -> None:
        if self._arrow is not None:
            try:
                self._arrow_cursor.close()
                self._arrow.rollback()
            finally:
                self._arrow.close()
                self._arrow = None
        for conn in (self._conn, self._replication):
            if conn is not None and not conn.closed:
                conn.close()  # the temporary slot goes with its connection

    def table_schema(self, table: str) -> TableSchema:
        return self.policy.visible(read_table_schema(self._conn, self.schema, table))

    def plan(self, schema: TableSchema, chunk_rows: int) -> tuple[str, list[KeyRange]]:
        """The key column compared by and its ranges: the first key column when it is an
        integer, else one range (the table is read whole)."""
        key = schema.key_names[0] if schema.key_names else schema.column_names[0]
        column = next(c for c in schema.columns if c.name == key)
        if column.type_name not in INTEGER_TYPES:
            return key, [KeyRange(0, None, None)]
        namespace, _, table = schema.table.partition(".")
        with self._conn.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(
                sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(
                    k=sql.Identifier(key), t=sql.Identifier(namespace, table)
                )
            )
            low, high = cur.fetchone()
            cur.execute(
                "SELECT greatest(reltuples, 0) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (namespace, table),
            )
            estimated = float(cur.fetchone()[0] or 0)
        if low is not None and estimated == 0:  # never analysed: size it by its keys
            estimated = float(high - low + 1)
        return key, plan_chunks(low, high, estimated, chunk_rows)

    def read(self, schema: TableSchema, key: str, chunk: KeyRange) -> pa.Table:
        """The chunk's rows, typed as the lake types them."""
        namespace, _, table = schema.table.partition(".")
        where = chunk.sql(quote_identifier(key))
        query = (
            f"SELECT {_select_list(schema, as_text=False, scaled_decimals=True)} FROM "  # nosec B608 # quoted identifiers, int bounds
            f"{quote_identifier(namespace)}.{quote_identifier(table)} WHERE {where}"
        )
        rewrite = self.policy.rewrite(schema)
        cur = self._arrow_cursor
        batches: list[pa.RecordBatch] = []
        try:
            cur.adbc_statement.set_options(**{_BATCH_SIZE_HINT: str(COPY_BATCH_BYTES)})
            cur.execute(query)
            with cur.fetch_record_batch() as reader:
                for batch in reader:
                    leaving = batch if rewrite is None else rewrite.table(batch)  # masked, hashed
                    batches.append(
                        pa.RecordBatch.from_arrays(lake_columns(schema, leaving), names=list(schema.column_names))
                    )
        except _NotInLake:
            return self._read_as_text(schema, key, chunk)
        if not batches:
            return pa.Table.from_arrays(
                [pa.array([], arrow_type(c.type_name)) for c in schema.columns], names=list(schema.column_names)
            )
        return pa.Table.from_batches(batches)

    def _read_as_text(self, schema: TableSchema, key: str, chunk: KeyRange) -> pa.Table:
        """The chunk as text COPY, typed by the lake's converters: for values no lake type
        holds, which then fail as the stream processor's conversion fails."""
        namespace, _, table = schema.table.partition(".")
        query = sql.SQL("COPY (SELECT {c} FROM {t} WHERE {w}) TO STDOUT").format(
            c=sql.SQL(", ").join(map(sql.Identifier, schema.column_names)),
            t=sql.Identifier(namespace, table),
            w=sql.SQL(chunk.sql(sql.Identifier(key).as_string(self._conn))),
        )
        pieces: list[pa.Table] = []
        rewrite = self.policy.rewrite(schema)
        sink = CopyBatches(
            list(schema.column_names),
            COPY_BATCH_BYTES,
            lambda text, _size: pieces.append(text if rewrite is None else rewrite.table(text)),
        )
        with self._conn.cursor() as cur:  # type: ignore[union-attr]
            cur.copy_expert(query.as_string(self._conn), sink)
        sink.close()
        if not pieces:
            pieces = [pa.table({name: pa.array([], pa.string()) for name in schema.column_names})]
        return pa.concat_tables([_typed(schema, text) for text in pieces])

    def chunks(self, schema: TableSchema, chunk_rows: int) -> Iterator[tuple[str, KeyRange, pa.Table]]:
        """Every chunk of the table, in key order. The next chunk is read (COPY, parsed, typed:
        network waits and pyarrow release the GIL) while the caller compares this one: at
        most two chunks are held at a time."""
        key, plan = self.plan(schema, chunk_rows)
        ready: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def read_ahead() -> None:
            try:
                for chunk in plan:
                    item = (chunk, self.read(schema, key, chunk))
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ready.put((None, None))
            except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
                ready.put((error, None))

        reader = threading.Thread(target=read_ahead, name=f"verify-read-{schema.table}", daemon=True)
        reader.start()
        try:
            while True:
                chunk, rows = ready.get()
                if chunk is None:
                    return
                if isinstance(chunk, BaseException):
                    raise chunk
                yield key, chunk, rows
        finally:
            stop.set()
            reader.join()


def _typed(schema: TableSchema, text: pa.Table) -> pa.Table:
    return pa.Table.from_arrays(
        [convert_column(text.column(i), c.type_name, c.name) for i, c in enumerate(schema.columns)],
        names=list(schema.column_names),
    )


def _snapshot_literal(name: str) -> str:
    """An exported snapshot's name (like 00000003-0000001B-1) as a SQL literal: it is the
    server's own, but checked rather than trusted."""
    if not all(ch.isalnum() or ch == "-" for ch in name):
        raise ValueError(f"unexpected snapshot name {name!r}")
    return name
