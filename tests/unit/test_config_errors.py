"""A malformed totes.toml (or TOTES_* value) is one sentence naming the line, for every
command, before the command does anything; never a traceback."""

from __future__ import annotations


from typer.testing import CliRunner

from totes_cli.app import app
from tests.cli_helpers import every_command

WRONG_TYPE = "# the lake and the rest\nhome = 5\n"


def test_every_command_says_which_line_of_a_broken_file(broken_config):
    commands = every_command()
    assert len(commands) > 12 and ["run"] in commands and ["lake", "history"] in commands
    for argv in commands:
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (argv, result.exception)
        assert result.output.strip() == (
            f"error: {broken_config} cannot be read: Invalid value (at line 2, column 14); fix that line "
            "(or point TOTES_CONFIG at another file)."
        ), argv


def test_a_value_of_the_wrong_type_names_its_setting_and_line(broken_config):
    broken_config.write_text(WRONG_TYPE)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line
    assert line.startswith("error: The setting 'home' is not valid (")
    assert line.endswith(f"at line 2 of {broken_config}: fix it in {broken_config} or in TOTES_HOME.")
