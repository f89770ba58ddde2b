"""Keeping the lake fast and bounded: compaction, checkpoints, vacuum.

Every processor batch adds a small file or two per table. `maintain` (run it every hour or
so, e.g. `totes lake maintain`, while the pipeline keeps writing) per lake table:

1. compacts small files into bigger ones (`optimize.compact`); the change log is compacted
   partition by partition (`_commit_date`);
2. writes a checkpoint, so opening the table reads one Parquet file instead of many JSON
   commits (deltalake also checkpoints by itself: every 10 commits, see
   `delta_io.TABLE_PROPERTIES`, on tables created by this version, every 100 on older ones);
3. vacuums files that no version inside the time-travel window still needs
   (`retention_hours`, default 168 h = 7 days; shorter windows are allowed on purpose,
   `enforce_retention_duration=False`). Versions older than the window may no longer read.

Safe beside running writers: compaction only rewrites data into the same rows, appends never
conflict with it, and a merge or compaction that loses a commit race is retried (the
writer's merge re-reads and re-merges; compaction here simply runs again).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deltalake import DeltaTable

from lake.delta_io import retry_on_conflict
from lake.layout import DEAD_LETTERS, KINDS, PROGRESS, LakeLayout

DEFAULT_RETENTION_HOURS = 168


@dataclass
class TableMaintenance:
    uri: str
    files_removed: int = 0
    files_added: int = 0
    vacuumed: list[str] = field(default_factory=list)
    version: int | None = None


def compact(layout: LakeLayout, uri: str, target_size: int | None = None) -> dict:
    """Rewrite the small files of the table at `uri`; returns deltalake's metrics."""

    def run() -> dict:
        table = layout.open(uri)
        if table is None:
            return {}
        return table.optimize.compact(target_size=target_size)

    return retry_on_conflict(run)


def checkpoint(layout: LakeLayout, uri: str) -> None:
    table = layout.open(uri)
    if table is not None:
        table.create_checkpoint()


def vacuum(layout: LakeLayout, uri: str, retention_hours: int = DEFAULT_RETENTION_HOURS) -> list[str]:
    """Delete files unused by every version younger than `retention_hours`; returns them."""

    def run() -> list[str]:
        table = layout.open(uri)
        if table is None:
            return []
        return table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False)

    return retry_on_conflict(run)


def lake_uris(layout: LakeLayout) -> list[str]:
    """Every Delta table of the lake."""
    uris = [layout.uri(kind, table) for kind in KINDS for table in layout.tables(kind)]
    uris += [layout.uri(name) for name in (PROGRESS, DEAD_LETTERS)
             if DeltaTable.is_deltatable(layout.uri(name), storage_options=layout.storage_options or None)]
    return uris


def maintain(layout: LakeLayout, retention_hours: int = DEFAULT_RETENTION_HOURS,
             uris: list[str] | None = None) -> list[TableMaintenance]:
    """Compact, checkpoint and vacuum every lake table (or `uris`)."""
    report = []
    for uri in uris if uris is not None else lake_uris(layout):
        metrics = compact(layout, uri)
        checkpoint(layout, uri)
        removed = vacuum(layout, uri, retention_hours)
        table = layout.open(uri)
        report.append(TableMaintenance(
            uri, files_removed=int(metrics.get("numFilesRemoved", 0)), files_added=int(metrics.get("numFilesAdded", 0)),
            vacuumed=removed, version=None if table is None else table.version(),
        ))
    return report

