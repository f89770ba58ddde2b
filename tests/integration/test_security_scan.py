"""bandit, the Python security linter, finds nothing unexplained in the project's code: every
finding is fixed, or accepted on its line as `# nosec BXXX # why`, with the why."""

from __future__ import annotations

import json
import subprocess
import sys
from tests.bandit_scan import PACKAGES, ROOT


def test_bandit_finds_nothing_unexplained():
    scan = subprocess.run(
        [sys.executable, "-m", "bandit", "-q", "-r", *PACKAGES, "-f", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(scan.stdout)
    assert not report["errors"], report["errors"]
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert not findings, "\n".join(findings)
