"""The command line as its users meet it: a child `totes` with its own home, and the commands a
broken configuration must stop."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from totes_cli.app import app

BROKEN = 'home = "/tmp/totes"\nsource_dsn = \nstream = "x"\n'


def every_command() -> list[list[str]]:
    """Each command and sub-command of `totes`, as argv."""
    commands = [[command.name or command.callback.__name__] for command in app.registered_commands]
    for group in app.registered_groups:
        commands += [
            [group.name, command.name or command.callback.__name__]
            for command in group.typer_instance.registered_commands
        ]
    return commands


@pytest.fixture
def broken_config(tmp_path, monkeypatch):
    path = tmp_path / "totes.toml"
    path.write_text(BROKEN)
    monkeypatch.setenv("TOTES_CONFIG", str(path))
    for name in [name for name in os.environ if name.startswith("TOTES_") and name != "TOTES_CONFIG"]:
        monkeypatch.delenv(name)
    return path


def totes(*args: str, home, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "TOTES_"))}
    env.update({"TOTES_HOME": str(home), "TOTES_CONFIG": str(home / "none.toml"), "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "totes_cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


TOTES = [sys.executable, "-m", "totes_cli"]


needs_embedded = pytest.mark.skipif(bool(os.environ.get("TOTES_TEST_DSN")), reason="uses its own embedded server")
