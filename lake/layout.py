"""Where the lake's tables live, on a local folder or under `s3://bucket/prefix`.

    <root>/changes/<schema.table>    append-only change log of one source table
    <root>/tables/<schema.table>     current state of that table, merged by primary key
    <root>/_progress                 watermark markers passed, per shard
    <root>/_dead_letters             records that could not be stored, with the reason

Folder names keep the schema ('changes/public.sales_order'), so two source schemas never
share a folder. A source name may hold any character; in its folder name every character
outside `A-Z a-z 0-9 _ . -` is written as `~` and the hex of its UTF-8 bytes ('we"ird t'
→ 'we~22ird~20t'), reversibly (`folder_name`, `table_name`). Plain names are unchanged, and
a local folder written before this escaping existed keeps being used. Other readers need
it: polars 2.1 cannot read a Delta table whose path needs URL escaping (spaces, quotes,
backticks, non-ASCII), and deltalake decodes a `%` in a local path.

`table_size` says what a table costs: every byte stored under its folder (data of every
version still kept, and its `_delta_log`) against its live bytes, the data files of the
current version; their ratio is the table's storage amplification.

The same code serves both storages: for S3, `storage_options` are deltalake's
(`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, keys, region); `storage_options_from_env` builds them
from the standard AWS environment variables. Commits on S3 use conditional PUTs (deltalake
1.x), so no lock table is needed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

CHANGES = "changes"
STATE = "tables"
PROGRESS = "_progress"
DEAD_LETTERS = "_dead_letters"
KINDS = (CHANGES, STATE)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_ESCAPED = re.compile(r"(?:~[0-9A-F]{2})+")


@cache
def _local_filesystem() -> pafs.LocalFileSystem:
    """pyarrow's local filesystem, made on first use: opening a table and reading its app
    transactions (a catch-up with nothing new) needs no Arrow."""
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


def folder_name(table: str) -> str:
    """The folder of source table `table`: itself when plain, else escaped (see above)."""
    return _UNSAFE.sub(lambda m: "".join(f"~{b:02X}" for b in m.group().encode("utf-8")), table)


def table_name(folder: str) -> str:
    """The source table whose folder is `folder` (the inverse of `folder_name`)."""
    return _ESCAPED.sub(lambda m: bytes.fromhex(m.group().replace("~", "")).decode("utf-8", "replace"), folder)


# Environment variable → deltalake storage option (same names; the first one present wins).
_ENV_OPTIONS = {
    "AWS_ENDPOINT_URL": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "AWS_ALLOW_HTTP": ("AWS_ALLOW_HTTP",),
    "AWS_ACCESS_KEY_ID": ("AWS_ACCESS_KEY_ID",),
    "AWS_SECRET_ACCESS_KEY": ("AWS_SECRET_ACCESS_KEY",),
    "AWS_SESSION_TOKEN": ("AWS_SESSION_TOKEN",),
    "AWS_REGION": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}


@dataclass(frozen=True)
class TableSize:
    """What one lake table occupies: `stored_bytes` on disk or S3 (every retained version's
    data and the log), of which `live_bytes` are the data files of the current version."""

    uri: str
    stored_bytes: int
    live_bytes: int
    files: int

    @property
    def amplification(self) -> float | None:
        return self.stored_bytes / self.live_bytes if self.live_bytes else None


def storage_options_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """deltalake storage options for S3 from the standard AWS variables that are set.
    A plain-http endpoint (a local moto or MinIO) turns AWS_ALLOW_HTTP on."""
    env = os.environ if env is None else env
    options: dict[str, str] = {}
    for option, names in _ENV_OPTIONS.items():
        for name in names:
            if env.get(name):
                options[option] = env[name]
                break
    if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options.setdefault("AWS_ALLOW_HTTP", "true")
    return options


class LakeLayout:
    """The lake's root and how to reach it; names every table's URI."""

    def __init__(self, root: str | Path, storage_options: Mapping[str, str] | None = None):
        root = str(root)
        self.is_s3 = root.startswith("s3://")
        if self.is_s3:
            self.root = root.rstrip("/")
            self.storage_options = dict(storage_options) if storage_options is not None else storage_options_from_env()
        else:
            self.root = str(Path(root).expanduser().resolve())
            self.storage_options = dict(storage_options or {})
        self._s3: pafs.S3FileSystem | None = None

    def __repr__(self) -> str:
        return f"LakeLayout({self.root!r})"

    # -- names ---------------------------------------------------------------------------
    def uri(self, kind: str, table: str | None = None) -> str:
        if table is None:
            return f"{self.root}/{kind}"
        if table in ("", ".", ".."):
            raise ValueError(f"not a table name: {table!r}")
        folder = folder_name(table)
        if folder != table and not self.is_s3 and "/" not in table and Path(self.root, kind, table).is_dir():
            folder = table  # written before folder names were escaped: keep using it
        return f"{self.root}/{kind}/{folder}"

    def changes_uri(self, table: str) -> str:
        return self.uri(CHANGES, table)

    def state_uri(self, table: str) -> str:
        return self.uri(STATE, table)

    # -- opening -------------------------------------------------------------------------
    def open(self, uri: str, version: int | None = None) -> DeltaTable | None:
        """The Delta table at `uri` (at `version`), or None when there is none yet."""
        try:
            return DeltaTable(uri, version=version, storage_options=self.storage_options or None)
        except TableNotFoundError:
            return None

    def has_commit(self, uri: str, version: int) -> bool:
        """Whether the table at `uri` has a commit `version`: one file lookup (each commit is
        `_delta_log/<version>.json`), where `DeltaTable.update_incremental` lists the log.
        A commit whose entry the log cleanup removed (lake.maintenance) is known from the
        checkpoint that replaced it, so a handle left at an old version still sees that the
        table moved on."""
        import pyarrow.fs as pafs

        filesystem, path = self.filesystem(f"{uri}/_delta_log/{version:020d}.json")
        if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
            return True
        return self.checkpointed_version(uri) >= version

    def checkpointed_version(self, uri: str) -> int:
        """The version of the table's latest checkpoint (`_last_checkpoint`), -1 without one."""
        filesystem, path = self.filesystem(f"{uri}/_delta_log/_last_checkpoint")
        try:
            with filesystem.open_input_stream(path) as stream:
                return int(json.loads(stream.read())["version"])
        except (FileNotFoundError, OSError, ValueError, KeyError):
            return -1

    def tables(self, kind: str = CHANGES) -> list[str]:
        """Source tables that have a `kind` folder (changes or tables), sorted."""
        import pyarrow.fs as pafs

        filesystem, base = self.filesystem(self.uri(kind))
        selector = pafs.FileSelector(base, allow_not_found=True)
        names = [
            table_name(info.base_name)
            for info in filesystem.get_file_info(selector)
            if info.type == pafs.FileType.Directory
        ]
        # A table is there once its first commit is (or a checkpoint replaced it): one or two
        # file lookups each, where opening it would replay its log.
        return sorted(name for name in names if self.has_commit(self.uri(kind, name), 0))

    # -- sizes -----------------------------------------------------------------------------
    def stored_bytes(self, uri: str) -> tuple[int, int]:
        """Bytes and number of files under `uri` (every file, listed recursively)."""
        import pyarrow.fs as pafs

        filesystem, path = self.filesystem(uri)
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        files = [info for info in infos if info.type == pafs.FileType.File]
        return sum(info.size or 0 for info in files), len(files)

    def table_size(self, uri: str, table: DeltaTable | None = None) -> TableSize | None:
        """Stored and live bytes of the Delta table at `uri` (None when there is none);
        `table`: its handle, when the caller has it open and up to date."""
        import pyarrow as pa

        table = table if table is not None else self.open(uri)
        if table is None:
            return None
        live = sum(pa.table(table.get_add_actions(flatten=True)).column("size_bytes").to_pylist())
        stored, files = self.stored_bytes(uri)
        return TableSize(uri, stored, live, files)

    # -- pyarrow access (for datasets that DuckDB scans) ----------------------------------
    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the path of `uri` in it (native, not deltalake's
        handler: scans through that handler can abort the process at exit)."""
        if not self.is_s3:
            return _local_filesystem(), uri
        if self._s3 is None:
            self._s3 = self._s3_filesystem()
        return self._s3, uri.removeprefix("s3://")

    def _s3_filesystem(self) -> pafs.S3FileSystem:
        import pyarrow.fs as pafs

        options = self.storage_options
        endpoint = options.get("AWS_ENDPOINT_URL")
        kwargs: dict = {}
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        if options.get("AWS_ACCESS_KEY_ID"):
            kwargs["access_key"] = options["AWS_ACCESS_KEY_ID"]
            kwargs["secret_key"] = options.get("AWS_SECRET_ACCESS_KEY")
            kwargs["session_token"] = options.get("AWS_SESSION_TOKEN")
        if options.get("AWS_REGION"):
            kwargs["region"] = options["AWS_REGION"]
        return pafs.S3FileSystem(**kwargs)

    def subtree(self, uri: str) -> pafs.FileSystem:
        """A filesystem rooted at `uri` (what `DeltaTable.to_pyarrow_dataset` expects)."""
        import pyarrow.fs as pafs

        filesystem, path = self.filesystem(uri)
        return pafs.SubTreeFileSystem(path, filesystem)
