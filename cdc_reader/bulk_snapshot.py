"""The initial snapshot on the bulk path: COPY under an exported snapshot → Arrow → the lake.

Every table is split into chunks of heap pages (CTID ranges; the last chunk of a table takes
every page after its start, so rows on pages added later are never missed). Up to
`connections` connections read chunks in parallel, each inside one REPEATABLE READ
transaction that imported the same exported snapshot (`SET TRANSACTION SNAPSHOT`), so every
chunk sees the database at the same point: the slot's consistent LSN. Each chunk is read
over ADBC (adbc-driver-postgresql: libpq and binary COPY decoded straight into Arrow record
batches of about `batch_bytes`, in C++ without the GIL, so the connections' threads run on
every core). Most columns arrive as the lake's values already; the others are selected as
the server's text output (`format('%s', c)`, the text pgoutput sends) and converted as the
stream processor converts it (`reads_natively`). Each batch, typed, goes straight into the
chunk's change log file and state file (lake/snapshot_load.py `ChunkSink`), then one commit
per lake table records the chunk. A reader holds a batch or two per connection, whatever the
size of the chunk or the table (a chunk whole only where its state must be merged).

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

Why one file (about 470 lines): the chunk plan, the ADBC binary read under the exported
snapshot and its text fallback share one transaction per chunk and its failure handling;
splitting them would pass that transaction across modules. The text parser is apart
(copy_text.py), the lake's side too (lake/snapshot_load.py).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
from psycopg2.extensions import make_dsn

from cdc_reader.bulk_settings import DEFAULT_BATCH_BYTES, DEFAULT_CHUNK_PAGES, DEFAULT_CONNECTIONS
from cdc_reader.personal_data import NO_POLICY, Policy
from change_events import TableSchema
from change_events.errors import classify_connect_failure
from change_events.metrics import Counters
from lake.arrow_types import arrow_type, convert_column
from lake.delta_io import quote_identifier
from lake.errors import ValueConversionError
from lake.dead_letters import DeadLetters
from lake.layout import LakeLayout
from lake.snapshot_load import SNAPSHOT_SHARD, ChunkSink, TableLoad, convert_or_reject, typed_changelog_rows
from lake.writer import Rejected

log = logging.getLogger("totes.reader")

_BATCH_SIZE_HINT = "adbc.postgresql.batch_size_hint_bytes"

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
class BatchStats(Counters):
    """What the bulk path read and held (tests check that what it held does not grow with
    the table)."""

    batches: int = 0
    """Arrow record batches read from COPY."""
    largest_batch_bytes: int = 0
    """The largest batch read, in Arrow bytes (about `batch_bytes`)."""
    largest_batch_rows: int = 0
    """The most rows in one batch read."""
    largest_chunk_rows: int = 0
    """The most rows in one chunk written."""
    largest_held_rows: int = 0
    """The most rows of one chunk kept in memory until its commits: none when the chunk is
    streamed into both tables, at most a chunk when its state must be merged."""
    rows: int = 0
    """Rows written to the lake (not the dead-lettered ones)."""
    dead_lettered: int = 0
    """Rows no lake type holds, set aside in the dead letters."""


# -- binary COPY → Arrow ----------------------------------------------------------------------

_NATIVE_STRINGS = re.compile(r"(text|character varying|character)(\(\d+\))?")
_INTEGER_TYPES = ("smallint", "integer", "bigint")
_TIMESTAMP_RANGE = (-62135596800000000, 253402300799999999)
"""0001-01-01 to 9999-12-31 23:59:59.999999 in microseconds of the Unix epoch: what the
text path (and so the stream processor) takes; 'infinity' and BC values lie outside."""
_DATE_RANGE = (-719162, 2932896)


def reads_natively(type_name: str) -> bool:
    """Whether the column is read in binary: ADBC's Arrow value is the lake's bit for bit
    (integers, floats, bool, dates, timestamps, bytea, text), or, for numeric(p,s), exact
    digits that the same cast as the text path's makes the same decimal. Other columns are
    read as the server's text output and converted as the stream processor converts
    pgoutput's text (unconstrained numeric, oid, json, arrays, enums...)."""
    target = arrow_type(type_name)
    name = type_name.strip()
    if pa.types.is_integer(target):
        return name in _INTEGER_TYPES
    if pa.types.is_string(target):
        return _NATIVE_STRINGS.fullmatch(name) is not None
    return True  # floats, bool, date, timestamps, bytea, numeric(p,s)


