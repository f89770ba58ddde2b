"""Re-reading a table (`--resnapshot TABLE`, or after a column type change) on the bulk path,
while streaming goes on.

The table is read as the initial snapshot is (bulk_snapshot.py): COPY chunks under an
exported snapshot, straight into the lake as `op='r'` rows. The snapshot is exported by a
temporary slot made for it (dropped when its connection closes), at that slot's
consistent LSN L_r, as a restart after a kill reads the chunks the lake lacks. Nothing of
the re-read goes through the stream.

Why this is exact: every row is stamped L_r, the state it had at L_r. The stream keeps
flowing meanwhile; its changes committed before L_r are older than the re-read rows and
the LSN-guarded state merge never lets them overwrite one (the change log keeps both, in
order); its changes after L_r are newer and win. A table's re-read chunks are always
merged, never appended, because the processors write the same state table meanwhile.

The reader puts no watermark at or above L_r on the stream until the whole table is
written (`allows_watermark`), so neither the warehouse nor the slot's confirmation passes
L_r with the table half read. (psycopg2 moves the flush position it reports on by itself, to
a keepalive's WAL end, whenever the last message it received is confirmed: so a fence message
precedes the temporary slot, and the reader leaves the last message unconfirmed meanwhile.)
A reader killed during the re-read has confirmed nothing past L_r; the re-read is in its
state file (lifecycle.Reread), so run again, with the `--resnapshot` or without, it reads
the table once more at a new L_r (the chunks of the first attempt stay in the lake, older
and harmless). A reader told to stop during a re-read finishes it first (it runs at the
speed of COPY).

After a column type change (schema_changes.py) the lake's columns are first widened to
what holds the old values and the new ones, as the change path widens them
(`lake.schemas.columns_to_widen`), and the re-read rows are typed as the lake now types
the column (`lake_typed`), so they land in the same columns the stream's events do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

import psycopg2.extras
import pyarrow as pa

from cdc_reader.bulk_settings import BulkSettings
from cdc_reader.source import HEARTBEAT_PREFIX
from cdc_reader.source_setup import create_slot
from change_events import TableSchema, format_lsn
from lake.arrow_types import arrow_type
from lake.changelog import ChangeLog
from lake.delta_io import retry_on_conflict
from lake.layout import LakeLayout
from lake.schemas import columns_to_widen, data_columns, lake_schema, rewrite_with_types, source_fields
from lake.state import StateTable

log = logging.getLogger("totes.reader")


class BulkReread:
    """One table's bulk re-read, in a thread of its own. The streaming loop asks `finished`
    and `allows_watermark`; `join` waits for it and raises what it raised."""

    def __init__(
        self,
        schema: TableSchema,
        connect: Callable[..., object],
        layout: LakeLayout,
        slot: str,
        *,
        dsn: str,
        bulk: BulkSettings,
        chunk_hook: Callable[[str, int, str], None] | None = None,
    ):
        self.schema = schema
        self._connect = connect
        self._dsn = dsn
        """The chunks are read over ADBC connections of their own (bulk_snapshot.connect_arrow)."""
        self._layout = layout
        self._slot = f"{slot}_reread"
        self._bulk = bulk
        self._chunk_hook = chunk_hook
        self.lsn: int | None = None
        """L_r, once the temporary slot exists."""
        self.rows = 0
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reread-{schema.table}", daemon=True)

    def start(self) -> "BulkReread":
        self._thread.start()
        return self

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def allows_watermark(self, lsn: int) -> bool:
        """A watermark below L_r tells nothing about the re-read; one at or above it waits
        until every chunk is written (and while L_r is not known yet, every one waits)."""
        if self._done.is_set():
            return self._error is None
        return self.lsn is not None and lsn < self.lsn

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        from cdc_reader.bulk_snapshot import plan_tables  # pyarrow and deltalake: only when used

        try:
            conn = self._connect()
            try:
                plans = plan_tables(conn, [lake_typed(self._layout, self.schema)], self._bulk.chunk_pages)
                _fence(conn)
            finally:
                conn.close()
            replication = self._connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
            try:
                temporary = create_slot(replication.cursor(), self._slot, temporary=True)
                self.lsn = temporary.consistent_lsn
                log.info(
                    "re-reading %s straight into the lake at %s while streaming",
                    self.schema.table,
                    format_lsn(self.lsn),
                )
                bulk = self._bulk.snapshot(self._dsn, self._layout, self.lsn, plans, fresh_appends=False)
                bulk.chunk_hook = self._chunk_hook
                bulk.run_under(temporary.snapshot_name, self.lsn)
                self.rows = bulk.stats.rows
            finally:
                replication.close()  # the temporary slot goes with its connection
            log.info(
                "re-read %s: %d rows written to the lake at %s", self.schema.table, self.rows, format_lsn(self.lsn)
            )
        except BaseException as error:  # noqa: BLE001 - raised again by `join`
            self._error = error
        finally:
            self._done.set()


def _fence(conn) -> None:
    """Commit a heartbeat before the temporary slot exists: the reader's stream then gets a
    message before any keepalive past L_r. psycopg2 moves the flush position it reports on to a
    keepalive's WAL end whenever the last message it received is confirmed; the reader keeps
    the last one unconfirmed during a bulk re-read, so the slot stays below L_r."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_logical_emit_message(true, %s, '')", (HEARTBEAT_PREFIX,))
    conn.commit()


def _type_name(type_: pa.DataType) -> str:
    """A PostgreSQL type name whose lake type (`arrow_type`) is `type_` (every type
    `common_type` can give)."""
    if pa.types.is_decimal(type_):
        return f"numeric({type_.precision},{type_.scale})"
    if pa.types.is_timestamp(type_):
        return "timestamp with time zone" if type_.tz else "timestamp without time zone"
    names = {
        pa.int16(): "smallint",
        pa.int32(): "integer",
        pa.int64(): "bigint",
        pa.float32(): "real",
        pa.float64(): "double precision",
        pa.bool_(): "boolean",
        pa.date32(): "date",
        pa.binary(): "bytea",
    }
    return names.get(type_, "text")


def lake_typed(layout: LakeLayout, schema: TableSchema) -> TableSchema:
    """`schema` with each column typed as the lake stores it, after widening the lake's
    tables (change log, then state) to hold both their values and `schema`'s: COPY's text
    of a value converts to the lake's type as exactly as to the source's (the lake's type
    holds every value of both)."""
    log, state = ChangeLog(layout, schema.table), StateTable(layout, schema.table)

    def widen_log() -> pa.Schema | None:
        log.refresh()
        widen = columns_to_widen(schema.table, lake_schema(log.delta), source_fields(schema))
        if widen:
            rewrite_with_types(log.delta, widen, f"changes/{schema.table}")
        return lake_schema(log.delta)

    typed = retry_on_conflict(widen_log)
    if typed is None:
        return schema

    def widen_state() -> None:
        current = lake_schema(state.refresh())
        if current is not None:
            widen = {
                n: typed.field(n).type
                for n in data_columns(current)
                if n in typed.names and current.field(n).type != typed.field(n).type
            }
            if widen:
                rewrite_with_types(state.delta, widen, f"tables/{schema.table}")

    retry_on_conflict(widen_state)
    columns = tuple(
        replace(c, type_name=_type_name(typed.field(c.name).type))
        if c.name in typed.names and typed.field(c.name).type != arrow_type(c.type_name)
        else c
        for c in schema.columns
    )
    return replace(schema, columns=columns)
