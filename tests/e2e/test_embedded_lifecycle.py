"""The embedded server's folders and lifetime: a private socket folder (under the temp folder when
the server's own path is too long), scratch folders and their servers gone after the session, a
password given to a cluster made without one, and root taking over a cluster of the old system
user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from tests.embedded_helpers import IS_ROOT, REPO, no_password_dsn
from tests.conftest import make_scratch_dir
from totesys import embedded
from totesys.embedded import EmbeddedPostgres, EmbeddedServerError
from totesys.launcher import ensure_system_user


def test_a_socket_folder_under_the_temp_folder_must_be_private_to_us():
    """A long directory puts the socket under the temp folder, where another local user could
    have made the folder first: such a folder is refused, never taken over."""
    deep = make_scratch_dir("totes-deep-") / ("d" * 90)
    server = EmbeddedPostgres(deep)
    assert not server.socket_dir.is_relative_to(deep)
    server.socket_dir.mkdir(mode=0o777)
    try:
        server.socket_dir.chmod(0o777)
        with pytest.raises(EmbeddedServerError, match="is not a private folder of this server"):
            server.start()
        assert server.socket_dir.stat().st_mode & 0o777 == 0o777
        assert not (server.pgdata / "PG_VERSION").exists()
    finally:
        server.socket_dir.rmdir()


@pytest.mark.slow
def test_a_long_directory_gets_a_private_socket_folder_removed_at_stop():
    deep = make_scratch_dir("totes-deep-") / ("d" * 90)
    server = EmbeddedPostgres(deep)
    try:
        with psycopg2.connect(server.start()) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        assert server.socket_dir.stat().st_mode & 0o777 == 0o700
    finally:
        server.stop()
    assert not server.socket_dir.exists()


LEFTOVER_TEST = """
from pathlib import Path
from tests.conftest import make_scratch_dir
from totesys.embedded import EmbeddedPostgres

def test_leaves_a_server_running():
    directory = make_scratch_dir("totes-leftover-")
    EmbeddedPostgres(directory / "source").start()
    Path({out!r}).write_text(str(directory))
"""


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept on request"])
def test_scratch_folders_and_their_servers_are_gone_after_the_session(tmp_path, keep):
    out = tmp_path / "where"
    test_file = tmp_path / "test_leftover.py"
    test_file.write_text(LEFTOVER_TEST.format(out=str(out)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TOTES_KEEP_SCRATCH", None)
    if keep:
        env["TOTES_KEEP_SCRATCH"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            str(test_file),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    directory = Path(out.read_text())
    leftover = EmbeddedPostgres(directory / "source")
    try:
        assert not leftover.is_running()
        if keep:
            assert (directory / "source" / "pgdata").is_dir()
            assert str(directory) in result.stdout
        else:
            assert not directory.exists()
    finally:
        if directory.exists():
            leftover.stop()
            shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
def test_a_cluster_made_without_a_password_gets_one_at_its_next_start(monkeypatch):
    """Older versions made clusters that trusted every local connection: the next start gives
    the superuser a generated password, and the trust rules are no longer used."""
    directory = make_scratch_dir("totes-old-")
    run = embedded.launcher()
    initdb = [
        str(embedded.binary("initdb")),
        "-D",
        str(directory / "pgdata"),
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=trust",
        "--no-instructions",
    ]
    subprocess.run(run.argv(initdb), check=True, capture_output=True, **run.identity())
    with open(directory / "pgdata" / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write("\ninclude_if_exists = 'totes.conf'\n")
    server = EmbeddedPostgres(directory)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(directory / "no-such-pgpass"))
    try:
        with psycopg2.connect(server.start()) as conn, conn.cursor() as cur:
            cur.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'")
            assert cur.fetchone() == (True,)
        with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
            psycopg2.connect(no_password_dsn(server))
    finally:
        server.stop()


@pytest.mark.skipif(not IS_ROOT or not embedded.launcher().prefix, reason="root with user namespaces")
@pytest.mark.slow
def test_a_running_cluster_of_the_old_system_user_is_taken_over_by_root(monkeypatch):
    """Older versions ran root's clusters as the system user with trust: the next start stops
    it, gives its files back to root, adds a password and runs it in the user namespace."""
    base = make_scratch_dir("totes-legacy-")
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "source")
    old = embedded.Launcher(system_user=ensure_system_user(embedded.SERVER_USER))
    entry = old.system_user
    if not old.can_reach(embedded.POSTGRES_BIN_PATH):
        pytest.skip(f"{embedded.SERVER_USER} cannot reach the binaries (the project sits in a private folder)")
    (base / "source").mkdir(mode=0o755)
    (base / "source").chmod(0o755)
    for path, mode in ((server.pgdata, 0o700), (base / "source" / "run", 0o701)):  # as they left them
        path.mkdir()
        path.chmod(mode)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        old.argv(
            [
                str(embedded.binary("initdb")),
                "-D",
                str(server.pgdata),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--no-instructions",
            ]
        ),
        check=True,
        capture_output=True,
        **old.identity(),
    )
    with open(server.pgdata / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write("\ninclude_if_exists = 'totes.conf'\n")
    (server.pgdata / "totes.conf").write_text(
        f"listen_addresses = ''\nunix_socket_directories = '{base / 'source' / 'run'}'\n"
    )
    subprocess.run(
        old.argv([str(embedded.binary("pg_ctl")), "-D", str(server.pgdata), "-w", "-l", "/dev/null", "start"]),
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **old.identity(),
    )
    try:
        with psycopg2.connect(server.start()) as conn, conn.cursor() as cur:
            cur.execute("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'postgres'")
            assert cur.fetchone() == (True,)
        monkeypatch.delenv("PGPASSWORD", raising=False)
        monkeypatch.setenv("PGPASSFILE", str(base / "no-such-pgpass"))
        with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
            psycopg2.connect(no_password_dsn(server))
        assert server.pgdata.stat().st_uid == 0
        assert not any(item.stat().st_uid == entry.pw_uid for item in server.pgdata.rglob("*"))
    finally:
        server.stop()
        subprocess.run(
            old.argv([str(embedded.binary("pg_ctl")), "-D", str(server.pgdata), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
            **old.identity(),
        )
