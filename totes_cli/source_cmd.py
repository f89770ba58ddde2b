"""`totes source start|stop|status`: the embedded totesys server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from totes_cli import settings as config
from totes_cli.console import err, fail, out
from cdc_reader.source import SourceConnectionError
from totesys.embedded import EmbeddedPostgres, EmbeddedServerError
from totesys.schema import DEFAULT_DATABASE, create_schema, ensure_database

app = typer.Typer(help="Run totesys on an embedded PostgreSQL (logical replication on).", no_args_is_help=True)

DirOption = Annotated[
    Optional[Path],
    typer.Option("--dir", help="Directory of the server's data, socket and log \\[default: $TOTES_HOME/source]."),
]


def _server(directory: Path | None) -> EmbeddedPostgres:
    return EmbeddedPostgres(directory or config.load().source_dir)


def start_source(directory: Path | None) -> str:
    """Start (or reuse) the embedded server and make sure totesys exists; return its DSN."""
    server = _server(directory)
    admin = server.start()
    dsn = ensure_database(admin, DEFAULT_DATABASE)
    create_schema(dsn)
    return server.dsn(DEFAULT_DATABASE)


@app.command()
def start(directory: DirOption = None) -> None:
    """Start totesys (or reuse the running one) and print its DSN. It keeps running after this returns."""
    server = _server(directory)
    try:
        was_running = server.is_running()
        dsn = start_source(directory)
    except (EmbeddedServerError, SourceConnectionError) as error:
        raise fail(str(error)) from None
    except OSError as error:
        raise fail(
            f"totesys cannot be started in {server.directory}: {error.strerror} "
            f"({error.filename}); choose another --dir or fix that file's permissions."
        ) from None
    err.print(f"totesys {'already running' if was_running else 'started'} in {server.directory}")
    out.print(dsn)


@app.command()
def stop(directory: DirOption = None) -> None:
    """Stop the embedded totesys server."""
    server = _server(directory)
    try:
        stopped = server.stop()
    except EmbeddedServerError as error:
        raise fail(str(error)) from None
    err.print(f"totesys {'stopped' if stopped else 'was not running'} in {server.directory}")


@app.command()
def status(directory: DirOption = None) -> None:
    """Say whether the embedded server runs, and print its DSN if it does (exit 1 if not)."""
    server = _server(directory)
    if not server.is_running():
        raise fail(f"totesys is not running in {server.directory}: start it with `totes source start`.")
    out.print(server.dsn(DEFAULT_DATABASE))
