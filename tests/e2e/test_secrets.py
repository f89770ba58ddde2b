"""Passwords never show: not in output, logs, status files, errors, tracebacks, reprs, the
local Kinesis child's environment, nor anywhere under TOTES_HOME; and a DSN can leave its
password out and take it from PGPASSWORD, a file or AWS Secrets Manager.

The real CLI runs as a process against a server of its own where one role must log in with
scram-sha-256, so a wrong password really is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
from psycopg2 import sql

from tests.conftest import free_port, make_scratch_dir, scratch_folder
from totesys.embedded import EmbeddedPostgres
from totesys.schema import create_schema, ensure_database

ROLE = "totes_pw"
PASSWORD = "Src-Secret-7f3a9"
WRONG = "Wrong-Secret-0d1b"

needs_own_server = pytest.mark.skipif(
    bool(os.environ.get("TOTES_TEST_DSN")), reason="starts its own embedded server; TOTES_TEST_DSN is set"
)


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """An embedded server where ROLE (a superuser: it may replicate and publish) logs in with
    a password over the local socket; it has a totesys database and a warehouse database."""
    directory = make_scratch_dir("totes-secrets-pg-")
    pg = EmbeddedPostgres(directory, hba_rules=[f"local all {ROLE} scram-sha-256"])
    try:
        admin = pg.start()
        with psycopg2.connect(admin) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER REPLICATION PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(PASSWORD)
                )
            )
        conn.close()
        create_schema(ensure_database(admin, "totesys"))
        ensure_database(admin, "warehouse")
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(directory, ignore_errors=True)


def uri(pg: EmbeddedPostgres, dbname: str, password: str | None = None) -> str:
    secret = f":{quote(password, safe='')}" if password else ""
    return f"postgresql://{ROLE}{secret}@/{dbname}?host={quote(str(pg.socket_dir), safe='/')}&port={pg.port}"


def totes(*args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 120):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TOTES_", "PG"))}
    base.update(
        {
            "TOTES_HOME": str(home),
            "TOTES_CONFIG": str(home / "none.toml"),
            "COLUMNS": "200",
            "PGPASSFILE": str(home / "no-pgpass"),
        }
    )
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "totes_cli", *args], capture_output=True, text=True, timeout=timeout, env=base
    )


def assert_nowhere(result, home: Path, *secrets: str) -> None:
    """None of `secrets` in the output, nor in any file the command left under `home`."""
    for secret in secrets:
        assert secret not in result.stdout, result.stdout
        assert secret not in result.stderr, result.stderr
        for path in home.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert secret.encode() not in path.read_bytes(), path


def one_error_line(result) -> str:
    """The command failed with exit code 2 and exactly one line saying why, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(("warning:", "waiting"))]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def home() -> Iterator[Path]:
    yield from scratch_folder("totes-secrets-home-")


# -- totes run and totes status, with passwords in the DSNs ----------------------------------------


