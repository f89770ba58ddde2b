"""The bulk path into the lake: snapshot rows written straight into `changes/<table>` and
`tables/<table>` as `op='r'` events, in large files, one chunk at a time.

Kinesis is not on this path (its shards take 1 MB/s each). The rows are the same the
stream processor would write for the same `op='r'` events (`lake.changelog.event_rows`,
`lake.schemas`): the same typed columns, the same lineage columns, `_shard` =
`SNAPSHOT_SHARD` and `_batch` = the chunk's number.

Exactly once, chunk by chunk: a chunk's change log commit carries the app transaction
`snapshot:<run>:<chunk>` = the LSN its rows are stamped with, and its state commit the same
one, so after a kill a restart sees which chunks each table holds (`chunks_done`) and
writes only the others; a chunk whose state commit was lost is copied from its change log
rows (`catch_up_state`). Once every chunk of a table is in, a last state commit records
`snapshot-done:<run>` (`mark_done`). `<run>` is the slot's consistent LSN: it names one
snapshot of one slot.

The state table takes a chunk as a plain append while it is being built fresh from this
snapshot at the run's own LSN; anything else (a chunk read again at a later LSN after a
restart, a state table that existed before, a re-read while the processors write the same
table: `fresh_appends=False`) is merged by key and never lets an older row overwrite a
newer one. Merges into one table take turns (`_lock`); appends run in parallel.

None of this moves the lake watermark: the reader puts its marker for the snapshot's LSN
on the stream only after every table is written, so the warehouse and the reader's
confirmation see the snapshot once it is whole (`lake.progress`).

Why one file (~430 lines): the chunk's two commits, their app transactions and the state's
append-or-merge rule are one protocol; what they write (`changelog_rows`, `state_rows`) and
the streamed files (`ChunkSink`) are its vocabulary.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import ColumnProperties, CommitProperties, Transaction, WriterProperties, write_deltalake

from change_events import ChangeEvent, Op, TableSchema
from lake.arrow_types import convert_column
from lake.changelog import COMMIT_INFO_PREFIX, ChangeLog
from lake.delta_io import create_once, quote_identifier, read_sql, retry_on_conflict
from lake.errors import ValueConversionError
from lake.layout import LakeLayout
from lake.parquet_files import StreamedFile, add_files, fits
from lake.schemas import CHANGELOG_META, PARTITION_COLUMN, STATE_META, UTC_MICROS
from lake.state import PRIMARY_KEY_PROPERTY, StateTable, state_writer

_BULK_WRITER = WriterProperties(
    compression="SNAPPY", default_column_properties=ColumnProperties(dictionary_enabled=False)
)
"""Dictionary encoding is half the writer's CPU on snapshot chunks and, on such data (mostly
distinct ids, times and amounts), makes the files no smaller."""

SNAPSHOT_SHARD = "snapshot"
"""`_shard` of the rows the bulk path writes (no stream shard carried them)."""


def chunk_app(run: int, chunk: int) -> str:
    return f"snapshot:{run}:{chunk}"


def done_app(run: int) -> str:
    return f"snapshot-done:{run}"


def changelog_rows(
    schema: TableSchema, text: pa.Table, lsn: int, first_seq: int, chunk: int, written_on: date
) -> pa.Table:
    """Change log rows of snapshot rows given as text columns (COPY's output form, one per
    source column, in order): `op='r'` at `lsn`, numbered from `first_seq`.

    Raises ValueConversionError (positions in `text`) for values that do not fit their type."""
    columns = [convert_column(text.column(i), c.type_name, c.name) for i, c in enumerate(schema.columns)]
    return typed_changelog_rows(schema, columns, lsn, first_seq, chunk, written_on)


def arange(start: int, n: int) -> pa.Array:
    """start, start + 1, ... (n of them) as int64, built in C++ (a running sum of ones)."""
    ones = pa.repeat(pa.scalar(1, pa.int64()), n)
    return pc.add(pc.cumulative_sum(ones), pa.scalar(start - 1, pa.int64()))


def typed_changelog_rows(
    schema: TableSchema, columns: list[pa.Array], lsn: int, first_seq: int, chunk: int, written_on: date
) -> pa.Table:
    """Change log rows of snapshot rows given as the lake's typed columns; the lineage columns
    are built whole (constants and a range), never value by value."""
    n = len(columns[0]) if columns else 0
    meta = [
        pa.repeat(pa.scalar("r", pa.string()), n),
        pa.repeat(pa.scalar(lsn, pa.int64()), n),
        arange(first_seq, n),
        pa.nulls(n, pa.int64()),
        pa.nulls(n, UTC_MICROS),
        pa.ListArray.from_arrays(pa.repeat(pa.scalar(0, pa.int32()), n + 1), pa.array([], pa.string())),
        pa.nulls(n, pa.string()),
        pa.repeat(pa.scalar(SNAPSHOT_SHARD, pa.string()), n),
        pa.repeat(pa.scalar(chunk, pa.int64()), n),
        pa.repeat(pa.scalar(written_on, pa.date32()), n),
    ]
    return pa.Table.from_arrays(list(columns) + meta, names=list(schema.column_names) + CHANGELOG_META.names)


def state_rows(changes: pa.Table) -> pa.Table:
    """State table rows of change log rows of `op='r'` (one per key)."""
    data = [name for name in changes.column_names if name not in CHANGELOG_META.names]
    rows = changes.select(data + ["_op", "_lsn", "_seq", "_commit_ts"])
    return rows.append_column("_deleted", pa.repeat(pa.scalar(False), rows.num_rows))


def rejected_events(
    schema: TableSchema, text: pa.Table, rows: list[int], lsn: int, first_seq: int
) -> list[ChangeEvent]:
    """The change events of the rows at `rows` of `text` (for the dead letters)."""
    names = schema.column_names
    events = []
    for i in rows:
        values = {name: text.column(j)[i].as_py() for j, name in enumerate(names)}
        key = {k: values[k] for k in schema.key_names}
        events.append(ChangeEvent(schema, Op.SNAPSHOT, lsn, first_seq + i, None, None, key, values))
    return events


class TableLoad:
    """One table's snapshot being written into the lake (thread-safe)."""

    def __init__(
        self,
        layout: LakeLayout,
        schema: TableSchema,
        run: int,
        *,
        today: Callable[[], date] | None = None,
        fresh_appends: bool = True,
    ):
        self.layout = layout
        self.schema = schema
        self.table = schema.table
        self.run = run
        self.log = ChangeLog(layout, self.table)
        self.state = StateTable(layout, self.table) if schema.key_names else None
        self._today = today or (lambda: datetime.now(timezone.utc).date())
        self._lock = threading.Lock()
        self._fresh_state = False
        self._fresh_appends = fresh_appends

    # -- set-up and what is there --------------------------------------------------------
    def prepare(self, fields: list[pa.Field]) -> None:
        """Create both tables if missing (before chunks are written in parallel)."""
        self.log.refresh()
        if self.log.delta is None:
            self.log.create(pa.schema(fields + list(CHANGELOG_META)))
        if self.state is not None:
            self.state.refresh()
            if self.state.delta is None:
                create_once(
                    self.layout,
                    self.state.uri,
                    pa.schema(fields + list(STATE_META)),
                    configuration={PRIMARY_KEY_PROPERTY: json.dumps(list(self.schema.key_names))},
                )
                self.state.delta = None
                self.state.refresh()
            # A state table holding nothing yet is built by appends (see the module docstring).
            self._fresh_state = self._fresh_appends and self.state.delta.version() == 0

    def chunks_done(self, chunks: int) -> dict[int, int]:
        """chunk → the LSN its rows carry, for the chunks the change log holds."""
        self.log.refresh()
        found = {c: self.log.transaction_version(chunk_app(self.run, c)) for c in range(chunks)}
        return {c: lsn for c, lsn in found.items() if lsn is not None}

    def state_chunks(self, chunks: int) -> set[int]:
        if self.state is None:
            return set(range(chunks))
        with self._lock:
            self.state.refresh()
            return {c for c in range(chunks) if self.state.transaction_version(chunk_app(self.run, c)) is not None}

    def is_done(self) -> bool:
        target = self.state if self.state is not None else self.log
        target.refresh()
        return target.transaction_version(done_app(self.run)) is not None

    # -- writing -------------------------------------------------------------------------
    def write_chunk(self, chunk: int, lsn: int, rows: pa.Table) -> None:
        """Append one chunk's change log rows, then its state rows (two commits, each
        carrying the chunk's app transaction; a repeat of either is skipped)."""
        self.write_log(chunk, lsn, rows)
        self.write_state(chunk, lsn, rows)

    def write_log(self, chunk: int, lsn: int, rows: pa.Table) -> None:
        """The chunk's change log commit (skipped if the log holds the chunk). Each call has
        its own table handle: chunks of one table are appended from several threads."""
        properties = self._log_properties(chunk, lsn, rows.num_rows)
        self._commit_log(chunk, lambda log: self._append(log, rows, properties))

    def _log_properties(self, chunk: int, lsn: int, rows: int) -> CommitProperties:
        return CommitProperties(
            app_transactions=[Transaction(chunk_app(self.run, chunk), lsn)],
            custom_metadata={
                f"{COMMIT_INFO_PREFIX}shard": SNAPSHOT_SHARD,
                f"{COMMIT_INFO_PREFIX}lsn_min": str(lsn),
                f"{COMMIT_INFO_PREFIX}lsn_max": str(lsn),
                f"{COMMIT_INFO_PREFIX}rows": str(rows),
            },
        )

    def _commit_log(self, chunk: int, commit: Callable[[ChangeLog], None]) -> None:
        log = ChangeLog(self.layout, self.table)
        app = chunk_app(self.run, chunk)

        def append() -> None:
            log.refresh()
            if log.transaction_version(app) is None:
                commit(log)

        retry_on_conflict(append)

    def _append(self, table: ChangeLog | StateTable, rows: pa.Table, properties: CommitProperties) -> None:
        write_deltalake(
            table.delta,
            rows,
            mode="append",
            schema_mode="merge",
            commit_properties=properties,
            writer_properties=_BULK_WRITER,
        )

    def write_state(self, chunk: int, lsn: int, rows: pa.Table) -> None:
        if self.state is None:
            return
        properties = CommitProperties(app_transactions=[Transaction(chunk_app(self.run, chunk), lsn), state_writer()])
        state = state_rows(rows)
        appends = self.appends_state(lsn)
        with self._lock:
            self._commit_state(
                chunk,
                lambda: self._append(self.state, state, properties) if appends else self._merge(state, properties),
            )

    def appends_state(self, lsn: int) -> bool:
        """Whether a chunk stamped `lsn` goes into the state table as a plain append."""
        return self._fresh_state and lsn == self.run

    def _commit_state_file(self, chunk: int, lsn: int, action) -> None:
        properties = CommitProperties(app_transactions=[Transaction(chunk_app(self.run, chunk), lsn), state_writer()])
        with self._lock:
            self._commit_state(chunk, lambda: add_files(self.state.delta, [action], properties))

    def _commit_state(self, chunk: int, commit: Callable[[], None]) -> None:
        """Run `commit` on the state table unless it holds the chunk, again on a lost commit
        race: the stream's merges into the same table go on meanwhile (a re-read while
        streaming, a reset). Call with the lock held."""

        def once() -> None:
            self.state.refresh()
            if self.state.transaction_version(chunk_app(self.run, chunk)) is None:
                commit()
                self.state.refresh()

        retry_on_conflict(once)

    def _merge(self, rows: pa.Table, properties: CommitProperties) -> None:
        target = self.state.refresh()
        q = quote_identifier
        on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in self.schema.key_names)
        newer = "(s._lsn > t._lsn OR (s._lsn = t._lsn AND s._seq > t._seq))"
        columns = {q(c): f"s.{q(c)}" for c in rows.column_names}
        (
            target.merge(rows, on, source_alias="s", target_alias="t", merge_schema=True, commit_properties=properties)
            .when_matched_update(columns, predicate=newer)
            .when_not_matched_insert(columns)
            .execute()
        )

    def catch_up_state(self, chunk: int, lsn: int) -> None:
        """A chunk in the change log whose state commit was lost (a kill between the two):
        copy its rows from the log."""
        self.log.refresh()
        rows = self.log.read(
            f"_shard = '{SNAPSHOT_SHARD}' AND _batch = {int(chunk)} AND _lsn = {int(lsn)} AND _op = 'r'"
        )
        self.write_state(chunk, lsn, rows)

    def mark_done(self) -> None:
        """Every chunk is in both tables: record it (an empty commit with `snapshot-done`)."""
        target = self.state if self.state is not None else self.log
        done = [Transaction(done_app(self.run), self.run)]
        properties = CommitProperties(app_transactions=done + ([state_writer()] if self.state is not None else []))

        def once() -> None:
            target.refresh()
            if target.transaction_version(done_app(self.run)) is None:
                write_deltalake(
                    target.delta,
                    pa.schema(target.delta.schema()).empty_table(),
                    mode="append",
                    commit_properties=properties,
                )

        with self._lock:
            retry_on_conflict(once)  # the stream's merges go on meanwhile

    def rows(self, where: str = "true") -> pa.Table:
        """Change log rows of this run (tests, verification)."""
        self.log.refresh()
        return read_sql(self.log.delta, f"SELECT * FROM t WHERE _shard = '{SNAPSHOT_SHARD}' AND {where}")  # nosec B608 # constant shard name; `where` is the caller's code


