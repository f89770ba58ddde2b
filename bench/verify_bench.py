"""`python -m bench verify`: what `totes verify` costs the source, against one COPY of it.

A fresh embedded totesys gets 1,000,000 generated sales orders (100,000 with --quick). In the
same run, back to back: `COPY sales_order TO STDOUT` into nothing (the baseline), then the
source side of a verification of sales_order (verify/source.py: a temporary slot's exported
snapshot, key-range chunks read over ADBC's binary COPY into Arrow and typed as the lake types
them, each chunk's row hashes computed by DuckDB: verify/core.py), the same read through the
text COPY it replaced (pyarrow's CSV parser and the lake's converters: still the path for a
chunk holding a value no lake type holds), then the COPY again. Reported: wall seconds and this
process's CPU seconds and the server backend's (/proc) of each, their ratios to COPY, and the peak of pyarrow's
memory pool during the verification (bounded by one chunk, not the table).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg2
import pyarrow as pa

from bench import Report, Row
from bench.orders import generate_load
from bench.source import Source

NAME = "verify"
DESCRIPTION = "verify: the source read of `totes verify` on a large sales_order, against one COPY of it"


class _Nothing:
    def write(self, data):
        return len(data)


def _backend_cpu(pid: int) -> float:
    """CPU seconds a server backend has used (this machine's /proc: the embedded server)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backend(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def _copy(dsn: str) -> dict:
    conn = psycopg2.connect(dsn)
    try:
        pid = _backend(conn)
        with conn.cursor() as cur:
            wall, cpu, server = time.perf_counter(), time.process_time(), _backend_cpu(pid)
            cur.copy_expert("COPY sales_order TO STDOUT", _Nothing())
            return {
                "seconds": time.perf_counter() - wall,
                "cpu_seconds": time.process_time() - cpu,
                "server_cpu_seconds": _backend_cpu(pid) - server,
            }
    finally:
        conn.close()


def _backends(source) -> list[int]:
    """The snapshot's two backends: psycopg2's (catalog, plans, the text path) and ADBC's (chunks)."""
    cur = source._arrow_cursor
    cur.execute("SELECT pg_backend_pid()")
    return [_backend(source._conn), cur.fetchone()[0]]


def _text_copy_snapshot():
    """The source read as it was before the ADBC path: text COPY, parsed by pyarrow's CSV
    reader and typed by the lake's converters (kept as the fallback for odd values)."""
    from verify.source import SourceSnapshot

    class TextCopySnapshot(SourceSnapshot):
        def read(self, schema, key, chunk):
            return self._read_as_text(schema, key, chunk)

    return TextCopySnapshot


def _verify_source(dsn: str, chunk_rows: int, snapshot=None) -> dict:
    import adbc_driver_postgresql.dbapi  # noqa: F401 - imported before the clocks start: not the read's cost

    from verify.core import Digest
    from verify.source import SourceSnapshot

    pool = pa.default_memory_pool()
    wall, cpu = time.perf_counter(), time.process_time()
    rows = chunks = 0
    with (snapshot or SourceSnapshot)(dsn) as source:
        pids = _backends(source)
        server = sum(map(_backend_cpu, pids))
        schema = source.table_schema("sales_order")
        for key, _, table in source.chunks(schema, chunk_rows):
            Digest.of(table, table.column_names)
            rows += table.num_rows
            chunks += 1
        server = sum(map(_backend_cpu, pids)) - server
    return {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "server_cpu_seconds": server,
        "rows": rows,
        "chunks": chunks,
        "arrow_peak_bytes": pool.max_memory(),
    }


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    rows = 100_000 if quick else 1_000_000
    chunk_rows = 100_000
    root = Path(tempfile.mkdtemp(prefix="totes-bench-verify-"))
    source = Source(root)
    try:
        source.start()
        say(f"generating {rows:,} sales orders")
        generate_load(source, 0, rows, rows, updates=False)
        with psycopg2.connect(source.dsn) as conn, conn.cursor() as cur:
            cur.execute("ANALYZE sales_order")
        conn.close()
        load_before = os.getloadavg()[0]
        first = _copy(source.dsn)
        verified = _verify_source(source.dsn, chunk_rows)  # first: pyarrow's peak is the process's
        text_copy = _verify_source(source.dsn, chunk_rows, _text_copy_snapshot())
        second = _copy(source.dsn)
        load = (load_before + os.getloadavg()[0]) / 2
    finally:
        source.stop()
        shutil.rmtree(root, ignore_errors=True)
    copy = min(first, second, key=lambda c: c["seconds"])
    ratio = verified["seconds"] / copy["seconds"]

    def total(run: dict) -> float:
        return run["cpu_seconds"] + run["server_cpu_seconds"]

    copy_cpu = min(total(first), total(second))
    copy_server = min(first["server_cpu_seconds"], second["server_cpu_seconds"])
    cost, cost_text = total(verified) / copy_cpu, total(text_copy) / copy_cpu
    on_source = verified["server_cpu_seconds"] / copy_server
    say(
        f"COPY {copy['seconds']:.2f} s; verify's source read {verified['seconds']:.2f} s ({ratio:.2f}x wall, "
        f"{cost:.2f}x CPU of client and server; the text-COPY read {cost_text:.2f}x); load {load:.1f}"
    )
    report = Report(
        raw={
            "rows": rows,
            "chunk_rows": chunk_rows,
            "copy": [first, second],
            "verify_source": verified,
            "verify_source_text_copy": text_copy,
            "load_average": round(load, 1),
            "ratio_wall": round(ratio, 2),
            "ratio_cpu": round(cost, 2),
            "ratio_cpu_text_copy": round(cost_text, 2),
            "ratio_source_cpu": round(on_source, 2),
        }
    )
    report.rows.append(
        Row(
            f"`totes verify` source read of a {verified['rows']:,}-row sales_order ({verified['chunks']} key-range "
            "chunks over ADBC binary COPY, typed and hashed)",
            f"{total(verified):.2f} s CPU of client and server = {cost:.2f}x one COPY into nothing "
            f"({copy_cpu:.2f} s; the text-COPY read it replaced {total(text_copy):.2f} s = {cost_text:.2f}x, same run); "
            f"on the source {verified['server_cpu_seconds']:.2f} s = {on_source:.2f}x one COPY's {copy_server:.2f} s; "
            f"wall {verified['seconds']:.2f} s = {ratio:.2f}x COPY's {copy['seconds']:.2f} s; Arrow peak "
            f"{verified['arrow_peak_bytes'] / 2**20:.0f} MB; load average {load:.1f} on 2 cores",
            "at most 2x one COPY; memory one chunk",
            "`python -m bench verify`",
        )
    )
    return report
