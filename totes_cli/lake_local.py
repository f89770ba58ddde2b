"""The names a local lake fixes for every command that works on it.

`totes run` and `totes reader` on the same local lake must read the same replication slot
and keep the reader's state in the same place, or the second one to start takes a new
snapshot from a new slot while the first slot holds WAL back for ever. The slot is derived
from the lake's absolute path at the first use and remembered in `<lake>/_local/pipeline.json`;
a lake on S3 (or none) has no local state and the slot is `totes_cdc`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from totes_cli.settings import DEFAULT_SLOT


def local_dir(lake: str | None) -> Path | None:
    """`<lake>/_local` for a lake on this machine, None for a lake on S3 or no lake."""
    if not lake or "://" in lake:
        return None
    return Path(lake) / "_local"


def remembered(lake: str | None, slot: str | None = None) -> dict:
    """The names fixed at the first use of this lake ({"slot": ...}), remembered in it.
    `slot` names the slot of a first use; afterwards the remembered one stays."""
    local = local_dir(lake)
    if local is None:
        return {"slot": slot or DEFAULT_SLOT}
    path = local / "pipeline.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if "slot" not in data:
        digest = hashlib.sha1(str(Path(lake).resolve()).encode(), usedforsecurity=False).hexdigest()[:10]
        data["slot"] = slot or f"totes_{digest}"
        local.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data), encoding="utf-8")
    return data
