"""The `totes` command: one entry point for every stage of the pipeline."""

from __future__ import annotations

import typer

from totes_cli import (
    demo_cmd, doctor_cmd, lake_cmd, processor_cmd, reader_cmd, run_cmd, simulate_cmd, source_cmd, status_cmd, sync_cmd,
)

app = typer.Typer(
    name="totes",
    help="totes-cdc: change-data capture from totesys into a Delta lake and a star-schema warehouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
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
    app()
