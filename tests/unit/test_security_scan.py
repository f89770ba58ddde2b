"""bandit, the Python security linter, finds nothing unexplained in the project's code: every
finding is fixed, or accepted on its line as `# nosec BXXX # why`, with the why."""

from __future__ import annotations

import re
from tests.bandit_scan import PACKAGES, ROOT

NOSEC = re.compile(r"#\s*nosec\b(?P<rest>.*)$")
EXPLAINED = re.compile(r"^:?\s*B\d{3}(\s*,\s*B\d{3})*\s+#\s*\S.{8,}")


def test_every_accepted_finding_names_its_test_and_says_why():
    unexplained = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                match = NOSEC.search(line)
                if match and not EXPLAINED.match(match["rest"]):
                    unexplained.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not unexplained, "\n".join(unexplained)
