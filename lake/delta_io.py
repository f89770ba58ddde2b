"""Small deltalake helpers shared by the lake's modules.

- `read_sql`: run SQL over a Delta table (any version) with deltalake's own query engine,
  which prunes files by their statistics; returns a pyarrow Table with plain (non-view)
  types. It avoids `to_pyarrow_table()`, whose threaded scans can abort the process at exit.
- Positions: an event position `(lsn, seq)` stored as a pair of Delta app transactions
  (`txn` actions, `<app>:lsn` and `<app>:seq`) in the same commit as the data it describes.
  They live in the table's snapshot, so reading them back is a lookup, not a scan, and a
  crash can never separate them from their data.
- `quote_identifier`, `quote_literal`: the only way names and strings enter that SQL.
- `retry_on_conflict`: re-run an operation that lost a commit race (CommitFailedError).
- `create_once`: create a table that two writers may be creating at the same moment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, NamedTuple, TypeVar

from deltalake import ColumnProperties, CommitProperties, DeltaTable, QueryBuilder, Transaction, WriterProperties

from change_events.errors import COMMIT_RACE_RETRY, is_conflict

if TYPE_CHECKING:
    import pyarrow as pa

T = TypeVar("T")


CHECKPOINT_INTERVAL = 100
TABLE_PROPERTIES = {"delta.checkpointInterval": str(CHECKPOINT_INTERVAL)}
"""Set on every lake table the pipeline creates (and by maintenance on older ones). Opening a
Delta table replays the commits since its last checkpoint, but the pipeline's writers and
the sync open a table once and then refresh it incrementally (only the new commits), so
they gain little from frequent checkpoints; maintenance checkpoints every table each round
anyway. Each checkpoint lists every live file and every tombstone of the retention window
(tens of KiB), and all those written within the window are kept: at the processor's few
commits per second, checkpoints every 10 commits were most of a demo lake's log bytes.
Delta's default, 100, keeps a lake that is not maintained opening quickly."""


SMALL_FILE_ROWS = 50
"""Up to this many rows a Parquet file is written without dictionaries (`small_file_properties`)."""


def small_file_properties(rows: int) -> WriterProperties | None:
    """Parquet settings for a commit of `rows` rows: None (the defaults) for a large one. A
    few-row file is mostly per-column overhead: a dictionary page and page statistics per
    column (bench/README.md `storage`). It keeps chunk statistics on every column: deltalake's
    pyarrow dataset turns a column without them into bounds of null, and a filter on that
    column then skips the file, so a query would silently miss its rows. Above
    `SMALL_FILE_ROWS` dictionaries make files smaller."""
    if rows > SMALL_FILE_ROWS:
        return None
    return WriterProperties(
        default_column_properties=ColumnProperties(dictionary_enabled=False, statistics_enabled="CHUNK")
    )


class Position(NamedTuple):
    """An event's place in the source's history: `(lsn, seq)`, totally ordered."""

    lsn: int
    seq: int


ZERO = Position(0, -1)
"""Before every event."""


def position_transactions(app: str, position: Position) -> list[Transaction]:
    """The app transactions that store `position` under `app` (commit them with the data)."""
    return [Transaction(f"{app}:lsn", position.lsn), Transaction(f"{app}:seq", position.seq)]


# -- reading ---------------------------------------------------------------------------------


def _plain(type_: pa.DataType) -> pa.DataType:
    import pyarrow as pa

    if pa.types.is_string_view(type_) or pa.types.is_large_string(type_):
        return pa.string()
    if pa.types.is_binary_view(type_) or pa.types.is_large_binary(type_):
        return pa.binary()
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_list_view(type_):
        return pa.list_(_plain(type_.value_type))
    return type_


def plain_types(table: pa.Table) -> pa.Table:
    """`table` with view/large string, binary and list types cast to the plain ones."""
    import pyarrow as pa

    schema = pa.schema([field.with_type(_plain(field.type)) for field in table.schema])
    return table if schema == table.schema else table.cast(schema)


def read_sql(table: DeltaTable, sql: str, name: str = "t") -> pa.Table:
    """Run `sql` (which names the table `name`) over `table`; return a pyarrow Table."""
    import pyarrow as pa

    reader = QueryBuilder().register(name, table).execute(sql)
    return plain_types(pa.table(reader.read_all()))


