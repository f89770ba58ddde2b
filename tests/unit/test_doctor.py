"""`totes doctor`: every readiness check against a real PostgreSQL, through the function and the CLI.

Servers with a deliberately wrong configuration (wal_level=replica, password logins) are
embedded servers of their own; with TOTES_TEST_DSN (an external server) those tests skip.
"""

from __future__ import annotations

import json
import shutil

import pytest

from cdc_reader.doctor import table_refs
from tests.conftest import free_port, make_scratch_dir
from cdc_reader.source import redact
from totesys.schema import TABLES
from tests.doctor_helpers import assert_one_line, run_cli


def test_cli_without_any_source_says_so(tmp_path) -> None:
    env = {"TOTES_SOURCE_DSN": "", "TOTES_HOME": str(tmp_path / "home"), "TOTES_CONFIG": str(tmp_path / "none.toml")}
    line = assert_one_line(run_cli(env=env), 2)
    assert "No source database: pass --source" in line


def test_table_refs() -> None:
    assert table_refs() == table_refs(list(TABLES))
    assert [str(r) for r in table_refs(["a", " b ", "", "x.c", "a"], "s")] == ["s.a", "s.b", "x.c"]


# -- cannot connect: one sentence, exit 2, no secrets ------------------------------------------


@pytest.mark.parametrize(
    "dsn, expected",
    [
        ("not a dsn", "The source DSN is not valid"),
        ("host=localhost password=hunter2-Secret port=abc", "The source DSN is not valid"),
        ("postgresql://someone:hunter2-Secret@[::1/db", "The source DSN is not valid"),
        ("postgresql://someone:hunter2-Secret@localhost/db?nonsense=1", "The source DSN is not valid"),
    ],
)
def test_bad_dsn(dsn: str, expected: str) -> None:
    line = assert_one_line(run_cli("--dsn", dsn), 2, secret="hunter2-Secret")
    assert line.startswith(f"error: {expected}")
    if "[" in dsn:  # printed as text, not taken for console markup
        assert "someone:***@[::1/db" in line

    result = run_cli("--dsn", dsn, "--json")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["ready"] is False and payload["error"].startswith(expected)
    assert "hunter2-Secret" not in result.output


def test_nothing_listening_on_a_socket_dir() -> None:
    empty = make_scratch_dir("totes-doctor-nothing-")
    try:
        dsn = f"postgresql://postgres:hunter2-Secret@/totesys?host={empty}&port=5432"
        line = assert_one_line(run_cli("--dsn", dsn), 2, secret="hunter2-Secret")
        assert line == (
            f"error: Nothing answers at the unix socket in {empty} (port 5432): check that "
            "PostgreSQL is running there and that the host and port in the DSN are right."
        )
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def test_nothing_listening_on_a_tcp_port() -> None:
    port = free_port()
    dsn = f"host=127.0.0.1 port={port} user=postgres password=hunter2-Secret dbname=totesys"
    line = assert_one_line(run_cli("--dsn", dsn), 2, secret="hunter2-Secret")
    assert line.startswith(f"error: Nothing answers at 127.0.0.1:{port}:")


def test_redact_keeps_passwords_out_of_messages() -> None:
    assert (
        redact("postgresql://u:s3cret-pw@[::1/db", 'bad URI: "postgresql://u:s3cret-pw@[::1/db"')
        == 'bad URI: "postgresql://u:***@[::1/db"'
    )
    assert "s3cret" not in redact("host=h password='s3cret pw'", "echo host=h password='s3cret pw'")
    assert "p%40ss" not in redact("postgresql://u:p%40ss-word@h/db", "x postgresql://u:p%40ss-word@h/db")
    assert redact("host=h password=ab", "user ab at host h") == "user ab at host h"
