"""Keeping the lake fast and its storage bounded: compaction, checkpoints, vacuum, log cleanup.

Every processor batch adds a small file per table, and every state merge rewrites the files
holding the rows it changes, so a lake that is never cleaned grows by the bytes written, not
by the data it holds. `maintain` (run by `totes run`/`totes demo` as the lake grows, see
`MaintenanceCadence`, or by `totes lake maintain`) per lake table:

1. records the time-travel retention in the table's own properties
   (`delta.deletedFileRetentionDuration` and `delta.logRetentionDuration`, both = the
   retention), so every Delta client, not only this one, keeps the same window; and turns
   off the writers' own log cleanup (`delta.enableExpiredLogCleanup`), so only maintenance
   deletes anything (in AWS only its role may). It also keeps file statistics in the log for
   the columns that reads prune on (`delta.dataSkippingStatsColumns`: positions, and the key
   of a state table), not for every column: that halves what each commit adds to the log;
   and it gives tables made with another checkpoint interval the writers' (every 100
   commits, `TABLE_PROPERTIES` in lake.delta_io): checkpoints come mostly from step 4;
2. compacts small files into bigger ones (`optimize.compact`); the change log is compacted
   partition by partition (`_commit_date`), and a partition already in one file is left alone.
   A state table is kept in files of about `STATE_FILE_BYTES`, sorted by key: a merge
   rewrites every file that holds a row it changes, so one big file (what a snapshot
   writes) would be rewritten whole by every merge that touches an old row. A state table
   with a file over four times that size is rewritten once into such files (`optimize.z_order`
   by its key); after that, compaction only packs small files up to that size;
3. vacuums the data files that no version younger than the retention still uses, in full
   mode: every file under the table is listed, so files that no commit ever named (a commit
   race lost by a writer leaves its files behind) go too, once older than the retention,
   and so do files whose removal record a checkpoint has already dropped;
4. writes a checkpoint, then removes the `_delta_log` entries older than the retention that
   the checkpoint made unnecessary (`cleanup_metadata`).

What the retention means: every version that was current at some moment within the last
`retention` can be read, by version or by time (its files and log entries are kept); older
versions are gone (`load_as_version` fails once their log entries are cleaned up, reads fail
once their files are vacuumed). Stored bytes are then about the live bytes, plus what was
written during the last `retention` (bench/README.md, `storage`, measures it).

The change logs are append-only: compaction rewrites their rows into fewer files and never
drops one, so the current version of a change log always holds every event ever written.
Vacuum there removes only the small files that a compaction already copied; what the
warehouse sync reads (the events after its checkpoint LSN, from the current version, or from
the commits since its last run with a fall back to the current version when those commits'
files are gone) can never be lost by a retention shorter than the sync's lag. Time travel by
source LSN (`state_as_of_lsn`) rebuilds from the change log and so works for every LSN, beyond
the retention too.

Safe beside running writers and readers: vacuum only deletes files that left the table more
than `retention` ago, and `MIN_RETENTION` keeps that longer than any read or merge in flight
holds on to an older version. Compaction only rewrites data into the same rows, appends
never conflict with it, and a merge or compaction that loses a commit race is retried.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import timedelta

import pyarrow as pa
from deltalake import DeltaTable

from lake.delta_io import TABLE_PROPERTIES, retry_on_conflict
from lake.retention import (  # noqa: F401 - the retention is part of this module's interface
    DEFAULT_RETENTION,
    DEMO_RETENTION,
    MIN_RETENTION,
    RetentionError,
    format_retention,
    parse_retention,
)
from lake.layout import CHANGES, DEAD_LETTERS, KINDS, PROGRESS, STATE, LakeLayout, TableSize
from lake.changelog import PRUNED_ON as CHANGE_LOG_PRUNED_ON
from lake.state import PRIMARY_KEY_PROPERTY, key_columns

STATE_FILE_BYTES = 32 * 1024
"""Target size of a state table's files: what a merge that changes one old row rewrites."""
CHANGES_FILE_BYTES = 128 * 1024
"""Target size of a change log's files. Compaction packs files smaller than this, so each
round rewrites at most about this much of a partition that is still growing (today's), and
the rewritten copy stays for the retention: at 512 KiB the busy tables' copies were several
MiB of a demo lake. A day of the demo's busiest table is a few dozen such files."""
COMPACT_FROM_FILES = 8
"""The running pipeline's rounds compact a table only once it holds this many files under its
target size (`maintain(compact_from=...)`): packing two or three small files each round
rewrote the table's growing file (up to `CHANGES_FILE_BYTES`) every round, a copy kept for the
whole retention each time: at light load most of what the lake stored over its live data.
So a table holds fewer than this many small files beside its full ones: its file count
follows its data."""
RETENTION_PROPERTIES = ("delta.deletedFileRetentionDuration", "delta.logRetentionDuration")
ONLY_MAINTENANCE_DELETES = {"delta.enableExpiredLogCleanup": "false"}
STATS_COLUMNS = "delta.dataSkippingStatsColumns"

