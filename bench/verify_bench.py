"""`python -m bench verify`: what `totes verify` costs the source, against one COPY of it.

A fresh embedded totesys gets 1,000,000 generated sales orders (100,000 with --quick). In the
same run, back to back: `COPY sales_order TO STDOUT` into nothing (the baseline), then the
source side of a verification of sales_order (verify/source.py: a temporary slot's exported
snapshot, key-range COPY chunks, typed as the lake types them, each chunk's row hashes
computed by DuckDB: verify/core.py), then the COPY again. Reported: wall seconds and this
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
from bench.reader_bench import Source, generate_load

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
            return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                    "server_cpu_seconds": _backend_cpu(pid) - server}
    finally:
        conn.close()


def _verify_source(dsn: str, chunk_rows: int) -> dict:
    from verify.core import Digest, row_hashes
    from verify.source import SourceSnapshot

    pool = pa.default_memory_pool()
    wall, cpu = time.perf_counter(), time.process_time()
    rows = chunks = 0
    with SourceSnapshot(dsn) as source:
        pid = _backend(source._conn)
        server = _backend_cpu(pid)
        schema = source.table_schema("sales_order")
        for key, _, table in source.chunks(schema, chunk_rows):
            Digest.of(row_hashes(table, key, table.column_names))
            rows += table.num_rows
            chunks += 1
        server = _backend_cpu(pid) - server
    return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "server_cpu_seconds": server, "rows": rows,
            "chunks": chunks, "arrow_peak_bytes": pool.max_memory()}


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
        first = _copy(source.dsn)
        verified = _verify_source(source.dsn, chunk_rows)
        second = _copy(source.dsn)
    finally:
        source.stop()
        shutil.rmtree(root, ignore_errors=True)
    copy = min(first, second, key=lambda c: c["seconds"])
    ratio = verified["seconds"] / copy["seconds"]

    def total(run: dict) -> float:
        return run["cpu_seconds"] + run["server_cpu_seconds"]

    cost = total(verified) / min(total(first), total(second))
    on_source = verified["server_cpu_seconds"] / min(first["server_cpu_seconds"], second["server_cpu_seconds"])
    say(f"COPY {copy['seconds']:.2f} s; verify's source read {verified['seconds']:.2f} s ({ratio:.2f}x wall, "
        f"{cost:.2f}x CPU of client and server)")
    report = Report(raw={"rows": rows, "chunk_rows": chunk_rows, "copy": [first, second], "verify_source": verified,
                         "ratio_wall": round(ratio, 2), "ratio_cpu": round(cost, 2),
                         "ratio_source_cpu": round(on_source, 2)})
    report.rows.append(Row(
        f"`totes verify` source read of a {verified['rows']:,}-row sales_order ({verified['chunks']} key-range "
        "COPY chunks, typed and hashed)",
        f"on the source {verified['server_cpu_seconds']:.2f} s CPU = {on_source:.2f}x one COPY's "
        f"{min(first['server_cpu_seconds'], second['server_cpu_seconds']):.2f} s; with the client's parsing and "
        f"hashing {total(verified):.2f} s CPU = {cost:.2f}x one COPY into nothing "
        f"{min(total(first), total(second)):.2f} s; wall {verified['seconds']:.2f} s = {ratio:.2f}x COPY's "
        f"{copy['seconds']:.2f} s (same run); Arrow peak "
        f"{verified['arrow_peak_bytes'] / 2**20:.0f} MB",
        "at most 2x one COPY on the source; memory one chunk", "`python -m bench verify`"))
    return report
