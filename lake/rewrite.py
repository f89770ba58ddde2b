"""A state merge that rewrites the touched files one at a time (copy-on-write), in one commit.

Why not Delta's MERGE: deltalake's MERGE holds the rows of every file it scans until it knows
whether the file changes (its merge barrier, `operations/merge/barrier.rs`), so its memory
grows with the bytes of the table it touches, not with the rows it merges: 10 random keys
into a 5M-row state table peaked at 2.9 GB, 100,000 at the same (bench/README.md, `merge`).
Here a merge:

1. finds the files that may hold a merged key: for a single integer key, the files whose
   key range (their Delta stats) holds one (the snapshot writes keys in order and a rewrite
   keeps a file's order, so ranges stay narrow); else every file;
2. reads those files a unit at a time (one file, or neighbouring small ones up to
   GROUP_BYTES), applies the merge's rules to its rows in order (`apply`) and writes the
   unit back as one file only if a row changed, then lets it go;
3. writes the keys no file held as new rows, and commits every removed and added file with
   the merge's app transactions in one Delta commit.

So what it holds is one file and the merged rows, and what it costs is the files that hold
a merged key: a trickle rewrites a file, not the table. A truncate's wipe reads every file.

The rules are `StateTable._merge`'s (a row changes only for a newer position, unchanged TOAST
columns keep the target's value, unmatched keys are inserted; with a wipe, unmatched rows at
or before it go). Two writers of one shard conflict on the shard's append number, and every
state commit carries `STATE_WRITER_APP` (`lake.state`), so any two concurrent state commits
conflict and the loser runs again (deltalake also refuses two removals of one file).

`rewrite_merge` returns False, before writing anything, for what it leaves to Delta's MERGE:
a partitioned state table, one with deletion vectors, or merged columns the table lacks
(a schema change adds them there)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable
from deltalake.transaction import RemoveAction

from lake.delta_io import Position
from lake.layout import LakeLayout
from lake.parquet_files import StreamedFile
from lake.schemas import STATE_META

_ROW = "_rw_theirs"
"""The merged rows' row number, which `apply` joins a unit's rows to."""
GROUP_BYTES = 4 * 1024 * 1024
"""Parquet bytes of neighbouring files (in key order) read and written back as one: the small
files maintenance keeps a state in (`lake.maintenance.STATE_FILE_BYTES`) then cost a read
each, not a pass each (977 files of a 1M-row state: a spread merge 12.6 s one file at a
time, 3.0 s in units of 4 MiB at 460 MB, 16 MiB took 750 MB); a larger file is a unit of its
own. What a merge holds is one such unit and its rows."""


def rewrite_merge(
    layout: LakeLayout,
    uri: str,
    target: DeltaTable,
    source: pa.Table,
    keys: list[str],
    wipe: Position | None,
    properties: CommitProperties,
) -> bool:
    """Merge `source` (one row per key: data columns, STATE_META, `_unchanged`, `_rebuilt`)
    into the state table `target` at `uri`; False when it is left to Delta's MERGE."""
    schema = pa.schema(target.schema())
    data = [n for n in source.column_names if n not in ("_unchanged", "_rebuilt")]
    if target.metadata().partition_columns or _has_deletion_vectors(target) or set(data) - set(schema.names):
        return False
    merged = pl.from_arrow(source)
    assert isinstance(merged, pl.DataFrame)  # nosec B101 # type narrowing only
    theirs = beside(merged, keys, schema)
    files = pa.table(target.get_add_actions(flatten=True))
    filesystem, root = layout.filesystem(uri)
    removed: list[RemoveAction] = []
    added = []
    found: list[pa.Table] = []
    now = int(time.time() * 1000)
    paths = [unquote(path) for path in files.column("path").to_pylist()]
    sizes = files.column("size_bytes").to_pylist()
    for group in _groups(files, _candidates(files, merged, keys, wipe), keys):
        read = [pq.read_table(f"{root.rstrip('/')}/{paths[i]}", filesystem=filesystem) for i in group]
        changed, kept, matched = apply(pa.concat_tables([_conform(rows, schema) for rows in read]), theirs, keys, wipe)
        if matched.num_rows:
            found.append(matched)
        if not changed:
            continue
        removed += [RemoveAction(paths[i], True, now, sizes[i], {}) for i in group]
        if kept.num_rows:
            added.append(_write(layout, uri, schema, kept))
    held = pl.from_arrow(pa.concat_tables(found)) if found else None
    new = merged.join(held.cast(merged.select(keys).schema), on=keys, how="anti") if held is not None else merged  # type: ignore[union-attr, arg-type]
    if new.height:
        added.append(_write(layout, uri, schema, _inserted(new, schema).to_arrow()))
    if removed or added:
        target.create_write_transaction(
            [*removed, *added], mode="append", schema=target.schema(), commit_properties=properties
        )
    return True


