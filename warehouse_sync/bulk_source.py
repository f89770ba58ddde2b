"""The lake's side of a bulk load (`bulk`): a table's events at one LSN as files for the
warehouse engine to read, and whether they can be loaded as they are stored. Read through
`lake_source` and the lake's port (`lake.change_feed`), as every other read of the sync."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow.dataset as ds

from lake.layout import LakeLayout
from warehouse_sync.lake_source import SCAN_POOL, SOURCE_SCHEMA, _as_lake, _slice_dataset
from warehouse_sync.schema import SOURCES
from warehouse_sync.bulk import BulkPart, piece_filter
from warehouse_sync.slices import Position


@dataclass(frozen=True)
class SnapshotPart:
    """A table's events at one LSN (a piece of them: `seq` in `[low, high]`), as files for an
    engine to read itself (no rows read here)."""

    dataset: ds.Dataset
    """The files that may hold them, filtered to them."""
    paths: list[str] | None
    """The same files on this machine's disk (None for a lake elsewhere): read them keeping
    the rows `where` says only."""
    where: str
    """An SQL condition on `_lsn` and `_seq` that keeps exactly those events."""


def snapshot_part(
    layout: LakeLayout | str, start: Position, part: BulkPart, opened: dict | None = None
) -> SnapshotPart | None:
    """The change log files of the part's table for its events (after `start`)."""
    layout = _as_lake(layout)
    opened = {} if opened is None else opened
    found = _slice_dataset(layout, part.source, start, Position.complete(part.lsn, len(SOURCES)), opened)
    if found is None:
        return None
    dataset, wanted = found
    change_log = opened["log", layout.changes_uri(f"{SOURCE_SCHEMA}.{part.source}")]
    here = change_log.dataset(f"_lsn >= {int(part.lsn)} AND _lsn <= {int(part.lsn)}")  # the files that may hold it
    arrow, sql = piece_filter(part)
    return SnapshotPart(dataset.filter(wanted & arrow), change_log.local_paths(here), sql)


def bulk_loadable(
    layout: LakeLayout | str, start: Position, part: BulkPart, opened: dict | None = None
) -> pl.Series | None:
    """The sorted `seq` of the part's events when they can be loaded as they are stored, else
    None: all snapshot reads, every mirror column in the lake with the mirror's own type, and
    no key nor position twice (a duplicated event, which the general path drops). Reads only
    the `_op`, key and `_seq` columns."""
    found = snapshot_part(layout, start, part, opened)
    if found is None or found.dataset.count_rows(filter=ds.field("_op") != "r"):
        return None
    events = found.dataset
    mirror = SOURCES[part.source]
    lake_types = dict(pl.DataFrame(events.schema.empty_table()).schema)
    if any(lake_types.get(name) != dtype for name, dtype in mirror.polars_schema.items()):
        return None
    # One column at a time, each checked for repeats sorted (a value seen twice is next to
    # itself) and let go of before the next: what is held is one column and its sorted copy
    # (pyarrow's count_distinct held ~200 bytes an event in its hash table: 1 GB at 5M rows).
    sorted_columns = []
    for name, dtype in ((mirror.key, mirror.polars_schema[mirror.key]), ("_seq", pl.Int64())):
        column = events.to_table(
            columns=[name], memory_pool=SCAN_POOL, use_threads=False, batch_readahead=1, fragment_readahead=1
        ).column(name)  # one batch decoded at a time: the column, not the readahead, is what is held
        if len(column) == 0 or column.null_count:
            return None
        values = pl.Series(name, column, dtype=dtype)
        del column
        values.sort(in_place=True)
        if (values.diff(null_behavior="drop") == 0).any():
            return None
        sorted_columns.append(values if name == "_seq" else None)
    return sorted_columns[-1]
