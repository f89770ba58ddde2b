"""Reads the lake's change logs (`changes/public.<table>`) between two LSNs.

Only the columns the transforms use are read, through `DeltaTable.to_pyarrow_dataset` on a
native pyarrow filesystem (never `to_pyarrow_table()`, whose threaded scans can abort the
process at exit), with the LSN range pushed down twice: as a file-pruning predicate (file
statistics skip files outside the range) and as a row filter.

Each table comes back as a polars frame sorted by `(_lsn, _seq)` with duplicates of an event
(the same position logged twice, e.g. by two overlapping appends) dropped, its source
columns cast to the mirror's types. `_unchanged` stays a list of column names.
"""

from __future__ import annotations

import polars as pl
import pyarrow.dataset as ds

from lake.layout import LakeLayout
from warehouse_sync.schema import SOURCES

SOURCE_SCHEMA = "public"
EVENT_META = ["_op", "_lsn", "_seq", "_commit_ts", "_unchanged", "_before"]
EVENT_META_SCHEMA: dict[str, pl.DataType] = {
    "_op": pl.String(), "_lsn": pl.Int64(), "_seq": pl.Int64(), "_commit_ts": pl.Datetime("us", "UTC"),
    "_unchanged": pl.List(pl.String()), "_before": pl.String(),
}


def event_schema(source: str) -> dict[str, pl.DataType]:
    """Columns and types of the frame `read_changes` returns for `source`."""
    mirror = SOURCES[source].polars_schema
    columns = {name: dtype for name, dtype in mirror.items() if name not in ("_lsn", "_seq")}
    return columns | EVENT_META_SCHEMA


def _as_lake(layout: LakeLayout | str) -> LakeLayout:
    return layout if isinstance(layout, LakeLayout) else LakeLayout(layout)


def _open(layout: LakeLayout, uri: str, cache: dict | None):
    """The Delta table at `uri`, latest version; with a cache, refreshed incrementally
    instead of opened again (a continuous sync saves a log replay per table per run)."""
    if cache is None:
        return layout.open(uri)
    delta = cache.get(uri)
    if delta is None:
        delta = layout.open(uri)
        if delta is not None:
            cache[uri] = delta
    else:
        delta.update_incremental()
    return delta


def read_table_changes(layout: LakeLayout | str, source: str, after_lsn: int, upto_lsn: int,
                       cache: dict | None = None) -> pl.DataFrame:
    """Events of `public.<source>` with `after_lsn < _lsn <= upto_lsn`, sorted, deduplicated."""
    layout = _as_lake(layout)
    schema = event_schema(source)
    uri = layout.changes_uri(f"{SOURCE_SCHEMA}.{source}")
    delta = _open(layout, uri, cache)
    if delta is None:
        return pl.DataFrame(schema=schema)
    in_range = f"_lsn > {int(after_lsn)} AND _lsn <= {int(upto_lsn)}"
    dataset = delta.to_pyarrow_dataset(filesystem=layout.subtree(uri), file_pruning_predicate=in_range)
    present = [name for name in schema if name in dataset.schema.names]
    table = dataset.to_table(columns=present, filter=(ds.field("_lsn") > after_lsn) & (ds.field("_lsn") <= upto_lsn))
    frame = pl.from_arrow(table) if table.num_rows else pl.DataFrame(schema={n: schema[n] for n in present})
    assert isinstance(frame, pl.DataFrame)
    missing = [pl.lit(None, dtype=schema[n]).alias(n) for n in schema if n not in present]
    frame = frame.with_columns(missing) if missing else frame
    return (frame.select([pl.col(n).cast(dtype) for n, dtype in schema.items()])
            .unique(subset=["_lsn", "_seq"], keep="first", maintain_order=False)
            .sort(["_lsn", "_seq"]))


def read_changes(layout: LakeLayout | str, after_lsn: int, upto_lsn: int,
                 cache: dict | None = None) -> dict[str, pl.DataFrame]:
    """Every source table's events in `(after_lsn, upto_lsn]` (tables without any: absent)."""
    layout = _as_lake(layout)
    changes = {}
    for source in SOURCES:
        frame = read_table_changes(layout, source, after_lsn, upto_lsn, cache)
        if frame.height:
            changes[source] = frame
    return changes
