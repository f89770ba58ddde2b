"""`totes sync` as an operator meets it when the warehouse goes away for good: one sentence and
a non-zero exit once reconnecting has failed (the real reconnect is tested in
test_warehouse_exactly_once.py), never a traceback, never the password."""

from __future__ import annotations

import psycopg2
import pytest
from typer.testing import CliRunner

from totes_cli import sync_cmd
from warehouse_sync import sync_loop
from totes_cli.app import app
from cdc_reader.source import SourceConnectionError
from tests.fakes import GoneWarehouse

PASSWORD = "Wh-Secret-91c"


@pytest.mark.parametrize(
    "failure",
    [
        psycopg2.OperationalError(f"server closed the connection unexpectedly\npassword={PASSWORD}"),
        SourceConnectionError("The warehouse PostgreSQL at db.example:5432 is not reachable."),
    ],
    ids=["dropped", "unreachable"],
)
def test_a_warehouse_that_stays_gone_ends_the_sync_in_one_sentence(tmp_path, monkeypatch, failure):
    warehouse = GoneWarehouse()

    def sync_once(*args, **kwargs):
        raise failure

    monkeypatch.setattr(sync_cmd, "stream_shards", lambda stream: ["shardId-000000000000"])
    monkeypatch.setattr(sync_cmd, "open_target", lambda dsn: warehouse)
    monkeypatch.setattr(sync_loop, "sync_once", sync_once)
    result = CliRunner().invoke(
        app,
        [
            "sync",
            "--once",
            "--lake",
            str(tmp_path / "lake"),
            "--warehouse",
            f"postgresql://sync:{PASSWORD}@db.example/warehouse",
        ],
    )
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith("error: ") and "resumes from its checkpoint" in line, line
    assert PASSWORD not in result.output
    assert warehouse.closed
