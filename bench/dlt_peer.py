"""The load benchmark's peer: dlt's `sql_database` copying the same tables into DuckDB, in its own watched process."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from bench.watched import bench_environment, run_watched

DLT_SCRIPT = textwrap.dedent("""
    import os, sys, json, time
    import psycopg2, sqlalchemy, dlt
    from dlt.sources.sql_database import sql_database

    dsn, path, work = sys.argv[1], sys.argv[2], sys.argv[3]
    engine = sqlalchemy.create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn))
    source = sql_database(engine, schema="public", backend="pyarrow", table_names=sys.argv[4].split(","))
    pipeline = dlt.pipeline(pipeline_name="bench_load", pipelines_dir=work,
                            destination=dlt.destinations.duckdb(path), dataset_name="totesys")
    pipeline.run(source, write_disposition="replace")
""")


def dlt_available() -> str | None:
    """None if dlt can run here, else why not."""
    try:
        import dlt  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as error:
        return f'dlt is not installed ({error.name}): pip install -c constraints.txt -e ".[bench]"'
    return None


def dlt_load(dsn: str, root: Path, tables: list[str]) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    script = root / "dlt_load.py"
    script.write_text(DLT_SCRIPT)
    env = bench_environment(root)
    env.update({"RUNTIME__DLTHUB_TELEMETRY": "false", "DLT_DATA_DIR": str(root / "dlt-data")})
    result = run_watched(
        [sys.executable, str(script), dsn, str(root / "dlt.duckdb"), str(root / "dlt-work"), ",".join(tables)],
        env,
        root / "dlt.log",
    )
    if result["exit_code"] != 0:
        raise RuntimeError(f"dlt failed ({result['exit_code']}):\n{result['log_tail']}")
    return result
