"""`totes dashboard`: the business views, one order's history, time travel and pipeline
health in a browser, served on 127.0.0.1 only (dashboard/app.py says what and why)."""

from __future__ import annotations

import socket
import sys
from typing import Annotated, Optional

import typer

from totes_cli.console import err, fail, out
from totes_cli.run_cmd import default_lake, default_warehouse
from totes_cli.settings import NoSourceError, load, resolve_source_dsn, resolve_warehouse

HOST = "127.0.0.1"
DEFAULT_PORT = 8050


def listening_socket(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` (0: any free port), or one sentence."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as error:
        sock.close()
        raise fail(f"Cannot listen on {HOST}:{port} ({error.strerror}): pick another --port (0 takes a free one).",
                   code=2) from None
    sock.listen(128)
    return sock


def dashboard(
    lake: Annotated[Optional[str], typer.Option("--lake", envvar="TOTES_LAKE", help="The lake \\[default: $TOTES_HOME/lake].")] = None,
    warehouse: Annotated[Optional[str], typer.Option("--warehouse", envvar="TOTES_WAREHOUSE", help="A DuckDB file or a PostgreSQL DSN \\[default: $TOTES_HOME/warehouse.duckdb].")] = None,
    source: Annotated[Optional[str], typer.Option("--source", help="Source DSN for WAL figures \\[default: $TOTES_SOURCE_DSN, else the embedded source; none: no WAL figures].")] = None,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).")] = DEFAULT_PORT,
    refresh: Annotated[float, typer.Option("--refresh", help="Seconds between the pages' own refreshes (0: never).")] = 5.0,
) -> None:
    """Serve the dashboard on 127.0.0.1 and print its address; Ctrl-C stops it."""
    import uvicorn

    from dashboard.app import Dashboard, create_app

    if refresh < 0:
        raise fail("--refresh is a number of seconds, 0 or more.", code=2)
    home = load().home
    lake = lake or default_lake(home)
    location = resolve_warehouse(warehouse, default_warehouse(home))
    try:
        source_dsn = resolve_source_dsn(source)
    except NoSourceError:
        source_dsn = None  # the health page then has no WAL figures
    sock = listening_socket(port)
    address = f"http://{HOST}:{sock.getsockname()[1]}/"
    app = create_app(Dashboard(lake, location, source_dsn, refresh=refresh))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    out.print(f"dashboard: {address}", markup=False, highlight=False)
    sys.stdout.flush()
    err.print("Ctrl-C to stop")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
