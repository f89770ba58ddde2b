"""Search every file of a lake or a warehouse, and every Kinesis record, for values that must
not be there: raw bytes, and the decoded values of every Parquet file, every DuckDB table and
every record (compression would hide a value from a byte search)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lake.layout import LakeLayout
from tests.stream_helpers import read_stream


def _texts(rows: Iterable) -> bytes:
    return "\n".join(str(v) for v in rows).encode("utf-8", "surrogatepass")


def _parquet_values(source) -> bytes:
    table = pq.read_table(source)
    return _texts(v for column in table.columns for v in column.to_pylist())


def folder_contents(root: Path, *, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) of every file under `root` (but those under a `skip` folder), and of
    every Parquet file's decoded values."""
    yield from store_contents(pafs.LocalFileSystem(), str(root), skip=skip)


def lake_contents(layout: LakeLayout, *, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, bytes]]:
    """The same for every object of a lake, in a folder or on S3."""
    fs, root = layout.filesystem(layout.root)
    yield from store_contents(fs, root, skip=skip)


def store_contents(fs: pafs.FileSystem, root: str, *, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, bytes]]:
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File or any(f"/{s}/" in info.path for s in skip):
            continue
        with fs.open_input_stream(info.path) as stream:
            data = stream.read()
        yield info.path, data
        if data[:4] == b"PAR1":
            yield f"{info.path} (decoded)", _parquet_values(pa.BufferReader(data))


def warehouse_contents(path: Path) -> Iterator[tuple[str, bytes]]:
    """The DuckDB file's bytes (and its WAL's), and every value of every table in it."""
    for candidate in (path, Path(f"{path}.wal")):
        if candidate.exists():
            yield str(candidate), candidate.read_bytes()
    with duckdb.connect(str(path), read_only=True) as conn:
        for schema, table in conn.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall():
            rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()  # nosec B608 # catalog names
            yield f"{path}:{table}", _texts(v for row in rows for v in row)


def kinesis_contents(client, stream: str) -> Iterator[tuple[str, bytes]]:
    """Every record of every shard, from the oldest: its bytes and its decoded events' values."""
    for shard, records in read_stream(client, stream).items():
        for n, (data, record) in enumerate(records):
            yield f"{shard}/{n}", data
            yield (
                f"{shard}/{n} (decoded)",
                _texts(v for e in record.events for row in (e.after or {}, e.before or {}) for v in row.values()),
            )


def traces(contents: Iterable[tuple[str, bytes]], values: Iterable[str]) -> list[tuple[str, str]]:
    """(where, value) of every value found in `contents`."""
    needles = sorted({v.encode("utf-8") for v in values if v}, key=len, reverse=True)
    found = []
    for where, data in contents:
        found += [(where, needle.decode()) for needle in needles if needle in data]
    return found
