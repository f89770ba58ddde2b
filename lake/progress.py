"""`_progress`: the watermark markers each shard has passed (guarantee 4).

The reader periodically puts a marker "every event up to LSN W was put before me" on every
shard. A processor records a marker only after every event before it on that shard is
committed in the lake (`LakeWriter.write_batch` does it after its data commits). The lake
watermark, the LSN below which every event of every table has landed, is the minimum over
the shards of their recorded marker.

Each record is a row (shard, marker_lsn, recorded_at) appended to a small Delta table, with
the shard's marker also kept as an app transaction (`marker:<shard>` = LSN) in the same
commit, so reading the watermark is a lookup in the table's snapshot, not a scan. Appends
from different shards never conflict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from functools import cache
from typing import TYPE_CHECKING

from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from lake.delta_io import TABLE_PROPERTIES, LakeTable, read_sql, retry_on_conflict, small_file_properties
from lake.layout import PROGRESS, LakeLayout

if TYPE_CHECKING:
    import pyarrow as pa


@cache
def schema() -> pa.Schema:
    """The table's columns, made on first use: reading a marker (a catch-up with nothing new)
    needs no Arrow."""
    import pyarrow as pa

    return pa.schema([("shard", pa.string()), ("marker_lsn", pa.int64()), ("recorded_at", pa.timestamp("us", "UTC"))])


def _app(shard: str) -> str:
    return f"marker:{shard}"


class Progress(LakeTable):
    def __init__(self, layout: LakeLayout):
        super().__init__(layout, layout.uri(PROGRESS))

    def _table(self) -> DeltaTable | None:
        return self.refresh()

    def marker(self, shard: str) -> int:
        """The highest marker recorded for `shard` (0 when none)."""
        self._table()
        return self.transaction_version(_app(shard)) or 0

    def record_marker(self, shard: str, lsn: int) -> bool:
        """Record that `shard` has passed the marker `lsn`; False if it had passed it already."""

        def record() -> bool:
            if lsn <= self.marker(shard):
                return False
            import pyarrow as pa

            row = pa.table([[shard], [lsn], [datetime.now(timezone.utc)]], schema=schema())
            properties = CommitProperties(app_transactions=[Transaction(_app(shard), lsn)])
            small = small_file_properties(row.num_rows)  # nothing reads it by its columns' statistics
            if self.delta is None:
                write_deltalake(
                    self.uri,
                    row,
                    mode="append",
                    storage_options=self.layout.storage_options or None,
                    configuration=TABLE_PROPERTIES,
                    commit_properties=properties,
                    writer_properties=small,
                )
            else:
                write_deltalake(self.delta, row, mode="append", commit_properties=properties, writer_properties=small)
            return True

        return retry_on_conflict(record)

    def lake_watermark(self, shards: Iterable[str]) -> int:
        """min over `shards` of their recorded marker; 0 if one of them has none."""
        markers = [self.marker(shard) for shard in shards]
        return min(markers) if markers else 0

    def history(self) -> pa.Table:
        """Every marker recorded, oldest first."""
        table = self._table()
        if table is None:
            return schema().empty_table()
        return read_sql(table, "SELECT * FROM t ORDER BY recorded_at, shard")


class LakeWatermark:
    """The reader's durability with a lake (`cdc_reader.reader.Durability`): every event up to
    the lake watermark of the stream's shards is in the lake (DESIGN.md guarantee 1)."""

    def __init__(self, layout: LakeLayout, shards: Callable[[], Iterable[str]]):
        self.progress = Progress(layout)
        self.shards = shards

    def durable_lsn(self) -> int:
        return self.progress.lake_watermark(self.shards())
