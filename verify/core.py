"""The pure core of `totes verify`: chunk plans, canonical row hashes, comparison, report.

No database, no lake: plain data in, plain data out (the adapters in this package read the
source, the lake and the warehouse).

- A table is cut into key ranges (`plan_chunks`): the same ranges on every side, so one
  chunk of the source is compared with the same chunk of the lake and of the warehouse. The
  first range is open below and the last open above, so a row outside the source's keys
  (an extra one) still falls in some chunk.
- A row's hash is DuckDB's 64-bit `hash()` over its typed columns (`row_hashes`), after
  both sides were given the same types (`align`): equal values hash equal, and no value is
  rendered as text (that cost more than the COPY itself).
  A chunk's digest is its row count and the sum of its row hashes modulo 2**64: independent
  of row order, and a single changed value changes it. It is made in one query, keeping no
  hash; the hashes are kept only for a chunk that differs.
- Only chunks whose digests differ are drilled into (`compare_chunk`): keys only one side
  has (missing, extra), and for keys on both sides with different hashes, the columns that
  differ.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

KEY_SAMPLE = 20
"""Keys of each kind a report lists per table (the counts are always whole)."""


# -- chunk plans -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRange:
    """`low <= key < high` on the first key column; None is unbounded."""

    index: int
    low: int | None
    high: int | None

    def sql(self, column: str) -> str:
        """The predicate on `column` (already quoted), for any SQL dialect."""
        parts = ([f"{column} >= {int(self.low)}"] if self.low is not None else []) + (
            [f"{column} < {int(self.high)}"] if self.high is not None else []
        )
        return " AND ".join(parts) or "true"


def plan_chunks(low: int | None, high: int | None, estimated_rows: float, chunk_rows: int) -> list[KeyRange]:
    """Ranges of about `chunk_rows` rows each over keys `low..high` (the source's smallest and
    largest), assuming keys spread evenly (serial keys do); one range for an empty table."""
    if low is None or high is None:
        return [KeyRange(0, None, None)]
    chunks = max(1, math.ceil(max(estimated_rows, 1) / max(chunk_rows, 1)))
    width = max(1, math.ceil((high - low + 1) / chunks))
    bounds = [low + width * i for i in range(1, chunks) if low + width * i <= high]
    edges: list[int | None] = [None, *bounds, None]
    return [KeyRange(i, edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


# -- canonical hashing -----------------------------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def align(rows: pa.Table, like: pa.Schema, columns: list[str]) -> pa.Table:
    """`rows` reduced to `columns`, each cast to its type in `like` (both sides of a
    comparison hash the same types); a column `like` lacks keeps its own type."""
    arrays = []
    for name in columns:
        column = rows.column(name)
        if name in like.names and column.type != like.field(name).type:
            column = column.cast(like.field(name).type)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, names=columns)


_connections = threading.local()


def _duckdb() -> duckdb.DuckDBPyConnection:
    """This thread's in-memory DuckDB. Opening one costs more than hashing 100,000 rows, so it
    is kept (a connection serves one thread at a time; the scheduled verify runs in its own)."""
    connection = getattr(_connections, "connection", None)
    if connection is None:
        connection = _connections.connection = duckdb.connect(config={"threads": 1})
    return connection


def row_hashes(rows: pa.Table, key: str, columns: list[str]) -> pa.Table:
    """(key, h) per row: h hashes every one of `columns` (typed; NULL hashes as itself),
    computed by DuckDB over the Arrow data, never row by row in Python."""
    connection = _duckdb().cursor()
    try:
        connection.register("r", rows)
        values = ", ".join(_q(c) for c in columns)
        return connection.sql(f"SELECT {_q(key)} AS k, hash({values}) AS h FROM r").to_arrow_table()  # nosec B608 # names quoted by _q()
    finally:
        connection.close()


@dataclass(frozen=True)
class Digest:
    rows: int
    total: int

    @staticmethod
    def of(rows: pa.Table, columns: list[str]) -> "Digest":
        """The digest of `rows` over `columns`: one pass of DuckDB over the Arrow data, the
        row hashes summed as they are made (none is kept: a chunk in sync costs only this)."""
        connection = _duckdb().cursor()
        try:
            connection.register("r", rows)
            values = ", ".join(_q(c) for c in columns)
            count, total = connection.execute(
                f"SELECT count(*), coalesce(sum(hash({values})::HUGEINT) % 18446744073709551616, 0)::UBIGINT "  # nosec B608 # names quoted by _q()
                "FROM r"
            ).fetchone()  # type: ignore[misc]
            return Digest(int(count), int(total))
        finally:
            connection.close()


# -- comparison ------------------------------------------------------------------------------


@dataclass
class TableReport:
    """One comparison of a side (the lake, or a warehouse table) with the source."""

    table: str
    side: str
    """'lake' or 'warehouse'."""
    source: str
    """The source table whose re-read repairs it."""
    lsn: int
    """The source LSN the side was read at."""
    rows: int = 0
    """Source rows compared (the expected rows, for a warehouse table)."""
    chunks: int = 0
    chunks_differing: int = 0
    missing: list[Any] = field(default_factory=list)
    """Keys the source has and this side lacks."""
    extra: list[Any] = field(default_factory=list)
    """Keys this side has and the source lacks."""
    different: dict[Any, list[str]] = field(default_factory=dict)
    """Key → the columns whose values differ."""
    note: str = ""

    @property
    def mismatched(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.different)

    @property
    def in_sync(self) -> bool:
        return self.mismatched == 0

    def as_dict(self) -> dict:
        return {
            "table": self.table,
            "side": self.side,
            "source": self.source,
            "lsn": self.lsn,
            "rows": self.rows,
            "chunks": self.chunks,
            "chunks_differing": self.chunks_differing,
            "in_sync": self.in_sync,
            "mismatched": self.mismatched,
            "missing": self.missing[:KEY_SAMPLE],
            "extra": self.extra[:KEY_SAMPLE],
            "different": [{"key": k, "columns": v} for k, v in list(self.different.items())[:KEY_SAMPLE]],
            "note": self.note,
        }


def compare_chunk(report: TableReport, key: str, columns: list[str], expected: pa.Table, actual: pa.Table) -> None:
    """Add one chunk's comparison to `report`: `expected` (from the source) and `actual` (the
    side), both with `columns` (the key among them) of the same types."""
    report.rows += expected.num_rows
    report.chunks += 1
    if Digest.of(expected, columns) == Digest.of(actual, columns):
        return
    report.chunks_differing += 1
    want, got = row_hashes(expected, key, columns), row_hashes(actual, key, columns)
    connection = _duckdb().cursor()
    try:
        connection.register("want", want)
        connection.register("got", got)
        connection.register("expected", expected)
        connection.register("actual", actual)
        report.missing += [
            k
            for (k,) in connection.execute(
                "SELECT k FROM want WHERE k NOT IN (SELECT k FROM got) ORDER BY k"
            ).fetchall()
        ]
        report.extra += [
            k
            for (k,) in connection.execute(
                "SELECT k FROM got WHERE k NOT IN (SELECT k FROM want) ORDER BY k"
            ).fetchall()
        ]
        differing = [
            k
            for (k,) in connection.execute(
                "SELECT want.k FROM want JOIN got USING (k) WHERE want.h <> got.h ORDER BY want.k"
            ).fetchall()
        ]
        if differing:
            checks = ", ".join(f"e.{_q(c)} IS DISTINCT FROM a.{_q(c)} AS {_q(c)}" for c in columns if c != key)
            connection.register("keys", pa.table({"k": pa.array(differing, want.schema.field("k").type)}))
            rows = connection.execute(
                f"SELECT e.{_q(key)}, {checks} FROM expected e JOIN actual a USING ({_q(key)}) "  # nosec B608 # names quoted by _q()
                f"WHERE e.{_q(key)} IN (SELECT k FROM keys) ORDER BY 1"
            ).fetchall()
            names = [c for c in columns if c != key]
            for row in rows:
                report.different[row[0]] = [name for name, differs in zip(names, row[1:]) if differs]
    finally:
        connection.close()


@dataclass
class Verification:
    """Every comparison of one run, at one source LSN."""

    lsn: int
    reports: list[TableReport]
    warehouse_lsn: int | None = None
    """The warehouse's own checkpoint, where its dimensions were compared."""

    @property
    def in_sync(self) -> bool:
        return all(r.in_sync for r in self.reports)

    @property
    def mismatched(self) -> int:
        return sum(r.mismatched for r in self.reports)

    def diverged_sources(self) -> list[str]:
        """The source tables to re-read, in order of first appearance."""
        return list(dict.fromkeys(r.source for r in self.reports if not r.in_sync))

    def as_dict(self) -> dict:
        from change_events import format_lsn

        return {
            "lsn": format_lsn(self.lsn),
            "warehouse_lsn": None if self.warehouse_lsn is None else format_lsn(self.warehouse_lsn),
            "in_sync": self.in_sync,
            "mismatched": self.mismatched,
            "tables": [dict(r.as_dict(), lsn=format_lsn(r.lsn)) for r in self.reports],
        }


def describe(report: TableReport) -> str:
    """One line saying how a side differs (the first few keys of each kind)."""

    def keys(items) -> str:
        shown = ", ".join(str(k) for k in list(items)[:5])
        return shown + (f" and {len(items) - 5:,} more" if len(items) > 5 else "")

    parts = []
    if report.missing:
        parts.append(f"missing {keys(report.missing)}")
    if report.extra:
        parts.append(f"extra {keys(report.extra)}")
    if report.different:
        sample = list(report.different.items())[:5]
        shown = "; ".join(f"{k} ({', '.join(c)})" for k, c in sample)
        more = len(report.different) - len(sample)
        parts.append(f"different {shown}" + (f" and {more:,} more" if more > 0 else ""))
    return "; ".join(parts) or "in sync"
