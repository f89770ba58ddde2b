"""ruff finds nothing in the project's code, with the rule set named in pyproject.toml, and
the code is as `ruff format` writes it (the same checks `make lint` and CI's lint job run;
here so `make test` catches them too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def _ruff_installed():
    if _ruff("--version").returncode != 0:
        pytest.skip("ruff is not installed in this environment (make install adds it)")


def test_ruff_finds_nothing():
    check = _ruff("check", "--no-cache", ".")
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_code_is_formatted_as_ruff_format_would():
    check = _ruff("format", "--check", "--no-cache", ".")
    assert check.returncode == 0, "run `ruff format .`:\n" + check.stdout + check.stderr


def test_ruff_would_catch_an_unused_import(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "bad.py").write_text("import os\n", encoding="utf-8")
    check = _ruff("check", "--no-cache", ".", cwd=tmp_path)
    assert check.returncode == 1 and "F401" in check.stdout, check.stdout + check.stderr
