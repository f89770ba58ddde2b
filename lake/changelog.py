"""`changes/<table>`: the append-only log of every event of one source table.

Exactly once per (table, shard). Within one stream shard, events arrive in `(lsn, seq)`
order, except for replays (a reader restart, a Lambda retry), which repeat events at or
below what that shard already wrote, and rare late events (a retried put reordering a key's
records). So every append records, in the same Delta commit as its rows, the shard's
high-water position as app transactions (`<shard>:lsn`, `<shard>:seq`, see
`LakeTable.position`) and the shard's append number (`<shard>:batch`). On the next batch:

- events above the high-water are new (the common case: no read at all);
- events at or below it are looked up in the log (only `_lsn`/`_seq`, in their LSN range,
  which file statistics prune to the last few files) and only the missing ones, late events,
  are appended.

A crash between any two commits, a redelivered, duplicated or partially overlapping batch
therefore adds nothing twice; recovering the high-water is a lookup in the table's snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake

from change_events import ChangeEvent, TableSchema
from lake.arrow_types import convert_column
from lake.delta_io import Position, ShardedTable, create_once, position_transactions, read_sql, small_file_properties
from lake.layout import CHANGES
from lake.schemas import CHANGELOG_META, PARTITION_COLUMN, UTC_MICROS

COMMIT_INFO_PREFIX = "totes."
PRUNED_ON = ("_lsn", "_seq", "_commit_ts")
"""The columns reads of a change log skip files by (their statistics are kept in the log)."""


def event_rows(
    events: Sequence[ChangeEvent], schema: TableSchema, shard: str, batch: int, written_on: date
) -> pa.Table:
    """Change log rows of `events` (all of `schema`), typed column by column.

    Raises ValueConversionError (with row positions in `events`) for values that do not fit."""
    values = [e.after if e.after is not None else e.key for e in events]
    columns = [convert_column([row.get(c.name) for row in values], c.type_name, c.name) for c in schema.columns]
    commit_ts = pa.array([e.commit_ts for e in events], type=UTC_MICROS)
    if any(e.unchanged for e in events):
        unchanged = pa.array([list(e.unchanged) for e in events], type=pa.list_(pa.string()))
    else:
        unchanged = pa.ListArray.from_arrays(pa.array([0] * (len(events) + 1), pa.int32()), pa.array([], pa.string()))
    meta = [
        pa.array([e.op.value for e in events], pa.string()),
        pa.array([e.lsn for e in events], pa.int64()),
        pa.array([e.seq for e in events], pa.int64()),
        pa.array([e.xid for e in events], pa.int64()),
        commit_ts,
        unchanged,
        pa.array(
            [
                None if e.before is None else json.dumps(e.before, ensure_ascii=False, separators=(",", ":"))
                for e in events
            ],
            pa.string(),
        ),
        pa.array([shard] * len(events), pa.string()),
        pa.array([batch] * len(events), pa.int64()),
        pc.fill_null(pc.cast(commit_ts, pa.date32()), pa.scalar(written_on, pa.date32())),
    ]
    names = list(schema.column_names) + CHANGELOG_META.names
    return pa.Table.from_arrays(columns + meta, names=names)


class ChangeLog(ShardedTable):
    """The change log of one source table."""

    kind = CHANGES

    def appends(self, shard: str) -> int:
        """How many appends `shard` has made (its last `_batch` number)."""
        return self.batch(shard)

    def missing(self, events: Sequence[ChangeEvent], high_water: Position) -> tuple[list[ChangeEvent], int]:
        """The events of `events` (sorted, no duplicates) that the log lacks, and how many of
        them are above the shard's `high_water` (the rest are late events, if any)."""
        fresh = [e for e in events if Position(e.lsn, e.seq) > high_water]
        older = [e for e in events if Position(e.lsn, e.seq) <= high_water]
        if not older:
            return fresh, len(fresh)
        present = self.positions_between(older[0].lsn, older[-1].lsn)
        late = [e for e in older if (e.lsn, e.seq) not in present]
        return late + fresh, len(fresh)

    def positions_between(self, low_lsn: int, high_lsn: int) -> set[tuple[int, int]]:
        """`(lsn, seq)` of every logged event with `low_lsn <= lsn <= high_lsn`."""
        table = self.delta
        if table is None:
            return set()
        rows = read_sql(table, f"SELECT _lsn, _seq FROM t WHERE _lsn BETWEEN {low_lsn} AND {high_lsn}")  # nosec B608 # LSN bounds are ints the writer computed
        return set(zip(rows.column("_lsn").to_pylist(), rows.column("_seq").to_pylist()))

    def append(self, shard: str, rows: pa.Table, high_water: Position, batch: int) -> int:
        """Append `rows` with the shard's new high-water and append number, atomically;
        return the new table version. Columns new to the log are added to it.

        Not retried here on CommitFailedError: a concurrent commit may have logged these
        very events (another writer on the shard), so the caller re-reads what is missing."""
        lsns = rows.column("_lsn")
        metadata = {
            f"{COMMIT_INFO_PREFIX}shard": shard,
            f"{COMMIT_INFO_PREFIX}lsn_min": str(pc.min(lsns).as_py()),
            f"{COMMIT_INFO_PREFIX}lsn_max": str(pc.max(lsns).as_py()),
            f"{COMMIT_INFO_PREFIX}rows": str(rows.num_rows),
        }
        properties = CommitProperties(
            custom_metadata=metadata,
            app_transactions=position_transactions(shard, high_water) + [self.batch_transaction(shard, batch)],
        )
        if self.delta is None:
            self.create(rows.schema)
        write_deltalake(
            self.delta,
            rows,
            mode="append",
            schema_mode="merge",
            commit_properties=properties,
            writer_properties=small_file_properties(rows.num_rows),
        )
        return self.refresh().version()

    def create(self, schema: pa.Schema) -> DeltaTable:
        """Create the (empty) log if no one has, and load its version 0 (`create_once`):
        the first append, like every other one, then commits onto the version its caller
        decided what was missing from."""
        self.delta = create_once(self.layout, self.uri, schema, partition_by=[PARTITION_COLUMN])
        return self.delta

    def read(self, where: str | None = None, version: int | None = None) -> pa.Table:
        """Rows of the log (at `version`), filtered by the SQL predicate `where`."""
        table = self.delta if version is None else self.layout.open(self.uri, version)
        if table is None:
            return pa.table({})
        return read_sql(table, "SELECT * FROM t" + (f" WHERE {where}" if where else ""))  # nosec B608 # `where` is a predicate the calling code writes, never data
