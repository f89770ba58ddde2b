"""The `totes` command: one entry point for every stage of the pipeline."""

from __future__ import annotations

import sys
import traceback

import typer

from totes_cli import (
    demo_cmd, doctor_cmd, lake_cmd, processor_cmd, reader_cmd, run_cmd, settings, simulate_cmd, source_cmd, status_cmd,
    sync_cmd,
)
from totes_cli.console import err, fail
from totesys.connection import scrub

app = typer.Typer(
    name="totes",
    help="totes-cdc: change-data capture from totesys into a Delta lake and a star-schema warehouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def check_configuration() -> None:
    """A malformed totes.toml or TOTES_* value is one sentence before any command runs."""
    try:
        settings.load()
    except settings.ConfigError as error:
        raise fail(str(error), code=2) from None


app.add_typer(source_cmd.app, name="source")
app.add_typer(lake_cmd.app, name="lake")

# Each command lives in its own module; they are registered here, in one place.
# (simulate, doctor, status and demo are registered below as they land.)
app.command("doctor")(doctor_cmd.doctor)
app.command("status")(status_cmd.status)
app.command("demo")(demo_cmd.demo)
app.command("reader")(reader_cmd.reader)
app.command("processor")(processor_cmd.processor)
app.command("query")(lake_cmd.query)
app.command("run")(run_cmd.run)
app.command("sync")(sync_cmd.sync)
app.command("simulate")(simulate_cmd.simulate)


def main() -> None:
    """The console script. A configuration problem found late is still one sentence; any
    other unexpected failure shows its traceback without the passwords in it."""
    try:
        app()
    except settings.ConfigError as error:
        fail(str(error), code=2)
        sys.exit(2)
    except Exception as error:  # noqa: BLE001 - the last line of defence for secrets
        err.print(scrub("".join(traceback.format_exception(error))), markup=False, highlight=False)
        sys.exit(1)
