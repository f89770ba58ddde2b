"""Local state files (the reader's state and status, the poller's shard offsets): JSON that
a crash never leaves half written."""

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
