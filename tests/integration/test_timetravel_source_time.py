"""`--as-of TIMESTAMP` is source time: the state after every transaction committed at or
before it, exact across tables and shards, whatever the lake's own clock says."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from lake.layout import LakeLayout
from lake.timetravel import AsOfError, lsn_at_time
from lake.writer import LakeWriter
from tests.lake_fixtures import PAYMENT, SALES_ORDER, Source, payment_row, sales_order_row
from totes_cli.app import app
from tests.lake_fixtures import count, runner

DAY = "2024-11-15T21:13:"


def at(source: Source, seconds: float) -> None:
    """The next transaction commits at 21:13:`seconds` (source time)."""
    source.commit_ts = datetime.fromisoformat(f"{DAY}00+00:00") + timedelta(seconds=seconds - 1)


def write_lake(path, slow_shard_marker: str = "last") -> dict[str, int]:
    """20 payments and 5 orders snapshotted; payment truncated at 55.20 and one inserted at
    55.27 on one shard; an order inserted at 55.31 on the other shard, written first; another
    payment at 55.33. Returns the LSNs by name."""
    writer, source = LakeWriter(path), Source(commit_ts=datetime.fromisoformat(f"{DAY}50+00:00"))
    payments = source.snapshot(PAYMENT, [payment_row(i) for i in range(1, 21)])
    orders = source.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 6)])
    lsns = {"snapshot": source.lsn}
    for name, seconds, change in [
        ("truncate", 55.20, lambda tx: tx.truncate(PAYMENT)),
        ("payment", 55.27, lambda tx: tx.insert(PAYMENT, payment_row(9001))),
        ("order", 55.31, lambda tx: tx.insert(SALES_ORDER, sales_order_row(99))),
        ("payment2", 55.33, lambda tx: tx.insert(PAYMENT, payment_row(9002))),
    ]:
        at(source, seconds)
        with source.transaction() as tx:
            change(tx)
        lsns[name] = tx.lsn
        lsns[f"{name}_events"] = tx.events  # type: ignore[assignment]
    last = lsns["payment2"]
    # The orders' shard runs ahead: its later transaction lands in the lake before the payments'.
    writer.write_batch(
        "shard-orders",
        orders + lsns["order_events"],
        [lsns[slow_shard_marker] if slow_shard_marker != "last" else last],
    )
    writer.write_batch(
        "shard-payments", payments + lsns["truncate_events"] + lsns["payment_events"] + lsns["payment2_events"], [last]
    )
    return lsns


def test_a_time_answers_the_source_state_then_across_tables_and_shards(tmp_path):
    write_lake(tmp_path)
    assert count(tmp_path, "payment", f"{DAY}55.3") == 1  # truncated, then one inserted at 55.27
    assert count(tmp_path, "sales_order", f"{DAY}55.3") == 5  # the order of 55.31 not yet
    assert count(tmp_path, "payment", f"{DAY}55.25") == 0  # between the truncate and the insert
    assert count(tmp_path, "sales_order", f"{DAY}55.32") == 6
    assert count(tmp_path, "payment", f"{DAY}55.32") == 1
    assert count(tmp_path, "payment", f"{DAY}55.33") == 2  # at or before: the commit at 55.33 counts
    before = runner.invoke(app, ["query", "SELECT 1", "--lake", str(tmp_path), "--as-of", f"{DAY}52"])
    assert (
        before.exit_code == 2 and "before the lake's first source commit" in before.output
    )  # the snapshot's time is unknown


def test_a_time_maps_to_the_last_commit_at_or_before_it(tmp_path):
    lsns = write_lake(tmp_path)
    layout = LakeLayout(tmp_path)
    assert lsn_at_time(layout, datetime.fromisoformat(f"{DAY}55.30+00:00")) == lsns["payment"]
    assert lsn_at_time(layout, datetime.fromisoformat(f"{DAY}55.31+00:00")) == lsns["order"]
    # A quiet spell after the last commit, before every shard's newest marker landed:
    assert lsn_at_time(layout, datetime.fromisoformat(f"{DAY}59+00:00")) == lsns["payment2"]
    with pytest.raises(AsOfError, match="not caught up"):  # after the markers: the source may have moved on
        lsn_at_time(layout, datetime.now(timezone.utc))


def test_a_time_past_what_every_shard_holds_is_refused_in_one_sentence(tmp_path):
    write_lake(tmp_path, slow_shard_marker="truncate")  # the orders' shard has passed the truncate's marker only
    with pytest.raises(AsOfError, match="not caught up to that time yet"):
        lsn_at_time(LakeLayout(tmp_path), datetime.fromisoformat(f"{DAY}55.30+00:00"))
    result = runner.invoke(
        app, ["query", "SELECT 1", "--lake", str(tmp_path), "--as-of", f"{DAY}55.3"], env={"COLUMNS": "240"}
    )
    assert result.exit_code == 2 and "has not caught up to that time yet" in result.output
    assert "Traceback" not in result.output
    assert count(tmp_path, "payment", f"{DAY}55.21") == 0  # up to the watermark: answered


def test_the_dashboards_lake_page_reads_a_time_as_source_time(tmp_path):
    from dashboard.reading import MomentError, lake_state

    write_lake(tmp_path)
    moment = datetime.fromisoformat(f"{DAY}55.30+00:00")
    assert lake_state(str(tmp_path), "public.payment", moment)["payment_id"].to_list() == [9001]
    assert lake_state(str(tmp_path), "public.sales_order", moment).height == 5
    with pytest.raises(MomentError, match="not caught up"):
        lake_state(str(tmp_path), "public.payment", datetime.now(timezone.utc))


def test_an_unsynced_warehouse_answers_the_lake_and_says_so(tmp_path):
    import duckdb

    write_lake(tmp_path / "lake")
    duckdb.connect(str(tmp_path / "wh.duckdb")).close()  # no tables yet
    result = runner.invoke(
        app,
        [
            "query",
            "SELECT count(*) AS n FROM payment",
            "--lake",
            str(tmp_path / "lake"),
            "--warehouse",
            str(tmp_path / "wh.duckdb"),
            "--as-of",
            f"{DAY}55.3",
            "--format",
            "json",
        ],
        env={"COLUMNS": "240"},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 1}]
    assert "the warehouse has synced up to nothing only" in result.stderr


# -- through the whole pipeline, from a real PostgreSQL ----------------------------------------


@pytest.mark.slow
def test_truncate_then_insert_as_of_a_source_time_in_lake_and_warehouse(totesys_dsn, tmp_path, own_kinesalite):
    """payment truncated and one payment inserted: a time just after the insert's commit
    answers that one row, in the lake's table and in the warehouse's fact table."""
    import threading

    import psycopg2

    from change_events import format_lsn
    from lake.timetravel import changes_as_of_lsn
    from tests.run_process import wait_for
    from totes_cli.pipeline import Pipeline, PipelineConfig
    from totesys.simulator import Simulator
    from cdc_reader.source import current_wal_lsn

    with Simulator(totesys_dsn, seed=5) as simulator:
        simulator.seed_history(2, until=datetime(2024, 11, 15, 18))
    lake, warehouse = tmp_path / "lake", tmp_path / "wh.duckdb"
    pipeline = Pipeline(
        PipelineConfig(source_dsn=totesys_dsn, lake=str(lake), warehouse=str(warehouse), heartbeat_seconds=0.5)
    )
    thread = threading.Thread(target=pipeline.run, daemon=True)

    def run_until(lsn: int) -> None:
        def done():
            assert not pipeline.errors, pipeline.errors
            assert thread.is_alive(), "the pipeline stopped"
            return pipeline.caught_up_with(lsn)

        wait_for(done, 120, f"the warehouse to reach {lsn:X}")

    conn = psycopg2.connect(totesys_dsn)
    conn.autocommit = True
    thread.start()
    try:
        run_until(current_wal_lsn(totesys_dsn))
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM payment")
            (before,) = cur.fetchone()
            cur.execute("CREATE TEMP TABLE kept AS SELECT * FROM payment ORDER BY payment_id LIMIT 1")
            cur.execute("TRUNCATE payment")
            cur.execute("INSERT INTO payment SELECT * FROM kept")
            cur.execute("UPDATE payment SET paid = NOT paid")  # a later commit: the lake has passed the time
        run_until(current_wal_lsn(totesys_dsn))
    finally:
        pipeline.stop.set()
        thread.join(60)
        conn.close()
    assert not pipeline.errors, pipeline.errors
    assert before > 1
    log = changes_as_of_lsn(LakeLayout(lake), "public.payment", 2**63 - 1).to_pylist()
    inserted = next(row["_commit_ts"] for row in log if row["_op"] == "c")
    updated = next(row["_commit_ts"] for row in log if row["_op"] == "u")
    moment = (inserted + (updated - inserted) / 2).isoformat()
    assert count(lake, "payment", moment) == 1
    result = runner.invoke(
        app,
        [
            "query",
            "SELECT count(*) AS n, bool_and(NOT paid) AS unpaid_then FROM fact_payment",
            "--lake",
            str(lake),
            "--warehouse",
            str(warehouse),
            "--as-of",
            moment,
            "--format",
            "json",
        ],
        catch_exceptions=False,
        env={"COLUMNS": "240"},
    )
    assert result.exit_code == 0, result.output
    kept_paid = next(row["paid"] for row in log if row["_op"] == "c")
    assert json.loads(result.stdout) == [{"n": 1, "unpaid_then": not kept_paid}]
    truncated = next(row["_lsn"] for row in log if row["_op"] == "t")
    facts = {}
    for name, lsn in (("snapshot", truncated - 1), ("truncated", truncated)):
        result = runner.invoke(
            app,
            [
                "query",
                "SELECT count(*) AS n FROM fact_payment",
                "--lake",
                str(lake),
                "--warehouse",
                str(warehouse),
                "--as-of",
                format_lsn(lsn),
                "--format",
                "json",
            ],
            catch_exceptions=False,
            env={"COLUMNS": "240"},
        )
        assert result.exit_code == 0, result.output
        facts[name] = json.loads(result.stdout)[0]["n"]
    assert facts == {"snapshot": before, "truncated": 0}