_NOT_A_DECIMAL = (1 << 63) - 1
"""What a scaled numeric(p,s) column sends for 'NaN': beyond every p <= 18 digit value."""


def _scaled_decimal(type_name: str) -> pa.Decimal128Type | None:
    """numeric(p,s) with p <= 18: its values times 10**s fit a bigint exactly."""
    target = arrow_type(type_name)
    if pa.types.is_decimal(target) and target.precision <= 18 and reads_natively(type_name):
        return target
    return None


def _select_list(schema: TableSchema, as_text: bool, scaled_decimals: bool = False) -> str:
    """format('%s', c) is the type's output function: the text pgoutput sends (NULL stays NULL).
    With `scaled_decimals`, a numeric(p <= 18, s) travels as the bigint c * 10**s: decoding
    numeric's binary digits costs ADBC three times a bigint's (`lake_columns` makes it the
    decimal again, exactly)."""
    out = []
    for column in schema.columns:
        name = quote_identifier(column.name)
        scaled = _scaled_decimal(column.type_name) if scaled_decimals and not as_text else None
        if as_text or not reads_natively(column.type_name):
            out.append(f"CASE WHEN {name} IS NULL THEN NULL ELSE format('%s', {name}) END AS {name}")
        elif scaled is not None:
            out.append(
                f"CASE WHEN {name} = 'NaN' THEN {_NOT_A_DECIMAL} "
                f"ELSE ({name} * {10**scaled.scale})::bigint END AS {name}"
            )
        else:
            out.append(name)
    return ", ".join(out)


def _decimal_from_scaled(values: pa.Array, target: pa.Decimal128Type, name: str) -> pa.Array:
    """The bigints c * 10**s (`_select_list`) as decimal128(p, s): as decimal128(19, 0) they are
    the same 128-bit integers, so a view gives them their scale (no per-value work)."""
    widest = pc.max(pc.abs(values)).as_py()
    if widest is not None and widest >= 10**target.precision:  # 'NaN' (or a value too wide)
        raise _NotInLake(name)
    return pc.cast(values, pa.decimal128(19, 0)).view(target)


def _chunk_query(schema: TableSchema, chunk: int, chunks: int, chunk_pages: int, as_text: bool = False) -> str:
    namespace, _, table = schema.table.partition(".")
    source = f"{quote_identifier(namespace)}.{quote_identifier(table)}"
    query = f"SELECT {_select_list(schema, as_text)} FROM {source}"  # nosec B608 # quoted identifiers, int page numbers
    if chunks == 1:
        return query
    query += f" WHERE ctid >= '({chunk * chunk_pages},0)'::tid"
    if chunk < chunks - 1:
        query += f" AND ctid < '({(chunk + 1) * chunk_pages},0)'::tid"
    return query


class _NotInLake(Exception):
    """A value no lake type holds: the chunk is read again as text, row by row reasons."""


def _in_range(values: pa.Array, as_int: pa.DataType, bounds: tuple[int, int]) -> bool:
    numbers = pc.cast(values, as_int)
    low, high = pc.min_max(numbers).values()
    return low.as_py() is None or (low.as_py() >= bounds[0] and high.as_py() <= bounds[1])


def lake_columns(schema: TableSchema, batch: pa.RecordBatch) -> list[pa.Array]:
    """A batch of the chunk query (`_chunk_query`) as the lake's typed columns, vectorised.
    Raises _NotInLake when a value does not fit (the text path then sets those rows aside)."""
    columns = []
    for i, column in enumerate(schema.columns):
        values = batch.column(i)
        target = arrow_type(column.type_name)
        if isinstance(values.type, pa.ExtensionType):  # numeric: ADBC's digits as a string
            values = values.storage
        if pa.types.is_decimal(target) and pa.types.is_int64(values.type):  # scaled on the server
            columns.append(_decimal_from_scaled(values, target, column.name))
            continue
        if not reads_natively(column.type_name) or pa.types.is_decimal(target):
            try:
                columns.append(convert_column(values, column.type_name, column.name))
            except ValueConversionError as error:
                raise _NotInLake(str(error)) from None
            continue
        if pa.types.is_timestamp(target) and not _in_range(values, pa.int64(), _TIMESTAMP_RANGE):
            raise _NotInLake(column.name)
        if pa.types.is_date(target) and not _in_range(values, pa.int32(), _DATE_RANGE):
            raise _NotInLake(column.name)
        columns.append(values if values.type == target else pc.cast(values, target))
    return columns


