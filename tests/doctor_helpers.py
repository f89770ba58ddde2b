"""Running `totes doctor`'s checks and reading their one-line answers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from cdc_reader.doctor import CheckResult, Status
from tests.conftest import make_scratch_dir
from totes_cli.app import app
from totesys.embedded import EmbeddedPostgres
from totesys.schema import create_schema, ensure_database

EXTERNAL = bool(os.environ.get("TOTES_TEST_DSN"))


needs_own_server = pytest.mark.skipif(EXTERNAL, reason="starts its own embedded server; TOTES_TEST_DSN is set")


def run_cli(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, ["doctor", *args], env=env)
    # Exits go through typer.Exit; anything else escaping is a crash.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def problems(results: list[CheckResult]) -> list[CheckResult]:
    return [result for result in results if result.status is Status.PROBLEM]


def assert_one_line(result, exit_code: int, *, secret: str | None = None) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    if secret:
        assert secret not in result.output
    return lines[0]


REPLICA_SERVER_SLOTS = 2


@pytest.fixture(scope="module")
def replica_level_server() -> Iterator[str]:
    """DSN of a totesys database on a server running with wal_level=replica."""
    if EXTERNAL:
        pytest.skip("starts its own embedded server; TOTES_TEST_DSN is set")
    directory = make_scratch_dir("totes-doctor-replica-")
    server = EmbeddedPostgres(
        directory, settings={"wal_level": "replica", "max_replication_slots": str(REPLICA_SERVER_SLOTS)}
    )
    try:
        dsn = ensure_database(server.start(), "totesys")
        create_schema(dsn)
        yield dsn
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
