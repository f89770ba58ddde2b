"""The command lists read as sentences: each command's summary whole on one row (at a width
that fits it), not broken where its docstring's source lines happen to end."""

from __future__ import annotations

import inspect

import pytest
import typer
from typer.testing import CliRunner

from totes_cli.app import app


@pytest.mark.parametrize("path", [[], ["lake"], ["source"]])
def test_each_command_list_shows_every_summary_unbroken(path):
    group = typer.main.get_command(app)
    for name in path:
        group = group.commands[name]
    output = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "1000"}).output
    rows = [" ".join(line.strip("│ ").split()) for line in output.splitlines()]
    for name, command in group.commands.items():
        summary = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
        assert f"{name} {summary}" in rows, (name, output)