_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # other key names keep statistics on every column


def retention_interval(retention: timedelta) -> str:
    """The retention as a Delta table property value ('interval 3600 seconds')."""
    return f"interval {int(retention.total_seconds())} seconds"


@dataclass
class TableMaintenance:
    uri: str
    files_removed: int = 0
    files_added: int = 0
    vacuumed: list[str] = field(default_factory=list)
    version: int | None = None
    size: TableSize | None = None
    """Stored and live bytes after this round."""


class _Opened:
    """One table's handle for a whole round: opened once (replaying its log is most of what a
    small table's round costs), then brought up to date with the commits since (only the new
    ones are read) before each step."""

    def __init__(self, layout: LakeLayout, uri: str):
        self.layout, self.uri = layout, uri
        self._table: DeltaTable | None = None

    def __call__(self) -> DeltaTable | None:
        if self._table is None:
            self._table = self.layout.open(self.uri)
        else:
            self._table.update_incremental()
        return self._table


def _opener(layout: LakeLayout, uri: str, opened: _Opened | None) -> _Opened:
    return opened if opened is not None else _Opened(layout, uri)


def compact(layout: LakeLayout, uri: str, target_size: int | None = None, *, opened: _Opened | None = None) -> dict:
    """Rewrite the small files of the table at `uri`; returns deltalake's metrics."""
    open_table = _opener(layout, uri, opened)

    def run() -> dict:
        table = open_table()
        if table is None:
            return {}
        return table.optimize.compact(target_size=target_size)

    return retry_on_conflict(run)


def compact_state(
    layout: LakeLayout, uri: str, file_bytes: int = STATE_FILE_BYTES, *, opened: _Opened | None = None
) -> dict:
    """Keep a state table in files of about `file_bytes`, sorted by key (see step 2 above)."""
    open_table = _opener(layout, uri, opened)

    def run() -> dict:
        table = open_table()
        if table is None:
            return {}
        sizes = pa.table(table.get_add_actions(flatten=True)).column("size_bytes").to_pylist()
        keys = table.metadata().configuration.get(PRIMARY_KEY_PROPERTY)
        if keys and any(size > 4 * file_bytes for size in sizes):
            return table.optimize.z_order(key_columns(keys), target_size=file_bytes)
        return table.optimize.compact(target_size=file_bytes)

    return retry_on_conflict(run)


def _stats_columns(uri: str, layout: LakeLayout, configuration: dict) -> dict[str, str]:
    """The columns whose statistics the log keeps: what the lake's reads and merges prune on."""
    if uri.startswith(layout.uri(CHANGES) + "/"):
        return {STATS_COLUMNS: ",".join(CHANGE_LOG_PRUNED_ON)}
    keys = key_columns(configuration[PRIMARY_KEY_PROPERTY]) if PRIMARY_KEY_PROPERTY in configuration else []
    if uri.startswith(layout.uri(STATE) + "/") and keys and all(_PLAIN_NAME.match(k) for k in keys):
        return {STATS_COLUMNS: ",".join(keys + ["_lsn", "_seq", "_deleted"])}
    return {}


