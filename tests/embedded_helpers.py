"""Shared by the embedded server's tests: the repository, whether we are root, `totes` as a child
process, and a DSN that names no password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from psycopg2.extensions import make_dsn

from totesys.embedded import EmbeddedPostgres, libpq_dsn

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0


def totes(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "totes_cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def no_password_dsn(server: EmbeddedPostgres, **extra: str) -> str:
    return make_dsn(
        libpq_dsn(host=str(server.socket_dir), port=server.port, user="postgres", dbname="postgres"), **extra
    )
