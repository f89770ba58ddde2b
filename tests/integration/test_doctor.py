"""`totes doctor`: every readiness check against a real PostgreSQL, through the function and the CLI.

Servers with a deliberately wrong configuration (wal_level=replica, password logins) are
embedded servers of their own; with TOTES_TEST_DSN (an external server) those tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import closing

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from cdc_reader import doctor
from cdc_reader.doctor import CheckResult, Status, diagnose, is_ready
from tests.conftest import make_scratch_dir
from cdc_reader.source import SourceConnectionError
from totesys.embedded import EmbeddedPostgres
from totesys.schema import TABLES
from tests.doctor_helpers import EXTERNAL, REPLICA_SERVER_SLOTS, assert_one_line, needs_own_server, problems, run_cli


# -- helpers ---------------------------------------------------------------------------------


def execute(dsn: str, *statements: str | sql.Composable) -> None:
    with closing(psycopg2.connect(dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)


def by_subject(results: list[CheckResult], subject: str) -> list[CheckResult]:
    return [result for result in results if result.subject == subject]


# -- servers of our own ------------------------------------------------------------------------


PASSWORD_ROLE = "doctor_pw"
RIGHT_PASSWORD = "right-Secret-4711"
WRONG_PASSWORD = "wrong-Secret-0815"


@pytest.fixture(scope="module")
def password_server() -> Iterator[EmbeddedPostgres]:
    """A server where PASSWORD_ROLE must log in with scram-sha-256 over the local socket."""
    if EXTERNAL:
        pytest.skip("starts its own embedded server; TOTES_TEST_DSN is set")
    directory = make_scratch_dir("totes-doctor-pw-")
    server = EmbeddedPostgres(directory, hba_rules=[f"local all {PASSWORD_ROLE} scram-sha-256"])
    try:
        admin = server.start()
        execute(
            admin,
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(PASSWORD_ROLE), sql.Literal(RIGHT_PASSWORD)
            ),
        )
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def login_role(totesys_dsn: str) -> Iterator[tuple[str, str]]:
    """A fresh login role (no REPLICATION) allowed to read the totesys tables; (name, password)."""
    name = f"totes_doctor_{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    execute(
        totesys_dsn,
        sql.SQL("CREATE ROLE {} LOGIN NOREPLICATION NOSUPERUSER PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)
        ),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(name)),
    )
    yield name, password
    execute(
        totesys_dsn,
        sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)),
        sql.SQL("DROP ROLE {}").format(sql.Identifier(name)),
    )


# -- a ready source ----------------------------------------------------------------------------


def test_totesys_schema_is_ready(totesys_dsn: str) -> None:
    results = diagnose(totesys_dsn)
    assert is_ready(results), problems(results)
    assert {
        "server_version",
        "wal_level",
        "replication_slots",
        "wal_senders",
        "replication_privilege",
        "publication",
        "table",
    } <= {r.check for r in results}
    tables = [r for r in results if r.check == "table"]
    assert [r.subject for r in tables] == [f"public.{name}" for name in TABLES]
    assert all(r.status is Status.OK for r in tables)
    version = next(r for r in results if r.check == "server_version")
    assert version.message.startswith("PostgreSQL ")


def test_cli_ready_exits_0_with_a_summary(totesys_dsn: str) -> None:
    result = run_cli("--dsn", totesys_dsn)
    assert result.exit_code == 0, result.output
    assert "Ready for change-data capture: PostgreSQL" in result.stdout
    assert "11 tables checked" in result.stdout
    assert "problem" not in result.output


def test_cli_verbose_lists_every_check(totesys_dsn: str) -> None:
    result = run_cli("--dsn", totesys_dsn, "--verbose")
    assert result.exit_code == 0, result.output
    assert "wal_level is logical." in result.stdout
    assert "Table public.payment is ready" in result.stdout


def test_cli_json(totesys_dsn: str) -> None:
    result = run_cli("--dsn", totesys_dsn, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ready"] is True
    assert payload["source"]["dbname"].startswith("totes_test_")
    assert {"check", "status", "message", "subject"} == set(payload["checks"][0])
    assert {c["status"] for c in payload["checks"]} == {"ok"}


def test_cli_takes_the_source_from_the_environment(totesys_dsn: str, tmp_path) -> None:
    env = {"TOTES_SOURCE_DSN": totesys_dsn, "TOTES_CONFIG": str(tmp_path / "none.toml")}
    result = run_cli(env=env)
    assert result.exit_code == 0, result.output


# -- server settings ---------------------------------------------------------------------------


@needs_own_server
def test_wal_level_replica_is_a_problem(replica_level_server: str) -> None:
    results = diagnose(replica_level_server)
    assert [r.check for r in problems(results)] == ["wal_level"]

    result = run_cli("--dsn", replica_level_server)
    assert result.exit_code == 1, result.output
    assert result.stdout.strip().splitlines() == [
        "problem wal_level is 'replica': run ALTER SYSTEM SET wal_level = logical "
        "(on RDS set rds.logical_replication = 1) and restart PostgreSQL."
    ]
    assert "Not ready" in result.stderr


@needs_own_server
def test_no_free_replication_slot_is_a_problem(replica_level_server: str) -> None:
    slots = [f"doctor_full_{n}" for n in range(REPLICA_SERVER_SLOTS)]
    execute(
        replica_level_server,
        *(sql.SQL("SELECT pg_create_physical_replication_slot({})").format(sql.Literal(slot)) for slot in slots),
    )
    try:
        results = diagnose(replica_level_server)
        [full] = [r for r in results if r.check == "replication_slots"]
        assert full.status is Status.PROBLEM
        assert full.message.startswith(f"All {REPLICA_SERVER_SLOTS} replication slots are in use: drop")
    finally:
        execute(
            replica_level_server,
            *(sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(slot)) for slot in slots),
        )


# -- tables ------------------------------------------------------------------------------------


def test_table_without_primary_key_is_flagged(totesys_dsn: str) -> None:
    execute(totesys_dsn, "ALTER TABLE currency DROP CONSTRAINT currency_pkey CASCADE")
    results = diagnose(totesys_dsn)
    assert [r.subject for r in problems(results)] == ["public.currency"]
    [problem] = problems(results)
    assert problem.message.startswith(
        'Table public.currency has no primary key: add one (ALTER TABLE "public"."currency" ADD PRIMARY KEY'
    )
    assert "REPLICA IDENTITY FULL" in problem.message

    result = run_cli("--dsn", totesys_dsn)
    assert result.exit_code == 1
    assert len(result.stdout.strip().splitlines()) == 1
    assert "public.currency has no primary key" in result.stdout


def test_replica_identities(totesys_dsn: str) -> None:
    execute(
        totesys_dsn,
        "CREATE TABLE no_key (id int, note text)",
        "CREATE TABLE identity_nothing (id int PRIMARY KEY, note text)",
        "ALTER TABLE identity_nothing REPLICA IDENTITY NOTHING",
        "CREATE TABLE identity_full (id int, note text)",
        "ALTER TABLE identity_full REPLICA IDENTITY FULL",
        "CREATE TABLE identity_index (id int NOT NULL, note text)",
        "CREATE UNIQUE INDEX identity_index_id ON identity_index (id)",
        "ALTER TABLE identity_index REPLICA IDENTITY USING INDEX identity_index_id",
        'CREATE TABLE "Mixed Case" (id int PRIMARY KEY)',
        "CREATE VIEW a_view AS SELECT 1 AS id",
    )
    results = diagnose(
        totesys_dsn, tables=["no_key", "identity_nothing", "identity_full", "identity_index", "Mixed Case", "a_view"]
    )
    status = {r.subject: r.status for r in results if r.check == "table"}
    assert status == {
        "public.no_key": Status.PROBLEM,
        "public.identity_nothing": Status.PROBLEM,
        "public.identity_full": Status.OK,
        "public.identity_index": Status.OK,
        "public.Mixed Case": Status.OK,
        "public.a_view": Status.PROBLEM,
    }
    [nothing] = by_subject(results, "public.identity_nothing")
    assert "REPLICA IDENTITY NOTHING" in nothing.message
    assert 'ALTER TABLE "public"."identity_nothing" REPLICA IDENTITY' in nothing.message
    [view] = by_subject(results, "public.a_view")
    assert "is a view" in view.message

    result = run_cli("--dsn", totesys_dsn, "--tables", "identity_nothing, identity_full")
    assert result.exit_code == 1
    assert "public.identity_nothing has REPLICA IDENTITY NOTHING" in result.stdout
    assert "identity_full" not in result.stdout


def test_missing_tables_are_flagged(totesys_dsn: str, empty_database: str) -> None:
    results = diagnose(totesys_dsn, tables=["address", "no_such_table"])
    [missing] = problems(results)
    assert missing.subject == "public.no_such_table"
    assert missing.message.startswith("Table public.no_such_table does not exist:")

    result = run_cli("--dsn", empty_database)
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(TABLES)
    assert all("does not exist" in line for line in lines)
    assert "public.payment_type" in result.stdout


def test_schema_option(totesys_dsn: str) -> None:
    execute(totesys_dsn, "CREATE SCHEMA sales", "CREATE TABLE sales.orders (id int PRIMARY KEY)")
    assert is_ready(diagnose(totesys_dsn, tables=["orders"], schema="sales"))
    result = run_cli("--dsn", totesys_dsn, "--schema", "sales", "--tables", "orders,address")
    assert result.exit_code == 1
    assert "Table sales.address does not exist" in result.stdout
    assert run_cli("--dsn", totesys_dsn, "--tables", "sales.orders,public.address").exit_code == 0


# -- the connecting role -----------------------------------------------------------------------


def test_role_without_replication_is_flagged(totesys_dsn: str, login_role: tuple[str, str]) -> None:
    name, password = login_role
    dsn = make_dsn(totesys_dsn, user=name, password=password)
    results = diagnose(dsn)
    [problem] = problems(results)
    assert problem.check == "replication_privilege"
    assert problem.message == (
        f"Role '{name}' may not open a replication connection: as a superuser run "
        f'ALTER ROLE "{name}" WITH REPLICATION (on RDS: GRANT rds_replication TO "{name}").'
    )
    # Not the owner of the tables: creating the publication is someone else's job (a warning).
    [publication] = [r for r in results if r.check == "publication"]
    assert publication.status is Status.WARNING
    assert "CREATE PUBLICATION" in publication.message

    result = run_cli("--dsn", dsn)
    assert result.exit_code == 1
    assert f"Role '{name}' may not open a replication connection" in result.stdout
    assert password not in result.output

    execute(totesys_dsn, sql.SQL("ALTER ROLE {} WITH REPLICATION").format(sql.Identifier(name)))
    result = run_cli("--dsn", dsn)
    assert result.exit_code == 0, result.output
    assert "1 warning" in result.stdout


def test_role_that_cannot_read_the_tables(totesys_dsn: str, login_role: tuple[str, str]) -> None:
    name, password = login_role
    execute(
        totesys_dsn,
        sql.SQL("ALTER ROLE {} WITH REPLICATION").format(sql.Identifier(name)),
        sql.SQL("REVOKE SELECT ON address, payment FROM {}").format(sql.Identifier(name)),
    )
    results = diagnose(make_dsn(totesys_dsn, user=name, password=password))
    [problem] = problems(results)
    assert problem.check == "table_privilege"
    assert "cannot read 2 tables (public.address, public.payment)" in problem.message
    assert f'GRANT SELECT ON "public"."address", "public"."payment" TO "{name}"' in problem.message


def test_existing_publication(totesys_dsn: str) -> None:
    execute(totesys_dsn, "CREATE PUBLICATION totes_cdc FOR TABLE address WITH (publish = 'insert')")
    results = diagnose(totesys_dsn)
    assert is_ready(results)
    [publication] = [r for r in results if r.check == "publication"]
    assert publication.status is Status.WARNING
    assert "does not publish update, delete, truncate" in publication.message


# -- replication slots -------------------------------------------------------------------------


def test_totes_slots_are_reported(totesys_dsn: str, monkeypatch) -> None:
    slot = f"totes_doctor_{uuid.uuid4().hex[:8]}"
    execute(totesys_dsn, sql.SQL("SELECT pg_create_logical_replication_slot({}, 'pgoutput')").format(sql.Literal(slot)))
    try:
        [info] = by_subject(diagnose(totesys_dsn), slot)
        assert info.status is Status.OK
        assert "is inactive and retains" in info.message

        monkeypatch.setattr(doctor, "RETAINED_WAL_WARNING_BYTES", -1)
        results = diagnose(totesys_dsn)
        [warning] = by_subject(results, slot)
        assert warning.status is Status.WARNING
        assert f"Inactive logical slot '{slot}'" in warning.message
        assert "pg_drop_replication_slot" in warning.message
        assert is_ready(results)
    finally:
        execute(totesys_dsn, sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(slot)))


def test_missing_database(totesys_dsn: str) -> None:
    dsn = make_dsn(totesys_dsn, dbname="totes_no_such_database")
    line = assert_one_line(run_cli("--dsn", dsn), 2)
    assert line.startswith("error: Database 'totes_no_such_database' does not exist on ")
    with pytest.raises(SourceConnectionError, match="does not exist"):
        diagnose(dsn)


@needs_own_server
def test_wrong_password(password_server: EmbeddedPostgres) -> None:
    dsn = make_dsn(password_server.dsn("postgres"), user=PASSWORD_ROLE, password=WRONG_PASSWORD)
    line = assert_one_line(run_cli("--dsn", dsn), 2, secret=WRONG_PASSWORD)
    assert line.startswith(
        f"error: PostgreSQL at {password_server.socket_dir}:5432 rejected the password "
        f"for user '{PASSWORD_ROLE}': check the password"
    )

    result = run_cli("--dsn", dsn, "--json")
    assert result.exit_code == 2
    assert "rejected the password" in json.loads(result.stdout)["error"]
    assert WRONG_PASSWORD not in result.output

    # The right password gets in (the rule really asks for it): the doctor then runs its checks.
    good = make_dsn(password_server.dsn("postgres"), user=PASSWORD_ROLE, password=RIGHT_PASSWORD)
    result = run_cli("--dsn", good)
    assert result.exit_code == 1, result.output
    assert "may not open a replication connection" in result.stdout
    assert RIGHT_PASSWORD not in result.output


@needs_own_server
def test_missing_password(password_server: EmbeddedPostgres, monkeypatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    dsn = make_dsn(password_server.dsn("postgres"), user=PASSWORD_ROLE)
    line = assert_one_line(run_cli("--dsn", dsn), 2)
    assert "wants a password" in line