class ChunkSink:
    """One chunk's change log rows on their way into the lake, in batches: streamed into a
    change log file and (a state table built fresh) a state file as they come, committed by
    `commit_log` then `commit_state`. Held in memory only where they must be: the state of a
    table that had rows before (merged by key), or a lake column of another type than the
    rows' (`write_deltalake` with schema merging)."""

    def __init__(self, load: TableLoad, chunk: int, lsn: int, written_on: date):
        self.load, self.chunk, self.lsn, self.written_on = load, chunk, lsn, written_on
        self.rows = 0
        self.held_rows = 0
        """Rows kept in memory until the commits (none when both tables are streamed)."""
        self._log: StreamedFile | None = None
        self._state: StreamedFile | None = None
        self._pieces: list[pa.Table] | None = None
        self._opened = False

    def add(self, rows: pa.Table) -> None:
        if not self._opened:
            self._open(rows)
        self.rows += rows.num_rows
        if self._log is not None:
            self._log.write(rows)
        if self._state is not None:
            self._state.write(state_rows(rows))
        if self._pieces is not None:
            self._pieces.append(rows)
            self.held_rows += rows.num_rows

    def _open(self, rows: pa.Table) -> None:
        self._opened = True
        load = self.load
        log = ChangeLog(load.layout, load.table)
        log.refresh()
        if fits(log.delta, rows.schema):
            self._log = StreamedFile(load.layout, log.uri, rows.schema, {PARTITION_COLUMN: self.written_on.isoformat()})
        streams_state = False
        if load.state is not None and load.appends_state(self.lsn):
            with load._lock:
                state = load.state.refresh()
                streams_state = fits(state, state_rows(rows.slice(0, 0)).schema)
            if streams_state:
                self._state = StreamedFile(load.layout, load.state.uri, state_rows(rows.slice(0, 0)).schema, {})
        if self._log is None or (load.state is not None and not streams_state):
            self._pieces = []

    def commit_log(self) -> None:
        if self._log is None or not self.rows:
            self._discard_log()
            self.load.write_log(self.chunk, self.lsn, self._held())
            return
        action = self._log.close()
        properties = self.load._log_properties(self.chunk, self.lsn, self.rows)
        self.load._commit_log(self.chunk, lambda log: add_files(log.delta, [action], properties))

    def commit_state(self) -> None:
        if self.load.state is None:
            return
        if self._state is None or not self.rows:
            self._discard_state()
            self.load.write_state(self.chunk, self.lsn, self._held())
            return
        self.load._commit_state_file(self.chunk, self.lsn, self._state.close())

    def discard(self) -> None:
        """Nothing of these rows is committed (the chunk is read again another way)."""
        self._discard_log()
        self._discard_state()
        self._pieces = [] if self._pieces is not None else None
        self.held_rows = 0

    def _discard_log(self) -> None:
        if self._log is not None:
            self._log.discard()
            self._log = None

    def _discard_state(self) -> None:
        if self._state is not None:
            self._state.discard()
            self._state = None

    def _held(self) -> pa.Table:
        if self._pieces:
            return pa.concat_tables(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
        return empty_rows(self.load.schema, self.lsn, self.chunk, self.written_on)


def empty_rows(schema: TableSchema, lsn: int, chunk: int, written_on: date) -> pa.Table:
    text = pa.table({name: pa.array([], pa.string()) for name in schema.column_names})
    rows, _, _ = convert_or_reject(schema, text, lsn, 0, chunk, written_on)
    return rows


def convert_or_reject(
    schema: TableSchema, text: pa.Table, lsn: int, first_seq: int, chunk: int, written_on: date
) -> tuple[pa.Table, list[ChangeEvent], str | None]:
    """`changelog_rows`, with rows whose values do not fit set aside as events and the reason."""
    try:
        return changelog_rows(schema, text, lsn, first_seq, chunk, written_on), [], None
    except ValueConversionError:
        pass  # some rows do not fit: find them
    rejected: list[ChangeEvent] = []
    reason = None
    keep = arange(0, text.num_rows)
    while True:
        try:
            rows = changelog_rows(schema, text.take(keep), lsn, 0, chunk, written_on)
            seqs = pc.add(keep, first_seq)
            return rows.set_column(rows.column_names.index("_seq"), "_seq", seqs), rejected, reason
        except ValueConversionError as error:
            if not error.rows:  # no single value shows why: nothing to set aside
                raise
            bad = [keep[i].as_py() for i in error.rows]
            reason = reason or str(error)
            rejected += rejected_events(schema, text, bad, lsn, first_seq)
            keep = pa.array(sorted(set(keep.to_pylist()) - set(bad)), pa.int64())
