"""Reading a DuckDB warehouse while a sync writes it: the writer publishes a read-only copy.

A DuckDB file has one writing process and, meanwhile, no readers in other processes: the
writer holds an exclusive lock, so `totes query` beside `totes run` used to end in "Could not
set lock on file". PostgreSQL warehouses need nothing of this (readers and the sync share it
under MVCC).

So the writer publishes `<name>.published.duckdb` next to the warehouse
(`ReadCopyPublisher`, called after each sync commit), and readers open the warehouse itself
when no one writes it, else that copy (`attach_for_reading`, `connect_for_reading`).

Why this way, and not another:
- *Consistent.* The sync thread itself, right after its commit, runs `CHECKPOINT` (the file
  then holds every committed transaction, its WAL is empty) and copies the file before it
  writes again: nothing else writes that database, so the copy is one committed state, and the
  sync commits whole source transactions (up to the lake watermark), so the copy never holds
  half of one. A copy made by another process (or by another thread while the sync goes on)
  could catch the file between a commit and its checkpoint. (The bytes are copied by `cp`,
  not by the writer's process, which would lose its lock on the file: see `publish_copy`.)
- *Cheap.* On a warehouse of ~100k fact rows the checkpoint and the copy take 30-60 ms on a
  quiet machine, ~200 ms on a very busy one (`COPY FROM DATABASE` into a new file took 1-5 s,
  since it rebuilds every index; `python -m bench read_copy`, bench/README.md), and a copy is
  made at most every `min_interval` seconds (1 s): the sync loops wake at least that often,
  so a reader is at most a second or two behind the sync. A large warehouse costs more (the
  copy is linear in the file), so a running sync also paces its copies by their cost
  (`max_share`, `RUNNING_SHARE`: at most a tenth of its time): readers of a ~1 GB warehouse
  lag it by about ten seconds rather than the sync's latency growing with the warehouse.
- *Atomic for readers.* The copy is written beside the target and renamed over it; a reader
  that has the previous copy open goes on reading that one.
- *Simpler than serving reads from the sync over a socket:* readers keep plain DuckDB SQL
  (joins with the lake, ATTACH), and a sync that stopped still leaves its last state readable.

Readers open a file briefly and let go: a reader holding the warehouse itself would keep a
starting sync out (which waits a few seconds for such a lock, `targets.open_target`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess  # nosec B404 # cp, see publish_copy
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from warehouse_sync.schema import quote_identifier as q, quote_literal
from change_events.errors import Kind, TotesError

log = logging.getLogger("totes.sync.read_copy")

PUBLISHED_SUFFIX = ".published.duckdb"
DEFAULT_MIN_INTERVAL = 1.0
"""The least time in seconds between two published copies (the newest commit wins)."""
RUNNING_SHARE = 0.1
"""The share of a running sync's time its copies for readers may take (`ReadCopyPublisher`)."""


class WarehouseBusy(TotesError, RuntimeError):
    """The warehouse is being written and no copy for readers is published next to it."""

    kind = Kind.TRANSIENT


def published_path(warehouse: str | Path) -> Path:
    """Where the writer of `warehouse` publishes its read-only copy."""
    path = Path(warehouse)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(stem + PUBLISHED_SUFFIX)


def _locked(error: BaseException) -> bool:
    """`error` says another connection holds the file (another process's lock, or this
    process's own read-write connection)."""
    text = str(error)
    return "Could not set lock" in text or "different configuration" in text or "Conflicting lock" in text


def readable_path(warehouse: str | Path) -> Path:
    """The file a reader should open now: the warehouse itself when no one writes it, else
    the copy its writer publishes. `WarehouseBusy` when there is neither."""
    path = Path(warehouse)
    try:
        duckdb.connect(str(path), read_only=True).close()
        return path
    except (duckdb.IOException, duckdb.ConnectionException) as error:
        if not _locked(error):
            raise
    copy = published_path(path)
    if copy.exists():
        return copy
    raise WarehouseBusy(
        f"The warehouse {path} is being written and has no copy for readers yet",
        fix="wait for the sync's next commit, or stop the process that writes it.",
    )


