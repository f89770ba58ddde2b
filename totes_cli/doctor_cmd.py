"""`totes doctor`: is this PostgreSQL ready to be a change-data-capture source?"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.text import Text

from cdc_reader.doctor import CheckResult, Status, diagnose, is_ready
from totes_cli import bootstrap
from totes_cli.settings import NoSourceError, resolve_source_dsn
from totes_cli.console import err, fail, out
from totes_cli.options import OldDsnOption, PublicationOption, SourceOption, source_or_old_name
from cdc_reader.source import SourceConnectionError, describe

# Exit codes scripts can rely on.
EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_NO_CONNECTION = 2

_STYLES = {Status.OK: "green", Status.WARNING: "yellow", Status.PROBLEM: "bold red"}


def resolve_dsn(dsn: str | None) -> str:
    """--source, else TOTES_SOURCE_DSN (or the config file), else the running embedded source."""
    return resolve_source_dsn(dsn)


def _split(tables: str | None) -> list[str]:
    if tables is None:
        return list(bootstrap.source_tables())
    return [name.strip() for name in tables.split(",") if name.strip()]


def _print_json(payload: dict) -> None:
    typer.echo(json.dumps(payload))


def _line(result: CheckResult) -> Text:
    text = Text(f"{result.status:<8}", style=_STYLES[result.status])
    text.append(result.message)
    return text


def doctor(
    source: SourceOption = None,
    tables: Annotated[
        Optional[str],
        typer.Option(
            "--tables",
            help="Comma-separated tables to check (schema.table names another schema) "
            "\\[default: the 11 totesys tables].",
            show_default=False,
        ),
    ] = None,
    schema: Annotated[str, typer.Option("--schema", help="Schema of the tables.")] = bootstrap.SCHEMA,
    publication: PublicationOption = bootstrap.PUBLICATION,
    as_json: Annotated[bool, typer.Option("--json", help="Print every check as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list the checks that passed.")] = False,
    dsn: OldDsnOption = None,
) -> None:
    """Check that a PostgreSQL can feed totes-cdc (exit 0 ready, 1 not ready, 2 cannot connect)."""
    try:
        source = resolve_dsn(source_or_old_name(source, dsn))
        results = diagnose(source, tables=_split(tables), schema=schema, publication=publication)
    except (NoSourceError, SourceConnectionError) as error:
        if as_json:
            _print_json({"ready": False, "error": str(error), "checks": []})
            raise typer.Exit(EXIT_NO_CONNECTION) from None
        raise fail(escape(str(error)), EXIT_NO_CONNECTION) from None

    ready = is_ready(results)
    if as_json:
        _print_json({"ready": ready, "source": describe(source), "checks": [result.to_dict() for result in results]})
        raise typer.Exit(EXIT_READY if ready else EXIT_NOT_READY)

    for result in results:
        if verbose or result.status is not Status.OK:
            out.print(_line(result))
    problems = sum(result.status is Status.PROBLEM for result in results)
    warnings = sum(result.status is Status.WARNING for result in results)
    if ready:
        version = next(
            (r.message.rstrip(".") for r in results if r.check == "server_version" and r.status is Status.OK),
            "PostgreSQL",
        )
        checked = len({r.subject for r in results if r.check == "table"})
        note = f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else ""
        out.print(
            Text(f"Ready for change-data capture: {version}, {checked} tables checked{note}.", style="bold green")
        )
        raise typer.Exit(EXIT_READY)
    err.print(
        Text(
            f"Not ready for change-data capture: {problems} problem{'s' if problems != 1 else ''} "
            "to fix, then run totes doctor again.",
            style="red",
        )
    )
    raise typer.Exit(EXIT_NOT_READY)
