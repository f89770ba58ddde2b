"""Shared fixtures: a real PostgreSQL for every test that needs one.

By default one embedded server (the same code as `totes source start`) serves the whole
session. Set TOTES_TEST_DSN to a superuser DSN of an external server with wal_level=logical
to run the suite against it instead. Each test gets a fresh database cloned from a template
that already holds the totesys schema, and it is dropped afterwards with any replication
slots the test left behind.

Every scratch folder a test makes (`make_scratch_dir`), with any server still running in it,
is removed when the session ends; TOTES_KEEP_SCRATCH=1 keeps them (their paths are listed) to
look into a failure. pytest's own tmp_path folders are kept only for failed tests
(tmp_path_retention_policy in pyproject.toml).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from totesys.embedded import EmbeddedPostgres
from totesys.schema import create_schema, with_database

# Helper modules whose fixtures every test may ask for by name (their asserts rewritten
# like a test module"s: they are imported by each other before pytest loads them).
pytest_plugins = [
    "tests.cli_helpers",
    "tests.doctor_helpers",
    "tests.pgoutput_helpers",
    "tests.simulator_helpers",
    "tests.warehouse_fixtures",
    "tests.schema_reference",
]
pytest.register_assert_rewrite(
    *pytest_plugins,
    "tests.e2e_helpers",
    "tests.expected_warehouse",
    "tests.run_process",
    "tests.scripted_source",
    "tests.warehouse_history",
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
"""The project's shared folder beside the repo: real snapshots and the schema reference."""
SHARED_DATA = SHARED / "data" / "totesys"
TEMPLATE_DB = "totes_test_template"


def _admin(dsn: str):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


KEEP_SCRATCH = "TOTES_KEEP_SCRATCH"
_scratch_dirs: list[Path] = []


def make_scratch_dir(prefix: str) -> Path:
    """A private directory outside pytest's tmp tree (whose path can be too long for sockets),
    removed at the end of the session."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _scratch_dirs.append(path)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on when asked: for a server to start on,
    or for a client to find closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scratch_folder(prefix: str, keep: bool = False) -> Iterator[Path]:
    """For a fixture to `yield from`: a scratch directory (`make_scratch_dir`) removed as soon
    as its test is done, or kept (its path printed) when `keep`."""
    path = make_scratch_dir(prefix)
    yield path
    if keep:
        print(f"kept {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


def _stop_servers_in(directory: Path) -> None:
    """Stop embedded servers a test left running in `directory` (at most three levels down)."""
    for pattern in ("pgdata", "*/pgdata", "*/*/pgdata", "*/*/*/pgdata"):
        for pgdata in directory.glob(pattern):
            if (pgdata / "postmaster.pid").exists():
                try:
                    EmbeddedPostgres(pgdata.parent).stop()
                except Exception:  # noqa: BLE001 - the folder goes anyway; its server must not stop the rest
                    pass


def pytest_sessionfinish(session: pytest.Session) -> None:
    keep = os.environ.get(KEEP_SCRATCH) == "1"
    for directory in _scratch_dirs:
        _stop_servers_in(directory)
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if keep and _scratch_dirs and reporter is not None:
        reporter.write_line(f"{KEEP_SCRATCH}=1: scratch folders kept: {' '.join(map(str, _scratch_dirs))}")
    _scratch_dirs.clear()


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """Superuser DSN of the test server (database `postgres`)."""
    external = os.environ.get("TOTES_TEST_DSN")
    if external:
        yield with_database(external, "postgres")
        return
    server = EmbeddedPostgres(make_scratch_dir("totes-test-pg-"))
    dsn = server.start()
    try:
        yield dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _template(admin_dsn: str) -> str:
    conn = _admin(admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE_DB)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    finally:
        conn.close()
    create_schema(with_database(admin_dsn, TEMPLATE_DB))
    return TEMPLATE_DB


def _drop_database(admin_dsn: str, name: str) -> None:
    conn = _admin(admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE database = %s AND NOT active",
                (name,),
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


@pytest.fixture
def empty_database(admin_dsn: str) -> Iterator[str]:
    """DSN of a new, empty database (no totesys schema)."""
    name = f"totes_test_{uuid.uuid4().hex[:10]}"
    conn = _admin(admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    yield with_database(admin_dsn, name)
    _drop_database(admin_dsn, name)


@pytest.fixture
def new_database(admin_dsn: str) -> Iterator:
    """A function that creates one more new, empty database and returns its DSN (each
    dropped at the end of the test)."""
    names: list[str] = []

    def create() -> str:
        names.append(f"totes_test_{uuid.uuid4().hex[:10]}")
        conn = _admin(admin_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names[-1])))
        finally:
            conn.close()
        return with_database(admin_dsn, names[-1])

    yield create
    for name in names:
        _drop_database(admin_dsn, name)


@pytest.fixture
def totesys_dsn(admin_dsn: str, _template: str) -> Iterator[str]:
    """DSN of a new database holding the empty totesys schema."""
    name = f"totes_test_{uuid.uuid4().hex[:10]}"
    conn = _admin(admin_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(_template))
            )
    finally:
        conn.close()
    yield with_database(admin_dsn, name)
    _drop_database(admin_dsn, name)


@pytest.fixture
def shared_snapshot():
    """Path to one of the real totesys snapshots beside the repo; skips when absent."""

    def find(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_dir():
            pytest.skip(f"shared snapshot {name} is not available at {path}")
        return path

    return find


@pytest.fixture
def own_kinesalite(monkeypatch):
    """No Kinesis endpoint configured: the pipeline starts its own kinesalite in its lake."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_KINESIS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture(scope="session")
def kinesalite_url() -> Iterator[str]:
    """One local Kinesis (kinesalite) for the session; each test uses its own stream."""
    from local_stack.kinesalite import Kinesalite

    # restart=True: a server that dies under the suite's load comes back on the same port and
    # data (its exit reason logged), as `totes run`'s does, instead of failing every later test.
    with Kinesalite(make_scratch_dir("totes-kinesalite-"), restart=True) as server:
        yield server.endpoint_url


@pytest.fixture
def kinesis(kinesalite_url):
    from change_events.kinesis import kinesis_client

    return kinesis_client(endpoint_url=kinesalite_url)
