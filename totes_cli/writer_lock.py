"""The lake's writer lock: `totes run`, `totes processor` and `totes sync` hold it shared while
they write; `totes lake forget` takes it alone, so it never vacuums (with no retention) files a
running writer has just written or is still reading.

An OS file lock (flock) rather than a status file or the replication slot: the kernel lets
go of it when its process dies however it dies, so a crash leaves no stale lock, and it
needs no source connection (forget has none). A local lake keeps it in `<lake>/_local`; a
lake on S3 in `$TOTES_HOME/locks`, which covers the processes of this machine only (a
pipeline in AWS is stopped by its own means first).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from totes_cli.bootstrap import StatePaths


class LakeBusy(Exception):
    """The lock is held the other way: its message is one sentence saying what to do."""


def lock_path(lake: str, home: Path) -> Path:
    return StatePaths(lake, Path(home)).writers_lock


@contextmanager
def _locked(path: Path, mode: int) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def writing(lake: str, home: Path) -> Iterator[None]:
    """Held (shared: writers run side by side) for as long as a command writes the lake."""
    with _locked(lock_path(lake, home), fcntl.LOCK_SH) as held:
        if not held:
            raise LakeBusy(f"`totes lake forget` is erasing from the lake {lake}: start again once it has finished.")
        yield


@contextmanager
def alone(lake: str, home: Path) -> Iterator[None]:
    """Held (exclusive) while forget rewrites and vacuums the lake and the warehouse."""
    with _locked(lock_path(lake, home), fcntl.LOCK_EX) as held:
        if not held:
            raise LakeBusy(
                f"The pipeline is running on the lake {lake} (totes run, processor or sync): stop it "
                "first, then forget (its vacuum keeps no retention, so a running writer's files could go)."
            )
        yield