@dataclass(frozen=True)
class Merged:
    """The merged rows as `apply` takes them, prepared once per merge: their keys with a row
    number to join on, their columns in the table's types, and per data column whether a row
    keeps the target's value (the WAL did not carry it: `_unchanged`)."""

    keys: pa.Table
    columns: dict[str, pa.ChunkedArray]
    keeps: dict[str, pa.ChunkedArray]


def beside(merged: pl.DataFrame, keys: list[str], schema: pa.Schema) -> Merged:
    """`merged` prepared for `apply` against files of `schema`."""
    shared = [n for n in merged.columns if n in schema.names]
    rows = merged.select(shared).to_arrow()
    typed = {n: rows.column(n).cast(schema.field(n).type) for n in shared}
    data = [n for n in shared if n not in keys and n not in STATE_META.names]
    keeps = merged.select(pl.col("_unchanged").list.contains(pl.lit(n)).alias(n) for n in data).to_arrow()
    numbered = pa.table({**{k: typed[k] for k in keys}, _ROW: pa.array(range(merged.height), pa.int64())})
    columns = {**typed, "_rebuilt": merged["_rebuilt"].to_arrow()}
    return Merged(numbered, columns, {n: keeps.column(n) for n in data})


def apply(rows: pa.Table, theirs: Merged, keys: list[str], wipe: Position | None) -> tuple[bool, pa.Table, pa.Table]:
    """A unit's rows (`_conform`ed) after the merge of `theirs` (`beside`), in their order:
    whether any changed, the rows to keep, and the merged keys the unit holds.

    In pyarrow, not polars: it runs beside the warehouse sync in one process, and Arrow's
    kernels leave the GIL and polars' thread pool to the sync's transforms (polars here
    slowed a polars workload beside it 2-3x, bench/README.md `load`)."""
    numbered = rows.select(keys).append_column("_rw_mine", pa.array(range(rows.num_rows), pa.int64()))
    # Acero's join does not keep the order: sort back by the unit's row number; `which` is
    # the merged row of each of the unit's rows (null: none), so `take` lines them up.
    which = numbered.join(theirs.keys, keys, join_type="left outer").sort_by("_rw_mine").column(_ROW)
    matched = pc.is_valid(which)

    def s(name: str) -> pa.ChunkedArray:
        return pc.take(theirs.columns[name], which)

    def t(name: str) -> pa.ChunkedArray:
        return rows.column(name)

    same_lsn = pc.equal(s("_lsn"), t("_lsn"))
    later_seq = pc.or_(pc.greater(s("_seq"), t("_seq")), pc.and_(s("_rebuilt"), pc.equal(s("_seq"), t("_seq"))))
    newer = pc.fill_null(pc.or_(pc.greater(s("_lsn"), t("_lsn")), pc.and_(same_lsn, later_seq)), False)
    after = _after(rows, wipe)
    keep_target = pc.and_(pc.invert(t("_deleted")), after)
    columns = []
    for name in rows.column_names:
        if name in keys or name not in theirs.columns:
            columns.append(t(name))
            continue
        value = s(name)
        if name in theirs.keeps:  # a column the WAL did not carry keeps the target's value
            keeps = pc.fill_null(pc.and_(pc.take(theirs.keeps[name], which), keep_target), False)
            value = pc.if_else(keeps, t(name), value)
        columns.append(pc.if_else(newer, value, t(name)))
    result = pa.Table.from_arrays(columns, schema=rows.schema)
    gone = pc.and_(pc.invert(matched), pc.invert(after)) if wipe is not None else None
    changed = bool(pc.any(newer).as_py()) or (gone is not None and bool(pc.any(gone).as_py()))
    kept = result.filter(pc.invert(gone)) if gone is not None else result
    return changed, kept, rows.select(keys).filter(matched)


