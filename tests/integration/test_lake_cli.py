"""`totes lake ...` and `totes query` over a real lake written by the stream processor."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from change_events import encode_events, format_lsn
from lake.dead_letters import DeadLetters, list_dead_letters
from lake.layout import LakeLayout
from tests.lake_fixtures import SALES_ORDER, Source, sales_order_row, three_batches
from totes_cli.app import app

runner = CliRunner()


def totes(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "240"})
    return result


@pytest.fixture
def lake(tmp_path):
    """Three batches: 5 orders, then 2 updates, then a delete; returns (path, LSNs of each)."""
    return str(tmp_path), three_batches(tmp_path)


def rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def query_rows(path: str, query: str, *options: str) -> list[dict]:
    """`totes query` over the lake at `path`, its answer read as JSON rows."""
    return rows(totes("query", query, "--lake", path, *options, "--format", "json"))


def test_query_current_state_and_change_log(lake):
    path, _ = lake
    assert query_rows(path, "SELECT count(*) AS n FROM sales_order") == [{"n": 4}]
    log = query_rows(path, "SELECT _op, count(*) AS n FROM changes_sales_order GROUP BY _op ORDER BY _op")
    assert log == [{"_op": "d", "n": 1}, {"_op": "r", "n": 5}, {"_op": "u", "n": 2}]


def test_query_as_of_version_lsn_and_time(lake):
    path, lsns = lake
    # Version 0 of a state table is its creation; version 1 holds the snapshot's merge.
    assert query_rows(path, "SELECT count(*) AS n FROM sales_order", "--as-of", "0") == [{"n": 0}]
    assert query_rows(path, "SELECT count(*) AS n FROM sales_order", "--as-of", "1") == [{"n": 5}]
    before_delete = query_rows(path, "SELECT count(*) AS n FROM sales_order", "--as-of", format_lsn(lsns[1]))
    assert before_delete == [{"n": 5}]
    at_start = query_rows(
        path, "SELECT count(*) AS n FROM sales_order WHERE sales_order_id = 3", "--as-of", format_lsn(lsns[2])
    )
    assert at_start == [{"n": 0}]
    now = datetime.now(timezone.utc).isoformat()
    assert query_rows(path, "SELECT count(*) AS n FROM sales_order", "--as-of", now) == [{"n": 4}]
    bad = totes("query", "SELECT 1", "--lake", path, "--as-of", "yesterday")
    assert bad.exit_code == 2 and "neither a version" in bad.output


def test_history_lists_versions_with_their_lsn_ranges(lake):
    path, lsns = lake
    result = totes("lake", "history", "sales_order", "--lake", path)
    assert result.exit_code == 0, result.output
    assert format_lsn(lsns[2]) in result.output and "MERGE" in result.output.upper()
    missing = totes("lake", "history", "nope", "--lake", path)
    assert missing.exit_code == 2 and "has no table 'nope'" in missing.output


def test_dead_letters_are_listed_and_re_driven(lake):
    path, _ = lake
    layout = LakeLayout(path)
    source = Source(start_lsn=0x9000000)
    with source.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(77))
    DeadLetters(layout).add(
        "lake was down", encode_events(tx.events), shard="shardId-000000000000", sequence_number="99"
    )
    DeadLetters(layout).add(
        "undecodable record: garbage", b"garbage", shard="shardId-000000000000", sequence_number="98"
    )
    listed = totes("lake", "dead-letters", "--lake", path)
    assert listed.exit_code == 0 and "lake was down" in listed.output and "garbage" in listed.output
    redriven = totes("lake", "dead-letters", "--lake", path, "--redrive")
    assert redriven.exit_code == 1 and "still undecodable" in redriven.output
    assert [letter.reason for letter in list_dead_letters(layout)] == ["undecodable record: garbage"]
    assert query_rows(path, "SELECT count(*) AS n FROM sales_order WHERE sales_order_id = 77") == [{"n": 1}]


def test_maintain_keeps_the_lake_readable(lake):
    path, _ = lake
    result = totes("lake", "maintain", "--lake", path, "--retain", "1m")
    assert result.exit_code == 0, result.output
    assert query_rows(path, "SELECT count(*) AS n FROM sales_order") == [{"n": 4}]


def test_status_shows_what_the_lake_stores_against_its_live_data(lake, tmp_path):
    path, _ = lake
    env = {
        "COLUMNS": "240",
        "TOTES_LAKE": path,
        "TOTES_HOME": str(tmp_path / "home"),
        "TOTES_SOURCE_DSN": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
    }
    result = runner.invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 1  # no source here; the lake is still measured
    size = json.loads(result.stdout)["lake_size"]
    tables = size["tables"]
    assert set(tables) == {"changes/public.sales_order", "tables/public.sales_order"}
    for measured in tables.values():
        assert measured["stored_bytes"] > measured["live_bytes"] > 0 and measured["files"] > 1
    assert size["stored_bytes"] == sum(t["stored_bytes"] for t in tables.values())
    assert size["live_bytes"] == sum(t["live_bytes"] for t in tables.values())
    shown = runner.invoke(app, ["status"], env=env).output
    assert "lake size" in shown and "stored/live" in shown and "tables/public.sales_order" in shown
    maintained = totes("lake", "maintain", "--lake", path, "--retain", "1m")
    assert maintained.exit_code == 0 and "time travel kept for 1m" in maintained.output
    refused = totes("lake", "maintain", "--lake", path, "--retain", "10s")
    assert refused.exit_code == 2 and "1m or more" in refused.output
