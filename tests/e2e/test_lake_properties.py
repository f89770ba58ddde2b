"""Properties of the lake beyond single scenarios: any order and any repetition of a shard's
events gives the same lake; shards and maintenance racing on one table lose nothing; a process
that reads the lake exits cleanly. On a local folder (S3 is covered by tests/integration/test_lake.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lake import LakeLayout
from tests.lake_fixtures import expected_state
from tests.moto_s3 import moto_s3  # noqa: F401  (the session's S3 server, a fixture)
from tests.lake_fixtures import EVENTS, SO, write

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("storage", ["folder", "s3"])
def test_a_process_reading_the_lake_exits_cleanly(storage, tmp_path, request):
    """deltalake's pyarrow scans can abort a process at exit (code 134); the lake's readers
    avoid them, so a CLI built on them exits with its own code."""
    env, options = dict(os.environ), None
    if storage == "s3":
        s3 = request.getfixturevalue("moto_s3")
        root, options = f"s3://{s3.BUCKET}/exit-{os.getpid()}", s3.storage_options
        env.update(options)  # the child finds S3 through the standard AWS variables
    else:
        root = str(tmp_path / "lake")
    write(LakeLayout(root, options), [EVENTS])
    script = textwrap.dedent(f"""
        import duckdb
        from lake import LakeLayout
        from lake import timetravel as tt
        layout = LakeLayout({root!r})
        rows = tt.current_state(layout, {SO!r}).num_rows
        tt.state_as_of_lsn(layout, {SO!r}, 10**12)
        con = duckdb.connect()
        tt.register_duckdb(con, layout, {SO!r}, "changes")
        n = con.sql("SELECT count(*) FROM sales_order").fetchall()[0][0]
        print(rows, n)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(expected_state(EVENTS, SO))), str(len(EVENTS))]