def keep_retention(layout: LakeLayout, uri: str, retention: timedelta, *, opened: _Opened | None = None) -> None:
    """Set the table's retention properties to `retention`, with the others of step 1 (one
    commit, only when they differ)."""
    open_table = _opener(layout, uri, opened)

    def run() -> None:
        table = open_table()
        if table is None:
            return
        configuration = table.metadata().configuration
        wanted = (
            dict.fromkeys(RETENTION_PROPERTIES, retention_interval(retention))
            | ONLY_MAINTENANCE_DELETES
            | TABLE_PROPERTIES
            | _stats_columns(uri, layout, configuration)
        )
        if any(configuration.get(name) != value for name, value in wanted.items()):
            table.alter.set_table_properties(wanted)

    retry_on_conflict(run)


def checkpoint(layout: LakeLayout, uri: str, *, opened: _Opened | None = None) -> None:
    """Checkpoint the table, then drop the log entries older than its log retention."""
    table = _opener(layout, uri, opened)()
    if table is not None:
        table.create_checkpoint()
        table.cleanup_metadata()


def vacuum(layout: LakeLayout, uri: str, *, opened: _Opened | None = None) -> list[str]:
    """Delete the files no version younger than the table's retention uses, and files older than
    it that no commit names; returns them."""
    open_table = _opener(layout, uri, opened)

    def run() -> list[str]:
        table = open_table()
        if table is None:
            return []
        return table.vacuum(retention_hours=None, dry_run=False, enforce_retention_duration=True, full=True)

    return retry_on_conflict(run)


def lake_uris(layout: LakeLayout) -> list[str]:
    """Every Delta table of the lake."""
    uris = [layout.uri(kind, table) for kind in KINDS for table in layout.tables(kind)]
    uris += [
        layout.uri(name)
        for name in (PROGRESS, DEAD_LETTERS)
        if DeltaTable.is_deltatable(layout.uri(name), storage_options=layout.storage_options or None)
    ]
    return uris


def lake_sizes(layout: LakeLayout) -> list[TableSize]:
    """Stored and live bytes of every lake table."""
    return [size for uri in lake_uris(layout) if (size := layout.table_size(uri)) is not None]


def lake_stored_bytes(layout: LakeLayout) -> int:
    """Bytes stored by every lake table: a listing per top folder, no table opened (cheap
    enough to ask every few seconds). Local state (`_local`) is not the lake's."""
    return sum(layout.stored_bytes(layout.uri(name))[0] for name in (*KINDS, PROGRESS, DEAD_LETTERS))


def worth_compacting(
    layout: LakeLayout, uri: str, target_size: int, compact_from: int, *, opened: _Opened | None = None
) -> bool:
    """Whether the table holds `compact_from` files under `target_size` (or, for a state
    table, a file to split: step 2)."""
    table = _opener(layout, uri, opened)()
    if table is None:
        return False
    sizes = pa.table(table.get_add_actions(flatten=True)).column("size_bytes").to_pylist()
    is_state = uri.startswith(layout.uri(STATE) + "/")
    return sum(size < target_size for size in sizes) >= compact_from or (
        is_state and any(size > 4 * target_size for size in sizes)
    )


def maintain(
    layout: LakeLayout,
    retention: timedelta = DEFAULT_RETENTION,
    uris: list[str] | None = None,
    *,
    compact_from: int = 2,
) -> list[TableMaintenance]:
    """Keep `retention`, compact, checkpoint, clean the log and vacuum every lake table (or `uris`).
    A table is compacted once it has `compact_from` small files (`COMPACT_FROM_FILES` in the
    running pipeline; 2, every chance, on demand). The library takes any retention; the
    commands refuse one below `MIN_RETENTION`."""
    report = []
    for uri in uris if uris is not None else lake_uris(layout):
        opened = _Opened(layout, uri)
        keep_retention(layout, uri, retention, opened=opened)
        is_state = uri.startswith(layout.uri(STATE) + "/")
        target = STATE_FILE_BYTES if is_state else CHANGES_FILE_BYTES
        metrics: dict = {}
        if compact_from <= 2 or worth_compacting(layout, uri, target, compact_from, opened=opened):
            metrics = (
                compact_state(layout, uri, opened=opened)
                if is_state
                else compact(layout, uri, CHANGES_FILE_BYTES, opened=opened)
            )
        removed = vacuum(layout, uri, opened=opened)
        checkpoint(layout, uri, opened=opened)
        table = opened()
        report.append(
            TableMaintenance(
                uri,
                files_removed=int(metrics.get("numFilesRemoved", 0)),
                files_added=int(metrics.get("numFilesAdded", 0)),
                vacuumed=removed,
                version=None if table is None else table.version(),
                size=None if table is None else layout.table_size(uri, table),
            )
        )
    return report


