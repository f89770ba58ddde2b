"""Fixed costs: what a command pays before it does anything. The command line loads the lake's
and the warehouse's libraries only in the commands that use them, and a catch-up with nothing
new starts no stream."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("polars", "pyarrow", "deltalake", "duckdb", "boto3", "botocore", "faker")


def modules_after(code: str) -> set[str]:
    """The heavy modules loaded, in a fresh interpreter, by running `code`."""
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_command_line_loads_no_lake_warehouse_or_aws_library():
    assert modules_after("import totes_cli.app") == set()


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["lake", "--help"], ["query", "--help"],
                                  ["reader", "--help"], ["sync", "--help"], ["demo", "--help"]])
def test_help_loads_no_lake_warehouse_or_aws_library(args):
    code = (f"sys.argv = ['totes', *{args!r}]\nimport totes_cli.app\n"
            "try:\n    totes_cli.app.app(standalone_mode=False)\nexcept SystemExit:\n    pass")
    assert modules_after(code) == set()


def test_packages_load_their_parts_on_first_use():
    """The packages still export what they did, loading it when it is asked for."""
    assert modules_after("import lake, change_events, warehouse_sync\nfrom change_events import format_lsn") == set()
    assert "deltalake" in modules_after("from lake import LakeWriter")
    assert "duckdb" in modules_after("from warehouse_sync import open_target")
    assert "pyarrow" in modules_after("from change_events import decode")
