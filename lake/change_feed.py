"""The lake's read port for change logs (`changes/<table>`): what a reader downstream (the
warehouse) needs of Delta, so that it drives no Delta itself.

`ChangeFeed(layout).open(table)` gives a `ChangeLog`: one change log opened at a version,
which a continuous reader keeps open and brings up to date (`moved_on`, `update`). It reads:

- `between(columns, after_lsn, upto_lsn)`: the events with `after_lsn < _lsn (<= upto_lsn)`
  as an Arrow table, through `DeltaTable.to_pyarrow_dataset` on a native pyarrow filesystem
  (never `to_pyarrow_table()`, whose threaded scans can abort the process at exit), with the
  LSN range pushed down twice: as a file-pruning predicate (file statistics skip files
  outside the range) and as a row filter;
- `dataset(pruning)`: the files a pruning predicate on `_lsn` allows, for scans of its own;
- `appended(after_version, columns, after_lsn)`: only what the commits after a version
  appended (Delta's change feed, which for appends needs no table feature), and
  `added_rows(after_version)`, how many rows that is, from the commits' metrics.

Only the columns asked for (and present) are read; the caller gives each its type.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable

from lake.layout import LakeLayout
from lake.schemas import CHANGELOG_META

EVENT_META = pa.schema(
    [CHANGELOG_META.field(name) for name in ("_op", "_lsn", "_seq", "_commit_ts", "_unchanged", "_before")]
)
"""The change log's columns that describe an event (the others say how it was stored)."""


def _lsn_range(after_lsn: int, upto_lsn: int | None) -> tuple[str, ds.Expression]:
    """`after_lsn < _lsn (<= upto_lsn)` as a file-pruning predicate and as a row filter."""
    pruning = f"_lsn > {int(after_lsn)}" + ("" if upto_lsn is None else f" AND _lsn <= {int(upto_lsn)}")
    wanted = ds.field("_lsn") > after_lsn
    if upto_lsn is not None:
        wanted &= ds.field("_lsn") <= upto_lsn
    return pruning, wanted


class ChangeLog:
    """One table's change log, opened at a version (`version`)."""

    def __init__(self, layout: LakeLayout, uri: str, delta: DeltaTable):
        self.layout, self.uri, self._delta = layout, uri, delta

    @classmethod
    def open(cls, layout: LakeLayout, uri: str) -> ChangeLog | None:
        """The change log at `uri` (a `layout.changes_uri`) at its latest version, or None
        when there is none yet."""
        delta = layout.open(uri)
        return None if delta is None else cls(layout, uri, delta)

    @property
    def version(self) -> int:
        return self._delta.version()

    def moved_on(self) -> bool:
        """Whether the table has a commit past the loaded version (one file lookup)."""
        return self.layout.has_commit(self.uri, self.version + 1)

    def update(self) -> None:
        """Load the table's latest version."""
        self._delta.update_incremental()

    def schema(self) -> pa.Schema:
        """The Arrow schema of the loaded version."""
        return pa.schema(self._delta.schema())

    def dataset(self, pruning: str) -> ds.Dataset:
        """The loaded version's files whose statistics allow `pruning` (a predicate on `_lsn`)."""
        return self._delta.to_pyarrow_dataset(filesystem=self.layout.subtree(self.uri), file_pruning_predicate=pruning)

    def local_paths(self, dataset: ds.Dataset) -> list[str] | None:
        """The files of `dataset` (from `dataset()`) as paths on this machine's disk, for an
        engine that reads Parquet itself; None when the lake is elsewhere (S3)."""
        filesystem, root = self.layout.filesystem(self.uri)
        if not isinstance(filesystem, pafs.LocalFileSystem):
            return None
        return [os.path.join(root, name) for name in dataset.files]

    def count_after(self, after_lsn: int) -> int:
        """Events of the loaded version with `_lsn > after_lsn`."""
        pruning, wanted = _lsn_range(after_lsn, None)
        return self.dataset(pruning).count_rows(filter=wanted)

    def between(self, columns: list[str], after_lsn: int, upto_lsn: int | None = None) -> pa.Table:
        """`columns` (those present) of the loaded version's events with `after_lsn < _lsn
        (<= upto_lsn)`: a scan of the files whose statistics allow such events."""
        pruning, wanted = _lsn_range(after_lsn, upto_lsn)
        dataset = self.dataset(pruning)
        present = [name for name in columns if name in dataset.schema.names]
        return dataset.to_table(columns=present, filter=wanted)

    def appended(self, after_version: int, columns: list[str], after_lsn: int) -> pa.Table:
        """`columns` (those present) of the events with `_lsn > after_lsn` appended by the
        versions after `after_version` up to the loaded one: only those commits' files are
        read (compactions add no data, so none). Raises when a commit in between changed the
        table's schema (the change feed refuses those)."""
        present = [name for name in columns if name in self._delta.schema().to_arrow().names]
        reader = self._delta.load_cdf(
            starting_version=after_version + 1,
            ending_version=self.version,
            columns=present,
            predicate=f"_lsn > {int(after_lsn)}",
        )
        return pa.table(reader)

    def added_rows(self, after_version: int) -> int | None:
        """Rows the commits after `after_version` up to the loaded one added (from the log's
        commit metrics), or None when a commit has no such metric."""
        added = 0
        for commit in self._delta.history(limit=self.version - after_version):
            if commit.get("version", after_version + 1) <= after_version:
                continue
            rows = (commit.get("operationMetrics") or {}).get("num_added_rows")
            if rows is None:
                return None
            added += int(rows)
        return added


class ChangeFeed:
    """The lake's change logs, by source table name (`schema.table`)."""

    def __init__(self, layout: LakeLayout | str):
        self.layout = layout if isinstance(layout, LakeLayout) else LakeLayout(layout)

    def uri(self, table: str) -> str:
        return self.layout.changes_uri(table)

    def open(self, table: str) -> ChangeLog | None:
        """The change log of `table` at its latest version, or None when there is none yet."""
        return ChangeLog.open(self.layout, self.uri(table))

    def between(self, table: str, columns: list[str], after_lsn: int, upto_lsn: int | None = None) -> pa.Table | None:
        """`columns` of the events of `table` with `after_lsn < _lsn (<= upto_lsn)`, or None
        when the table has no change log."""
        log = self.open(table)
        return None if log is None else log.between(columns, after_lsn, upto_lsn)
