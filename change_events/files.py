"""Local state files (the reader's state and status, the poller's shard offsets): JSON that
a crash never leaves half written; and the paths of files kept in one folder (`PathIn`)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def atomic_write_json(path: Path, data, *, indent: int | None = None) -> None:
    """Write `data` as JSON to `path` through a scratch file beside it, replaced in one step:
    a reader of `path` sees the old content or the new, never part of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(data, indent=indent), encoding="utf-8")
    os.replace(scratch, path)


class PathIn:
    """A file's path in one of its owner's folders, as a read-only attribute:
    `log_file = PathIn("directory", "postgres.log")` reads `self.directory / "postgres.log"`
    at every access, so it follows the folder."""

    def __init__(self, folder: str, name: str) -> None:
        self.folder, self.name = folder, name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return Path(getattr(instance, self.folder)) / self.name

    def __set__(self, instance, value) -> None:
        raise AttributeError(f"{self.folder}/{self.name} follows its folder; it cannot be set")