def quote_identifier(name: str) -> str:
    """`name` as an identifier in the SQL deltalake runs (DataFusion: predicates, merge
    conditions and update expressions, `read_sql`): double quotes, inner ones doubled, so a
    column named like `a"b` or `x; DROP ...` is one column and nothing else (backticks need
    no escaping inside them). deltalake's own `when_matched_update_all`/`insert_all` do not
    quote names (a column named `"` breaks them), which is why the state merge spells out
    every column."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """`value` as a string literal in the same SQL: single quotes, inner ones doubled."""
    return "'" + value.replace("'", "''") + "'"


def after_position(position: Position, prefix: str = "") -> str:
    """SQL predicate: the row's (_lsn, _seq) is after `position`."""
    lsn, seq = f"{prefix}_lsn", f"{prefix}_seq"
    return f"({lsn} > {position.lsn} OR ({lsn} = {position.lsn} AND {seq} > {position.seq}))"


# -- commit races ----------------------------------------------------------------------------


def retry_on_conflict(operation: Callable[[], T]) -> T:
    """Run `operation`; when it loses a commit race, wait a little (`COMMIT_RACE_RETRY`) and
    run it again. `operation` must re-read what it depends on each time."""
    return COMMIT_RACE_RETRY.run(operation, retry_if=is_conflict)


def create_once(
    layout,
    uri: str,
    schema: pa.Schema,
    *,
    partition_by: list[str] | None = None,
    configuration: dict[str, str] | None = None,
) -> DeltaTable:
    """Create the empty table at `uri` unless it exists; return it as of version 0.

    deltalake retries a create that lost the race for version 0 as version 1, a second
    CREATE TABLE that replaces the first one's metadata (and with it any column a writer
    added in between). Without commit retries the loser fails instead, and finds the
    winner's table. Version 0 is what a writer that decided what to write while there was
    no table must commit onto: a concurrent commit of the same app transactions then
    conflicts (CommitFailedError) instead of landing twice."""
    try:
        DeltaTable.create(
            uri,
            schema,
            mode="ignore",
            partition_by=partition_by,
            configuration={**TABLE_PROPERTIES, **(configuration or {})},
            raise_if_key_not_exists=False,
            storage_options=layout.storage_options or None,
            commit_properties=CommitProperties(max_commit_retries=0),
        )
    except Exception:  # noqa: BLE001 - lost the race? Then the winner's table is there.
        if layout.open(uri) is None:
            raise
    return layout.open(uri, version=0)


class LakeTable:
    """One Delta table of the lake, opened lazily and refreshed incrementally: the other
    methods of a subclass use the version loaded last, so one refresh serves a whole step."""

    def __init__(self, layout, uri: str):
        self.layout = layout
        self.uri = uri
        self.delta: DeltaTable | None = None
        self._transactions: tuple[int, dict[str, int | None]] = (-1, {})

    def transaction_version(self, app: str) -> int | None:
        """The app transaction `app` of the loaded version (looked up once per version: each
        lookup scans the table's log)."""
        table = self.delta
        if table is None:
            return None
        version, known = self._transactions
        if version != table.version():
            version, known = self._transactions = (table.version(), {})
        if app not in known:
            known[app] = table.transaction_version(app)
        return known[app]

    def position(self, app: str) -> Position:
        """The position stored under `app` (see Positions above) in the loaded version, or ZERO."""
        lsn, seq = self.transaction_version(f"{app}:lsn"), self.transaction_version(f"{app}:seq")
        return ZERO if lsn is None or seq is None else Position(lsn, seq)

    def refresh(self) -> DeltaTable | None:
        """Load the latest version (None before the table's first commit)."""
        if self.delta is None:
            self.delta = self.layout.open(self.uri)
        elif self.layout.has_commit(self.uri, self.delta.version() + 1):
            self.delta.update_incremental()
        return self.delta


class ShardedTable(LakeTable):
    """A lake table of one source table that the stream's shards write (its change log, its
    state table; `kind` names which). Every commit of a shard's notes, as app transactions,
    the shard's high water (the position of its last event the table holds) and `<shard>:batch`,
    the number of the shard's last change-log append the table holds: for the log the append
    itself, for the state the last one it merged."""

    kind: ClassVar[str]

    def __init__(self, layout, table: str):
        super().__init__(layout, layout.uri(self.kind, table))
        self.table = table

    def high_water(self, shard: str) -> Position:
        return self.position(shard)

    def batch(self, shard: str) -> int:
        """The number of the shard's last change-log append this table holds (0: none)."""
        return self.transaction_version(f"{shard}:batch") or 0

    @staticmethod
    def batch_transaction(shard: str, batch: int) -> Transaction:
        """What a commit notes to hold the shard's appends up to `batch` (see `batch`)."""
        return Transaction(f"{shard}:batch", batch)
