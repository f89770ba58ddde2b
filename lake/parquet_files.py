"""Parquet files the lake's own code writes batch by batch, then adds to a Delta table in one
commit (`DeltaTable.create_write_transaction`).

Why not `write_deltalake`: it takes the whole of what it commits at once, so a snapshot chunk
had to be held whole, and held again by the writer while it encoded it, and the state table's
copy of the same rows once more. Streamed, a chunk's change log file and its state file grow
one batch at a time from the same batches, and what the reader holds is a batch or two per
connection whatever the size of the chunk (lake/snapshot_load.py). Files of a commit that
never happens (a kill) are left unreferenced, as `write_deltalake`'s are, until vacuum.

Each file's Delta stats carry its row count, null counts, and the min/max of its integer
columns (lsn, seq, keys: the columns readers filter on); other columns have none, which
readers take as "unknown", never as a reason to skip the file.
"""

from __future__ import annotations

import json
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.transaction import AddAction

from lake.layout import LakeLayout


def fits(table: DeltaTable, schema: pa.Schema) -> bool:
    """Whether files of `schema` can be added to `table` as they are: every column is one of
    the table's, of the same Delta type (columns the table has beyond them read as null)."""
    have = {f.name: f.type for f in table.schema().fields}
    return all(f.name in have and have[f.name] == f.type for f in DeltaSchema.from_arrow(schema).fields)


class StreamedFile:
    """One Parquet data file of the Delta table at `uri`, written a batch at a time."""

    def __init__(self, layout: LakeLayout, uri: str, schema: pa.Schema, partition_values: dict[str, str]):
        self.partition_values = partition_values
        folder = "/".join(f"{k}={v}" for k, v in partition_values.items())
        self.path = (folder + "/" if folder else "") + f"part-{uuid.uuid4()}-c000.snappy.parquet"
        self._schema = pa.schema([f for f in schema if f.name not in partition_values])
        self._filesystem, root = layout.filesystem(uri)
        self._full_path = f"{root.rstrip('/')}/{self.path}"
        if not layout.is_s3:
            self._filesystem.create_dir(self._full_path.rsplit("/", 1)[0], recursive=True)
        self._sink = self._filesystem.open_output_stream(self._full_path)
        # No dictionary encoding: half the writer's CPU on such data (mostly distinct ids,
        # times and amounts), and the files come out no larger.
        self._writer = pq.ParquetWriter(self._sink, self._schema, compression="snappy", use_dictionary=False)
        self.rows = 0
        self._nulls = {f.name: 0 for f in self._schema if not pa.types.is_nested(f.type)}
        self._ranges: dict[str, tuple[int, int]] = {}

    def write(self, rows: pa.Table) -> None:
        rows = rows.select(self._schema.names)
        self._writer.write_table(rows)
        self.rows += rows.num_rows
        for name in self._nulls:
            self._nulls[name] += rows.column(name).null_count
        for field in self._schema:
            if pa.types.is_integer(field.type) and rows.num_rows:
                low, high = (v.as_py() for v in pc.min_max(rows.column(field.name)).values())
                if low is not None:
                    was = self._ranges.get(field.name, (low, high))
                    self._ranges[field.name] = (min(was[0], low), max(was[1], high))

    def close(self) -> AddAction:
        self._writer.close()
        self._sink.close()
        size = self._filesystem.get_file_info(self._full_path).size
        stats = {
            "numRecords": self.rows,
            "nullCount": self._nulls,
            "minValues": {k: v[0] for k, v in self._ranges.items()},
            "maxValues": {k: v[1] for k, v in self._ranges.items()},
        }
        return AddAction(self.path, size, self.partition_values, int(time.time() * 1000), True, json.dumps(stats))

    def discard(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        finally:
            self._filesystem.delete_file(self._full_path)


def add_files(table: DeltaTable, actions: list[AddAction], properties) -> None:
    """One append commit of `actions` (files already written) with `properties`."""
    table.create_write_transaction(
        actions,
        mode="append",
        schema=table.schema(),
        partition_by=table.metadata().partition_columns,
        commit_properties=properties,
    )