def connect_for_reading(warehouse: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the warehouse's newest committed state another process can
    read. Close it soon (see the module docstring)."""
    for _ in range(3):  # the copy may be renamed away between choosing and opening it
        path = readable_path(warehouse)
        try:
            connection = duckdb.connect(str(path), read_only=True)
        except (duckdb.IOException, duckdb.ConnectionException) as error:
            if not _locked(error):
                raise
            continue
        connection.execute("SET TimeZone = 'UTC'")
        return connection
    raise WarehouseBusy(f"The warehouse {warehouse} could not be opened for reading: try again.")


def attach_for_reading(connection: duckdb.DuckDBPyConnection, warehouse: str | Path, alias: str = "warehouse") -> Path:
    """ATTACH the warehouse (or its published copy) read-only into `connection` as `alias`;
    return the file attached."""
    for _ in range(3):
        path = readable_path(warehouse)
        try:
            connection.execute(f"ATTACH {quote_literal(str(path))} AS {q(alias)} (READ_ONLY)")
            return path
        except (duckdb.IOException, duckdb.ConnectionException, duckdb.BinderException) as error:
            if not _locked(error):
                raise
    raise WarehouseBusy(f"The warehouse {warehouse} could not be opened for reading: try again.")


def publish_copy(connection: duckdb.DuckDBPyConnection, database: Path, target: Path) -> Path:
    """Checkpoint the database file `connection` writes and copy it to `target` atomically
    (temp file + rename). Call it from the writing thread, between its transactions.

    The copy is made by a `cp` process, never by this one: DuckDB's lock on the file is a
    POSIX record lock, which this process would lose the moment it closed any descriptor of
    that file (another writer could then open it)."""
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    connection.execute("CHECKPOINT")
    copy = subprocess.run(
        [_CP, "--", str(database), str(temporary)],  # nosec B603 # cp of our own files, no shell
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if copy.returncode != 0:
        raise OSError(f"cp failed: {copy.stderr.strip() or copy.returncode}")
    os.replace(temporary, target)
    return target


_CP = shutil.which("cp") or "/bin/cp"


class ReadCopyPublisher:
    """Publishes the copy of a DuckDB warehouse for readers in other processes.

    The sync calls `after_sync(changed)` after each run (changed: it committed something), in
    its own thread; a copy is made when something changed and the last copy is at least
    `min_interval` seconds old. `close()` publishes what is still unpublished. For a
    PostgreSQL warehouse (or `:memory:`) every call does nothing."""

    def __init__(
        self,
        target,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        max_share: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.min_interval = min_interval
        self.max_share = max_share
        """With a share (0 < share <= 1), copies take at most that share of the sync's time: after
        a copy that took C seconds the next waits at least C * (1 / share - 1). A large warehouse
        (~1 GB at 5M orders: ~1 s to checkpoint and copy) is then copied less often, and its
        readers lag the sync by that much, instead of the sync spending most of its time copying."""
        self.published = 0
        self.last_seconds: float | None = None
        self._target = target
        self._clock = clock
        path = getattr(target, "path", None)
        self.enabled = getattr(target, "dialect", None) == "duckdb" and bool(path) and path != ":memory:"
        self.database = Path(path) if self.enabled else None
        self.path = published_path(path) if self.enabled else None
        self._pending = self.enabled  # a first copy of whatever the warehouse holds now
        self._last = float("-inf")

    def pause(self) -> float:
        """The least time between the end of one copy and the start of the next."""
        if not self.max_share or self.last_seconds is None:
            return self.min_interval
        return max(self.min_interval, self.last_seconds * (1.0 / self.max_share - 1.0))

    def after_sync(self, changed: bool) -> None:
        if not self.enabled:
            return
        self._pending = self._pending or changed
        if self._pending and self._clock() - self._last >= self.pause():
            self.publish_now()

    def publish_now(self) -> None:
        if not self.enabled:
            return
        started = self._clock()
        try:
            publish_copy(self._target.connection, self.database, self.path)
        except (duckdb.Error, OSError) as error:  # readers keep the previous copy; the next run tries again
            log.warning("could not publish the warehouse's copy for readers: %s", error)
            return
        finally:
            self._last = self._clock()
        self.last_seconds = self._last - started
        self.published += 1
        self._pending = False

    def close(self) -> None:
        """Publish the last committed state if it is not published yet."""
        if self.enabled and self._pending:
            self.publish_now()