@dataclass
class MaintenanceCadence:
    """When the next round is due: once the lake has grown by `growth` times its live bytes
    since the last round (what was written, not the clock, is what a round can reclaim), or
    after `every` seconds at the latest; never sooner than `min_gap` seconds after the last.

    Pure: the caller passes the clock and the lake's stored bytes."""

    every: float = 3600.0
    growth: float = 0.5
    min_gap: float = 10.0
    last_at: float = field(default_factory=time.monotonic)
    last_stored: int | None = None
    last_live: int = 0

    @classmethod
    def for_retention(cls, retention: timedelta, every: float) -> "MaintenanceCadence":
        """Rounds no closer than a sixth of the retention (and 10 s): a round reclaims only
        what fell out of the retention window, so rounds closer than that mostly rewrite files
        whose old copies are kept anyway, and take CPU from the writers (a 1 h retention
        rounds every 10 min at most; the demo's 1 min, every 10 s)."""
        gap = max(10.0, retention.total_seconds() / 6)
        return cls(every=every, min_gap=min(gap, every))

    def too_soon(self, now: float) -> bool:
        """Within `min_gap` of the last round: not due, whatever the lake holds (so the
        caller need not measure it)."""
        return now - self.last_at < self.min_gap

    def due(self, now: float, stored: int) -> bool:
        waited = now - self.last_at
        if self.too_soon(now):
            return False
        if waited >= self.every:
            return True
        if self.last_stored is None:
            return True  # no round yet: the first one measures the lake
        return stored - self.last_stored >= self.growth * max(self.last_live, 1)

    def done(self, now: float, sizes: list[TableSize]) -> None:
        self.last_at = now
        self.last_stored = sum(s.stored_bytes for s in sizes)
        self.last_live = sum(s.live_bytes for s in sizes)


@dataclass
class SettledTables:
    """Tables a running pipeline's round may leave out, so that its cost follows what was
    written, not the number of tables: a table is settled once a round found it at the same
    version at least `retention` seconds after a round first saw that version (so that round
    vacuumed and cleaned up all its last change left behind), and stays settled while it has
    no newer commit. Static tables and idle shards' tables then cost one file lookup a round.

    Pure apart from `moved(uri, version)` (does the table have that commit yet?); the caller
    passes the clock."""

    retention: float
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    """uri -> (its version after a round, when a round first saw that version)"""
    _settled: set[str] = field(default_factory=set)
    _sizes: dict[str, TableSize] = field(default_factory=dict)

    def due(self, uris: list[str], moved) -> list[str]:
        """The tables of `uris` this round should maintain."""
        return [uri for uri in uris if uri not in self._settled or moved(uri, self._seen[uri][0] + 1)]

    def after_round(self, now: float, report: list[TableMaintenance], uris: list[str]) -> list[TableSize]:
        """Note what the round did; the sizes of every table of `uris`, skipped ones as they were."""
        for table in report:
            if table.size is not None:
                self._sizes[table.uri] = table.size
            if table.version is None:
                continue
            seen = self._seen.get(table.uri)
            if seen is None or seen[0] != table.version:
                self._seen[table.uri] = (table.version, now)
                self._settled.discard(table.uri)
            elif now - seen[1] >= self.retention + 1.0:  # a second for the clocks of the commits
                self._settled.add(table.uri)
        return [self._sizes[uri] for uri in uris if uri in self._sizes]