def _after(rows: pa.Table, position: Position | None) -> pa.ChunkedArray | pa.Array:
    """Which rows come after `position` (all of them for None)."""
    if position is None:
        return pa.repeat(pa.scalar(True), rows.num_rows)
    lsn, seq = rows.column("_lsn"), rows.column("_seq")
    return pc.or_(pc.greater(lsn, position.lsn), pc.and_(pc.equal(lsn, position.lsn), pc.greater(seq, position.seq)))


def _candidates(files: pa.Table, merged: pl.DataFrame, keys: list[str], wipe: Position | None) -> list[int]:
    """The files that may hold a merged key (all of them for a wipe or without key ranges)."""
    everything = list(range(files.num_rows))
    low, high = f"min.{keys[0]}", f"max.{keys[0]}"
    if wipe is not None or len(keys) != 1 or low not in files.column_names or not merged[keys[0]].dtype.is_integer():
        return everything
    wanted = merged[keys[0]].unique().sort()
    lows, highs = files.column(low).to_pylist(), files.column(high).to_pylist()
    picked = []
    for index, first, last in zip(everything, lows, highs):
        # a wanted key in [first, last]: two binary searches over the sorted keys
        if first is None or last is None or wanted.search_sorted(last, "right") > wanted.search_sorted(first, "left"):
            picked.append(index)  # (no stats: it may hold anything)
    return picked


def _groups(files: pa.Table, candidates: list[int], keys: list[str]) -> list[list[int]]:
    """The candidate files as units read and written back together: neighbours in key order
    (no other file between them) up to GROUP_BYTES, a larger file alone."""
    low = f"min.{keys[0]}"
    order = list(range(files.num_rows))
    if low in files.column_names:
        lows = files.column(low).to_pylist()
        order.sort(key=lambda i: (lows[i] is None, lows[i] or 0))
    sizes, picked = files.column("size_bytes").to_pylist(), set(candidates)
    groups: list[list[int]] = []
    current: list[int] = []
    held = 0
    for index in order:
        if index not in picked or (current and held + sizes[index] > GROUP_BYTES):
            if current:
                groups.append(current)
            current, held = [], 0
        if index in picked:
            current.append(index)
            held += sizes[index]
    return groups + ([current] if current else [])


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """A file's rows with the table's columns and types (a column added after it: null)."""
    columns = [
        rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _inserted(new: pl.DataFrame, schema: pa.Schema) -> pl.DataFrame:
    """Merged rows no file held, with the table's columns (one it has beyond them: null)."""
    return new.select(pl.col(f.name) if f.name in new.columns else pl.lit(None).alias(f.name) for f in schema)


def _write(layout: LakeLayout, uri: str, schema: pa.Schema, rows: pa.Table):
    file = StreamedFile(layout, uri, schema, {})
    file.write(_conform(rows, schema))
    return file.close()


def _has_deletion_vectors(table: DeltaTable) -> bool:
    protocol = table.protocol()
    return "deletionVectors" in (protocol.writer_features or [])
