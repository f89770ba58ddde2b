"""A malformed totes.toml (or TOTES_* value) is one sentence naming the line, for every
command, before the command does anything; never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from totes_cli.app import app

BROKEN = 'home = "/tmp/totes"\nsource_dsn = \nstream = "x"\n'
WRONG_TYPE = '# the lake and the rest\nhome = 5\n'


def every_command() -> list[list[str]]:
    """Each command and sub-command of `totes`, as argv."""
    commands = [[command.name or command.callback.__name__] for command in app.registered_commands]
    for group in app.registered_groups:
        commands += [[group.name, command.name or command.callback.__name__]
                     for command in group.typer_instance.registered_commands]
    return commands


@pytest.fixture
def broken_config(tmp_path, monkeypatch):
    path = tmp_path / "totes.toml"
    path.write_text(BROKEN)
    monkeypatch.setenv("TOTES_CONFIG", str(path))
    for name in [name for name in os.environ if name.startswith("TOTES_") and name != "TOTES_CONFIG"]:
        monkeypatch.delenv(name)
    return path


def test_every_command_says_which_line_of_a_broken_file(broken_config):
    commands = every_command()
    assert len(commands) > 12 and ["run"] in commands and ["lake", "history"] in commands
    for argv in commands:
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (argv, result.exception)
        assert result.output.strip() == (
            f"error: {broken_config} cannot be read: Invalid value (at line 2, column 14); fix that line "
            "(or point TOTES_CONFIG at another file)."), argv


def test_a_value_of_the_wrong_type_names_its_setting_and_line(broken_config):
    broken_config.write_text(WRONG_TYPE)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line
    assert line.startswith("error: The setting 'home' is not valid (")
    assert line.endswith(f"at line 2 of {broken_config}: fix it in {broken_config} or in TOTES_HOME.")


def test_the_real_command_prints_no_traceback(broken_config):
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "totes_cli", "run", "--source", "host=/nowhere dbname=x"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {broken_config} cannot be read: Invalid value (at line 2, column 14); fix that line "
        "(or point TOTES_CONFIG at another file)."]
