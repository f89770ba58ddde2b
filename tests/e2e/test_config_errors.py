"""A malformed totes.toml (or TOTES_* value) is one sentence naming the line, for every
command, before the command does anything; never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_real_command_prints_no_traceback(broken_config):
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "totes_cli", "run", "--source", "host=/nowhere dbname=x"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {broken_config} cannot be read: Invalid value (at line 2, column 14); fix that line "
        "(or point TOTES_CONFIG at another file)."
    ]