@needs_own_server
@pytest.mark.slow
def test_run_and_status_never_show_the_passwords(server, home):
    source, warehouse = uri(server, "totesys", PASSWORD), uri(server, "warehouse", PASSWORD)
    run = totes(
        "run",
        "--source",
        source,
        "--lake",
        str(home / "lake"),
        "--warehouse",
        warehouse,
        "--until-caught-up",
        "--slot",
        "totes_secrets",
        home=home,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "warehouse postgresql://totes_pw:***@/warehouse" in run.stderr
    assert "shows in the process list" in run.stderr  # the flags held passwords: said, without them
    assert_nowhere(run, home, PASSWORD)

    status = totes(
        "status", "--dsn", source, home=home, env={"TOTES_WAREHOUSE": warehouse, "TOTES_LAKE": str(home / "lake")}
    )
    assert status.returncode == 0, status.stderr
    assert "warehouse  up to" in status.stdout
    assert_nowhere(status, home, PASSWORD)

    # A warehouse that cannot be opened is said, without its DSN's password.
    bad = uri(server, "warehouse", WRONG)
    status = totes("status", "--dsn", source, home=home, env={"TOTES_WAREHOUSE": bad})
    assert "cannot open it now" in status.stdout and "rejected the password" in status.stdout, status.stdout
    assert_nowhere(status, home, WRONG, PASSWORD)

    with psycopg2.connect(source) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot('totes_secrets')")
    conn.close()


@needs_own_server
def test_a_wrong_source_password_is_one_sentence(server, home):
    result = totes("run", "--source", uri(server, "totesys", WRONG), "--lake", str(home / "lake"), home=home)
    line = one_error_line(result)
    assert f"rejected the password for user '{ROLE}'" in line
    assert_nowhere(result, home, WRONG)


def test_an_unreachable_source_fails_after_a_bounded_wait(home):
    dsn = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{free_port()}/totesys"
    result = totes(
        "run", "--source", dsn, "--lake", str(home / "lake"), "--wait-for-source", "1", home=home, timeout=60
    )
    line = one_error_line(result)
    assert "Nothing answers at 127.0.0.1:" in line and "--wait-for-source" in line
    assert_nowhere(result, home, PASSWORD)


@pytest.mark.parametrize("flag", ["--source", "--warehouse"])
def test_a_malformed_dsn_is_one_sentence_without_its_password(flag, home, totesys_dsn):
    malformed = f"postgresql://{ROLE}:{PASSWORD}@[::1/totesys"
    args = {"--source": totesys_dsn, "--warehouse": str(home / "warehouse.duckdb"), flag: malformed}
    result = totes("run", *[part for pair in args.items() for part in pair], "--lake", str(home / "lake"), home=home)
    line = one_error_line(result)
    what = "source" if flag == "--source" else "warehouse"
    assert line.startswith(f"error: The {what} DSN is not valid"), line
    assert_nowhere(result, home, PASSWORD)


# -- where a password may come from instead of the DSN ----------------------------------------------


@pytest.fixture(scope="module")
def moto():
    from tests.moto_s3 import MotoS3  # moto's server: every AWS service, S3 among them

    server = MotoS3()
    yield server
    server.stop()


def _aws(moto) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


@needs_own_server
def test_the_password_from_pgpassword_a_file_or_secrets_manager(server, moto, tmp_path, monkeypatch):
    from totes_cli.settings import resolve_source_dsn
    from cdc_reader.source import SourceConnectionError, connect

    secrets = moto.client("secretsmanager")
    arn = secrets.create_secret(Name="pw-source-dsn", SecretString=uri(server, "totesys", PASSWORD))["ARN"]
    secrets.create_secret(Name="pw-rds-style", SecretString=f'{{"username": "{ROLE}", "password": "{PASSWORD}"}}')
    password_file = tmp_path / "source-password"
    password_file.write_text(PASSWORD + "\n")
    bare = uri(server, "totesys")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    monkeypatch.setenv("TOTES_CONFIG", str(tmp_path / "none.toml"))
    for name in ("PGPASSWORD", "TOTES_SOURCE_DSN", "TOTES_SOURCE_PASSWORD_FILE", "TOTES_SOURCE_DSN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SourceConnectionError, match="wants a password"):
        connect(resolve_source_dsn(bare))

    ways = {
        "PGPASSWORD": (bare, {"PGPASSWORD": PASSWORD}),
        "a password file": (bare, {"TOTES_SOURCE_PASSWORD_FILE": str(password_file)}),
        "the secret's DSN": (None, {**_aws(moto), "TOTES_SOURCE_DSN_SECRET": arn}),
        "the secret's password": (bare, {**_aws(moto), "TOTES_SOURCE_DSN_SECRET": "pw-rds-style"}),
        "a secretsmanager: DSN": ("secretsmanager:pw-source-dsn", _aws(moto)),
    }
    for way, (flag, env) in ways.items():
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            conn = connect(resolve_source_dsn(flag))
            with conn.cursor() as cur:
                cur.execute("SELECT current_user")
                assert cur.fetchone() == (ROLE,), way
            conn.close()


@needs_own_server
def test_the_cli_takes_the_source_from_secrets_manager(server, moto, home):
    secrets = moto.client("secretsmanager")
    arn = secrets.create_secret(Name="cli-source-dsn", SecretString=uri(server, "totesys", PASSWORD))["ARN"]
    result = totes("status", home=home, env={**_aws(moto), "TOTES_SOURCE_DSN_SECRET": arn})
    assert result.returncode == 0, result.stderr
    assert f"totesys source  {ROLE}@" in result.stdout, result.stdout
    assert_nowhere(result, home, PASSWORD)

    missing = totes("status", home=home, env={**_aws(moto), "TOTES_SOURCE_DSN_SECRET": "no-such-secret"})
    assert one_error_line(missing) == (
        "error: AWS Secrets Manager refused the source secret 'no-such-secret' (ResourceNotFoundException): "
        "check the name or ARN in TOTES_SOURCE_DSN_SECRET and that this role may call "
        "secretsmanager:GetSecretValue on it."
    )


# -- the local Kinesis child, logs and reprs ----------------------------------------------------------


def test_the_kinesalite_child_inherits_no_secret(tmp_path, monkeypatch):
    from local_stack import Kinesalite

    planted = {
        "TOTES_SOURCE_DSN": f"postgresql://u:{PASSWORD}@h/db",
        "TOTES_WAREHOUSE": f"host=h password={PASSWORD}",
        "PGPASSWORD": PASSWORD,
        "AWS_SECRET_ACCESS_KEY": PASSWORD,
        "TOTES_SOURCE_PASSWORD_FILE": "/x",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    with Kinesalite(tmp_path / "kinesis") as server:
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert not names & set(planted), names
    assert "PATH" in names
    assert PASSWORD.encode() not in b"\0".join(environ) + cmdline


def test_log_lines_and_reprs_hold_no_password():
    from totes_cli.console import ScrubbingFormatter
    from totes_cli.pipeline import PipelineConfig
    from totes_cli.settings import Settings
    from cdc_reader.source import masked, remember_secrets

    dsn = f"host=/tmp port=5432 user=u password={PASSWORD} dbname=totesys"
    remember_secrets(dsn)
    try:
        raise RuntimeError(f"a library said: could not use {PASSWORD!r}")
    except RuntimeError:
        record = logging.LogRecord("totes", logging.ERROR, __file__, 1, "stage stopped on %s", (dsn,), sys.exc_info())
    text = ScrubbingFormatter("%(message)s").format(record)
    assert "stage stopped on host=/tmp" in text and "RuntimeError" in text
    assert PASSWORD not in text
    assert PASSWORD not in repr(PipelineConfig(source_dsn=dsn, lake="lake", warehouse=dsn))
    assert PASSWORD not in repr(Settings(source_dsn=dsn))
    assert masked(f"postgresql://u:{PASSWORD}@h/db") == "postgresql://u:***@h/db"


@needs_own_server
def test_the_embedded_server_inherits_no_secret(monkeypatch):
    planted = {
        "TOTES_SOURCE_DSN": f"postgresql://u:{PASSWORD}@h/db",
        "PGPASSWORD": PASSWORD,
        "TOTES_WAREHOUSE": f"host=h password={PASSWORD}",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    directory = make_scratch_dir("totes-secrets-env-")
    pg = EmbeddedPostgres(directory)
    try:
        pg.start()
        postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
        environ = Path(f"/proc/{postmaster}/environ").read_bytes()
    finally:
        pg.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert PASSWORD.encode() not in environ
    assert not any(entry.split(b"=", 1)[0].decode() in planted for entry in environ.split(b"\0") if entry)


def test_the_warehouse_dsn_from_secrets_manager_or_a_password_file(moto, tmp_path, monkeypatch):
    from totes_cli.settings import resolve_warehouse

    secrets = moto.client("secretsmanager")
    stored = f"postgresql://sync:{PASSWORD}@warehouse.example:5432/warehouse"
    arn = secrets.create_secret(Name="wh-dsn", SecretString=stored)["ARN"]
    monkeypatch.setenv("TOTES_CONFIG", str(tmp_path / "none.toml"))
    for name, value in {**_aws(moto), "TOTES_WAREHOUSE_SECRET": arn}.items():
        monkeypatch.setenv(name, value)
    assert resolve_warehouse(None, "default.duckdb") == stored  # as the sync task runs in AWS
    assert resolve_warehouse(str(tmp_path / "w.duckdb"), "default.duckdb") == str(tmp_path / "w.duckdb")

    monkeypatch.delenv("TOTES_WAREHOUSE_SECRET")
    password_file = tmp_path / "warehouse-password"
    password_file.write_text(PASSWORD)
    monkeypatch.setenv("TOTES_WAREHOUSE_PASSWORD_FILE", str(password_file))
    completed = resolve_warehouse("postgresql://sync@warehouse.example/warehouse", "default.duckdb")
    assert psycopg2.extensions.parse_dsn(completed)["password"] == PASSWORD
