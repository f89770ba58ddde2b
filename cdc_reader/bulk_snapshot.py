"""The initial snapshot on the bulk path: COPY under an exported snapshot → Arrow → the lake.

Every table is split into chunks of heap pages (CTID ranges; the last chunk of a table takes
every page after its start, so rows on pages added later are never missed). Up to
`connections` connections read chunks in parallel, each inside one REPEATABLE READ
transaction that imported the same exported snapshot (`SET TRANSACTION SNAPSHOT`), so every
chunk sees the database at the same point: the slot's consistent LSN. Each chunk is
COPY'd in text form (the same value text pgoutput sends), cut into batches of at most
`batch_bytes` of COPY output as it arrives, parsed by pyarrow's CSV reader into string
columns, converted to the lake's types, and written as one commit per lake table
(lake/snapshot_load.py). A reader holds at most one chunk per connection, whatever the size
of the table.

What a restart does after a kill: the exported snapshot died with the connection that held
it, but the slot did not, and it was never confirmed past its consistent LSN L1, so it still
holds every change since. The chunks the lake holds (at L1) stay. The others are read under
a new exported snapshot, from a temporary slot made for that (its consistent LSN L2 >= L1),
and stamped L2; then the reader streams from the slot from L1 as it would have. Every change
between L1 and L2 reaches the lake too: for rows of chunks read at L1 it is what happened to
them; for rows read at L2 it is older than the row and the LSN-guarded state merge keeps the
L2 row (the change log keeps both, in order). The snapshot counts as durable at L2, and the
reader puts no watermark below L2 on the stream, so the warehouse never sees a table half
read. A row that moved between chunks (an UPDATE between L1 and L2 writes a new tuple) may be
read in both, at L1 and at L2: the newer wins in the state, the change log holds its history.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg2 import sql

from cdc_reader.snapshot import _ESCAPE, _unescape_one
from change_events import TableSchema
from lake.arrow_types import arrow_type
from lake.dead_letters import DeadLetters
from lake.layout import LakeLayout
from lake.snapshot_load import SNAPSHOT_SHARD, TableLoad, convert_or_reject
from lake.writer import Rejected

log = logging.getLogger("totes.reader")

DEFAULT_CONNECTIONS = 4
DEFAULT_CHUNK_PAGES = 2048
"""16 MiB of heap per chunk (8 KiB pages): about 100,000 sales orders, a Parquet file of a
few MiB; a 1M-row table is ten chunks, enough to keep every connection busy. (ReaderConfig
carries the same defaults, so importing the reader does not load pyarrow.)"""
DEFAULT_BATCH_BYTES = 8 << 20

MAX_ROWS_PER_PAGE = 291
"""MaxHeapTuplesPerPage of 8 KiB pages: no chunk of N pages holds more than N times this."""
SEQ_BITS = 32
"""`seq` travels as 32 bits in the wire format (dead letters use it too)."""


def _row_bits(chunk_pages: int) -> int:
    return (chunk_pages * MAX_ROWS_PER_PAGE).bit_length()


def max_chunks(chunk_pages: int) -> int:
    return 1 << (SEQ_BITS - _row_bits(chunk_pages))


def snapshot_seq(chunk: int, chunk_pages: int) -> int:
    """The first `seq` of a chunk: the chunk number above the bits of a row's place in it, so
    every row of a table's snapshot has its own `(lsn, seq)` (the lake's event id, per table)."""
    return chunk << _row_bits(chunk_pages)


@dataclass(frozen=True)
class TablePlan:
    schema: TableSchema
    chunks: int


@dataclass
class BatchStats:
    """What the bulk path held (tests check that it does not grow with the table)."""
    batches: int = 0
    largest_batch_bytes: int = 0
    largest_batch_rows: int = 0
    largest_chunk_rows: int = 0
    rows: int = 0
    dead_lettered: int = 0


# -- COPY text → Arrow -----------------------------------------------------------------------

def parse_copy_text(data: bytes, names: list[str]) -> pa.Table:
    """Whole lines of COPY ... TO STDOUT (text format) as string columns; NULL as null."""
    labels = [f"c{i}" for i in range(len(names))]
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=labels, block_size=max(1 << 20, len(data) + 1)),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                          newlines_in_values=False, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={label: pa.string() for label in labels},
                                             null_values=["\\N"], strings_can_be_null=True,
                                             quoted_strings_can_be_null=False),
    )
    columns = []
    for column in table.columns:
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if pc.any(pc.match_substring(column, "\\")).as_py():
            column = pa.array([None if v is None else _ESCAPE.sub(_unescape_one, v) for v in column.to_pylist()],
                              pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=names)


class _CopyBatches:
    """A file-like sink for copy_expert: COPY output cut at line ends into batches of at
    most about `batch_bytes`, each handed to `on_batch` as string columns."""

    def __init__(self, names: list[str], batch_bytes: int, on_batch: Callable[[pa.Table, int], None]):
        self.names = names
        self.batch_bytes = batch_bytes
        self.on_batch = on_batch
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data) -> int:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self._parts.append(data)
        self._size += len(data)
        if self._size >= self.batch_bytes:
            buffer = b"".join(self._parts)
            end = buffer.rfind(b"\n") + 1
            self._parts, self._size = [buffer[end:]], len(buffer) - end
            if end:
                self.on_batch(parse_copy_text(buffer[:end], self.names), end)
        return len(data)

    def close(self) -> None:
        buffer = b"".join(self._parts)
        self._parts, self._size = [], 0
        if buffer and not buffer.endswith(b"\n"):
            raise ValueError("COPY output ended inside a row")
        if buffer:
            self.on_batch(parse_copy_text(buffer, self.names), len(buffer))


# -- planning --------------------------------------------------------------------------------

def plan_tables(conn, schemas: Iterable[TableSchema], chunk_pages: int) -> list[TablePlan]:
    """How many chunks of `chunk_pages` heap pages each table has now."""
    plans = []
    with conn.cursor() as cur:
        for schema in schemas:
            namespace, _, table = schema.table.partition(".")
            cur.execute("SELECT c.relkind, pg_relation_size(c.oid) / current_setting('block_size')::bigint "
                        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND c.relname = %s", (namespace, table))
            kind, pages = cur.fetchone()
            chunks = 1 if kind != "r" else max(1, -(-int(pages) // chunk_pages))
            if chunks > max_chunks(chunk_pages):
                raise ValueError(f"{schema.table} has {pages} pages, more than {max_chunks(chunk_pages)} chunks of "
                                 f"{chunk_pages}: give the snapshot larger chunks (snapshot_chunk_pages)")
            plans.append(TablePlan(schema, chunks))
    conn.commit()
    return plans


def _chunk_query(schema: TableSchema, chunk: int, chunks: int, chunk_pages: int) -> sql.Composed:
    namespace, _, table = schema.table.partition(".")
    columns = sql.SQL(", ").join(map(sql.Identifier, schema.column_names))
    source = sql.Identifier(namespace, table)
    if chunks == 1:
        return sql.SQL("COPY {} ({}) TO STDOUT").format(source, columns)
    low = sql.Literal(f"({chunk * chunk_pages},0)")
    where = sql.SQL("ctid >= {}::tid").format(low)
    if chunk < chunks - 1:
        where = sql.SQL("{} AND ctid < {}::tid").format(where, sql.Literal(f"({(chunk + 1) * chunk_pages},0)"))
    return sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT").format(columns, source, where)


# -- loading ---------------------------------------------------------------------------------

class BulkSnapshot:
    """Read the chunks of `plans` not yet in the lake under `snapshot_name`, stamp them
    `lsn`, and write them into the lake for run `run` (the slot's consistent LSN)."""

    def __init__(self, connect: Callable[[], object], layout: LakeLayout, run: int, plans: list[TablePlan], *,
                 chunk_pages: int = DEFAULT_CHUNK_PAGES, connections: int = DEFAULT_CONNECTIONS,
                 batch_bytes: int = DEFAULT_BATCH_BYTES,
                 progress: Callable[[str, int], None] | None = None,
                 today: Callable[[], date] | None = None, fresh_appends: bool = True):
        self.connect = connect
        self.layout = layout
        self.run = run
        self.plans = plans
        self.chunk_pages = chunk_pages
        self.connections = max(1, connections)
        self.batch_bytes = batch_bytes
        self.progress = progress
        self.today = today or (lambda: datetime.now(timezone.utc).date())
        self.stats = BatchStats()
        self.loads = [TableLoad(layout, plan.schema, run, today=self.today, fresh_appends=fresh_appends)
                      for plan in plans]
        """`fresh_appends=False`: always merge state chunks (a re-read, while the processors
        write the same state tables)."""
        self.chunk_hook: Callable[[str, int, str], None] | None = None
        """Tests: called as (table, chunk, step), step 'logged' between a chunk's change log
        and state commits, 'written' after both."""
        self._lock = threading.Lock()
        self._rows_by_table: dict[str, int] = {}

    def pending(self) -> list[tuple[int, int]]:
        """(table index, chunk) of every chunk the change log lacks, largest tables first.
        Chunks logged but missing from the state table are caught up here."""
        todo = []
        for index, (plan, load) in enumerate(zip(self.plans, self.loads)):
            if load.is_done():
                continue
            load.prepare([pa.field(c.name, arrow_type(c.type_name)) for c in plan.schema.columns])
            done = load.chunks_done(plan.chunks)
            for chunk, lsn in done.items():
                if chunk not in load.state_chunks(plan.chunks):
                    load.catch_up_state(chunk, lsn)
            todo += [(index, chunk) for chunk in range(plan.chunks) if chunk not in done]
        return sorted(todo, key=lambda item: (-self.plans[item[0]].chunks, item))

    def run_under(self, snapshot_name: str, lsn: int) -> int:
        """Write every pending chunk, stamped `lsn`; then mark each table done. Returns the
        number of chunks written. The exporting connection must stay idle until it returns."""
        todo = self.pending()
        work: queue.SimpleQueue = queue.SimpleQueue()
        for item in todo:
            work.put(item)
        failures: list[BaseException] = []
        stop = threading.Event()

        def worker() -> None:
            conn = None
            try:
                conn = self.connect()
                conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
                with conn.cursor() as cur:
                    cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
                    while not stop.is_set():
                        try:
                            index, chunk = work.get_nowait()
                        except queue.Empty:
                            return
                        self._read_chunk(conn, cur, index, chunk, lsn)
            except BaseException as error:  # noqa: BLE001 - re-raised by the caller
                failures.append(error)
                stop.set()
            finally:
                if conn is not None and not conn.closed:
                    conn.rollback()
                    conn.close()

        threads = [threading.Thread(target=worker, name=f"snapshot-{i}", daemon=True)
                   for i in range(min(self.connections, len(todo)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        for load in self.loads:
            load.mark_done()
        return len(todo)

    def _hook(self, table: str, chunk: int, step: str) -> None:
        if self.chunk_hook is not None:
            self.chunk_hook(table, chunk, step)

    def _read_chunk(self, conn, cur, index: int, chunk: int, lsn: int) -> None:
        plan, load = self.plans[index], self.loads[index]
        schema = plan.schema
        base = snapshot_seq(chunk, self.chunk_pages)
        pieces: list[pa.Table] = []
        rejected = []
        reasons: list[str] = []
        count = 0
        written_on = self.today()

        def on_batch(text: pa.Table, size: int) -> None:
            nonlocal count
            rows, bad, reason = convert_or_reject(schema, text, lsn, base + count, chunk, written_on)
            count += text.num_rows
            pieces.append(rows)
            rejected.extend(bad)
            if reason:
                reasons.append(reason)
            with self._lock:
                stats = self.stats
                stats.batches += 1
                stats.largest_batch_bytes = max(stats.largest_batch_bytes, size)
                stats.largest_batch_rows = max(stats.largest_batch_rows, text.num_rows)

        sink = _CopyBatches(list(schema.column_names), self.batch_bytes, on_batch)
        cur.copy_expert(_chunk_query(schema, chunk, plan.chunks, self.chunk_pages).as_string(conn), sink)
        sink.close()
        if rejected:
            # Values the lake cannot hold: those rows go to the dead letters with the reason,
            # the rest of the chunk goes on (as the stream processor does with such events).
            DeadLetters(self.layout).add_rejected(Rejected(schema.table, rejected, _Reason(reasons[0])),
                                                  SNAPSHOT_SHARD, f"chunk {self.run}/{index}/{chunk}")
            log.warning("%s: %d snapshot rows set aside in the dead letters: %s", schema.table, len(rejected), reasons[0])
        rows = pa.concat_tables(pieces) if len(pieces) > 1 else (pieces[0] if pieces else None)
        if rows is None:
            rows = _empty_rows(schema, lsn, chunk, written_on)
        load.write_log(chunk, lsn, rows)
        self._hook(schema.table, chunk, "logged")
        load.write_state(chunk, lsn, rows)
        with self._lock:
            self.stats.rows += rows.num_rows
            self.stats.dead_lettered += len(rejected)
            self.stats.largest_chunk_rows = max(self.stats.largest_chunk_rows, rows.num_rows)
            total = self._rows_by_table[schema.table] = self._rows_by_table.get(schema.table, 0) + rows.num_rows
            if self.progress is not None:
                self.progress(schema.table, total)
        self._hook(schema.table, chunk, "written")


class _Reason(Exception):
    """Why rows were set aside (the first conversion error's message)."""


def _empty_rows(schema: TableSchema, lsn: int, chunk: int, written_on: date) -> pa.Table:
    text = pa.table({name: pa.array([], pa.string()) for name in schema.column_names})
    rows, _, _ = convert_or_reject(schema, text, lsn, 0, chunk, written_on)
    return rows