def connect_arrow(dsn: str):
    """An ADBC connection to the source (libpq in C++: binary COPY decoded straight into Arrow,
    without the GIL), with the reader's session settings; failures as SourceConnectionError."""
    import adbc_driver_postgresql.dbapi as adbc

    from cdc_reader.reader import session_options
    from cdc_reader.source import (
        CONNECT_TIMEOUT_SECONDS,
        SourceConnectionError,
        explain,
        keepalive_params,
        remember_secrets,
    )

    options = session_options()
    params = {
        "connect_timeout": str(CONNECT_TIMEOUT_SECONDS),
        "application_name": "totes-reader",
        **keepalive_params(dsn, options),
    }
    remember_secrets(dsn)
    try:
        return adbc.connect(make_dsn(dsn, **params), autocommit=False)
    except Exception as error:  # noqa: BLE001 - ADBC's errors have no common base worth naming
        raise SourceConnectionError(explain(dsn, error), kind=classify_connect_failure(error)) from None


# -- planning --------------------------------------------------------------------------------


def plan_tables(conn, schemas: Iterable[TableSchema], chunk_pages: int) -> list[TablePlan]:
    """How many chunks of `chunk_pages` heap pages each table has now."""
    plans = []
    with conn.cursor() as cur:
        for schema in schemas:
            namespace, _, table = schema.table.partition(".")
            cur.execute(
                "SELECT c.relkind, pg_relation_size(c.oid) / current_setting('block_size')::bigint "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (namespace, table),
            )
            kind, pages = cur.fetchone()
            chunks = 1 if kind != "r" else max(1, -(-int(pages) // chunk_pages))
            if chunks > max_chunks(chunk_pages):
                raise ValueError(
                    f"{schema.table} has {pages} pages, more than {max_chunks(chunk_pages)} chunks of "
                    f"{chunk_pages}: give the snapshot larger chunks (snapshot_chunk_pages)"
                )
            plans.append(TablePlan(schema, chunks))
    conn.commit()
    return plans


# -- loading ---------------------------------------------------------------------------------


class BulkSnapshot:
    """Read the chunks of `plans` not yet in the lake under `snapshot_name`, stamp them
    `lsn`, and write them into the lake for run `run` (the slot's consistent LSN)."""

    def __init__(
        self,
        dsn: str,
        layout: LakeLayout,
        run: int,
        plans: list[TablePlan],
        *,
        chunk_pages: int = DEFAULT_CHUNK_PAGES,
        connections: int = DEFAULT_CONNECTIONS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        progress: Callable[[str, int], None] | None = None,
        today: Callable[[], date] | None = None,
        fresh_appends: bool = True,
        policy: Policy = NO_POLICY,
    ):
        plans = [TablePlan(policy.visible(p.schema), p.chunks) for p in plans]  # dropped columns: never read
        self.rewrites = [policy.rewrite(p.schema) for p in plans]
        """Personal data masked and hashed on each batch, before it is converted (personal_data.py)"""
        self.dsn = dsn
        self.layout = layout
        self.run = run
        self.plans = plans
        self.chunk_pages = chunk_pages
        self.connections = max(1, connections)
        self.batch_bytes = batch_bytes
        self.progress = progress
        self.today = today or (lambda: datetime.now(timezone.utc).date())
        self.stats = BatchStats()
        self.loads = [
            TableLoad(layout, plan.schema, run, today=self.today, fresh_appends=fresh_appends) for plan in plans
        ]
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
        snapshot = "'" + snapshot_name.replace("'", "''") + "'"

        def worker() -> None:
            conn = None
            try:
                conn = connect_arrow(self.dsn)
                with conn.cursor() as cur:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    cur.execute(f"SET TRANSACTION SNAPSHOT {snapshot}")
                    while not stop.is_set():
                        try:
                            index, chunk = work.get_nowait()
                        except queue.Empty:
                            return
                        self._read_chunk(cur, index, chunk, lsn)
            except BaseException as error:  # noqa: BLE001 - re-raised by the caller
                failures.append(error)
                stop.set()
            finally:
                if conn is not None:
                    try:
                        conn.rollback()
                    finally:
                        conn.close()

        threads = [
            threading.Thread(target=worker, name=f"snapshot-{i}", daemon=True)
            for i in range(min(self.connections, len(todo)))
        ]
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

    def _batches(self, cur, query: str):
        """The query's rows as record batches of about `batch_bytes` (binary COPY underneath),
        each counted in the stats."""
        cur.adbc_statement.set_options(**{_BATCH_SIZE_HINT: str(self.batch_bytes)})
        cur.execute(query)
        with cur.fetch_record_batch() as reader:  # closed (the COPY ended) even when left mid-way
            for batch in reader:
                with self._lock:
                    stats = self.stats
                    stats.batches += 1
                    stats.largest_batch_bytes = max(stats.largest_batch_bytes, batch.nbytes)
                    stats.largest_batch_rows = max(stats.largest_batch_rows, batch.num_rows)
                yield batch

    def _read_chunk(self, cur, index: int, chunk: int, lsn: int) -> None:
        """One chunk, batch by batch into its lake files (lake.snapshot_load.ChunkSink), then
        its change log commit and its state commit."""
        plan, load = self.plans[index], self.loads[index]
        schema = plan.schema
        base = snapshot_seq(chunk, self.chunk_pages)
        written_on = self.today()
        rejected: list = []
        reasons: list[str] = []
        sink = ChunkSink(load, chunk, lsn, written_on)
        rewrite = self.rewrites[index]
        leaving = (lambda batch: batch) if rewrite is None else rewrite.table  # personal data: masked, hashed
        try:
            for batch in self._batches(cur, _chunk_query(schema, chunk, plan.chunks, self.chunk_pages)):
                sink.add(
                    typed_changelog_rows(
                        schema, lake_columns(schema, leaving(batch)), lsn, base + sink.rows, chunk, written_on
                    )
                )
        except _NotInLake:
            # Rare: values no lake type holds. The chunk again, as text, so that those rows go
            # to the dead letters with the reason (as the stream processor does with such
            # events) and the rest of the chunk goes on. Rows keep their place numbers.
            sink.discard()
            sink = ChunkSink(load, chunk, lsn, written_on)
            count = 0
            for batch in self._batches(cur, _chunk_query(schema, chunk, plan.chunks, self.chunk_pages, as_text=True)):
                rows, bad, reason = convert_or_reject(
                    schema, pa.Table.from_batches([leaving(batch)]), lsn, base + count, chunk, written_on
                )
                count += batch.num_rows
                sink.add(rows)
                rejected.extend(bad)
                if reason:
                    reasons.append(reason)
        if rejected:
            DeadLetters(self.layout).add_rejected(
                Rejected(schema.table, rejected, _Reason(reasons[0])),
                SNAPSHOT_SHARD,
                f"chunk {self.run}/{index}/{chunk}",
            )
            log.warning(
                "%s: %d snapshot rows set aside in the dead letters: %s", schema.table, len(rejected), reasons[0]
            )
        sink.commit_log()
        self._hook(schema.table, chunk, "logged")
        sink.commit_state()
        with self._lock:
            self.stats.rows += sink.rows
            self.stats.dead_lettered += len(rejected)
            self.stats.largest_chunk_rows = max(self.stats.largest_chunk_rows, sink.rows)
            self.stats.largest_held_rows = max(self.stats.largest_held_rows, sink.held_rows)
            total = self._rows_by_table[schema.table] = self._rows_by_table.get(schema.table, 0) + sink.rows
            if self.progress is not None:
                self.progress(schema.table, total)
        self._hook(schema.table, chunk, "written")


class _Reason(Exception):
    """Why rows were set aside (the first conversion error's message)."""
