"""`totes dashboard`: the business views, one order's history, time travel and pipeline
health in a browser, served on 127.0.0.1 only (dashboard/app.py says what and why)."""

from __future__ import annotations

import socket
import sys
from typing import Annotated

import typer

from totes_cli.console import err, fail, out
from totes_cli.options import LakeOption, SourceOption, WarehouseOption
from totes_cli import bootstrap
from totes_cli.parent_death import end_with_parent, parent_environment
from totes_cli.settings import NoSourceError, load, resolve_source_dsn, resolve_warehouse

HOST = "127.0.0.1"
MISSING_EXTRA = (
    "`totes {command}` needs the dashboard's libraries: pip install 'totes-cdc[dashboard]' (make install has them)."
)
DEFAULT_PORT = 8050


def listening_socket(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` (0: any free port), or one sentence."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as error:
        sock.close()
        raise fail(
            f"Cannot listen on {HOST}:{port} ({error.strerror}): pick another --port (0 takes a free one).", code=2
        ) from None
    sock.listen(128)
    return sock


def dashboard(
    lake: LakeOption = None,
    warehouse: WarehouseOption = None,
    source: SourceOption = None,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).")] = DEFAULT_PORT,
    refresh: Annotated[
        float, typer.Option("--refresh", help="Seconds between the pages' own refreshes (0: never).")
    ] = 5.0,
) -> None:
    """Serve the dashboard on 127.0.0.1 and print its address; Ctrl-C stops it. The source
    is read for its WAL figures only (none when it cannot be reached)."""
    end_with_parent()  # started by `totes demo`: it ends with the demo, even one killed -9
    try:
        import uvicorn

        from dashboard.app import Dashboard, create_app
    except ImportError:
        raise fail(MISSING_EXTRA.format(command="dashboard"), code=2) from None

    if refresh < 0:
        raise fail("--refresh is a number of seconds, 0 or more.", code=2)
    home = load().home
    lake = lake or bootstrap.home_lake(home)
    location = resolve_warehouse(warehouse, bootstrap.home_warehouse(home))
    try:
        source_dsn = resolve_source_dsn(source)
    except NoSourceError:
        source_dsn = None  # the health page then has no WAL figures
    sock = listening_socket(port)
    address = f"http://{HOST}:{sock.getsockname()[1]}/"
    app = create_app(Dashboard(lake, location, source_dsn, refresh=refresh, home=home))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    out.print(f"dashboard: {address}", markup=False, highlight=False)
    sys.stdout.flush()
    err.print("Ctrl-C to stop")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


# -- started by `totes demo` -------------------------------------------------------------------

_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "DSN", "CREDENTIAL", "PERSONAL_DATA_KEY")


def child_environment(home) -> dict[str, str]:
    """This process's environment without anything that may hold a secret: the dashboard
    finds the embedded source under TOTES_HOME by itself."""
    import os

    env = {k: v for k, v in os.environ.items() if not any(word in k.upper() for word in _SECRET_WORDS)}
    env["TOTES_HOME"] = str(home)
    return env


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def spawn(home, lake: str, warehouse: str, log_path, wait_seconds: float = 60.0):
    """Start `totes dashboard` as a child process on DEFAULT_PORT, or a free port when that
    one is taken; return (process, address), address None when it did not come up in time.
    It ends with this process (parent_death.py): call it from the main thread."""
    import select
    import subprocess  # nosec B404 # our own command, no shell
    import time

    port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else 0
    log = open(log_path, "ab")
    process = subprocess.Popen(  # nosec B603 # argv of our own interpreter and command, no shell
        [sys.executable, "-m", "totes_cli", "dashboard", "--port", str(port), "--lake", lake, "--warehouse", warehouse],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env={**child_environment(home), **parent_environment()},
    )
    log.close()
    deadline = time.monotonic() + wait_seconds
    line = b""
    while time.monotonic() < deadline and process.poll() is None and not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            chunk = process.stdout.read1(256) if hasattr(process.stdout, "read1") else process.stdout.read(1)
            if not chunk:
                break
            line += chunk
    text = line.decode(errors="replace").strip()
    address = text.split(": ", 1)[1] if text.startswith("dashboard: http://") else None
    return process, address
