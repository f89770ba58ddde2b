"""The lake's watermarks, time travel (by version, timestamp and LSN, and from DuckDB), maintenance
inside the time-travel window, and dead letters kept once and redriven."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import duckdb

from lake import timetravel as tt
from lake.dead_letters import DeadLetters
from lake.maintenance import maintain
from change_events import decode
from tests.lake_fixtures import SALES_ORDER, TODAY, Source, expected_state, lake_state, sales_order_row, table_snapshot
from tests.moto_s3 import moto_s3  # noqa: F401  (the session's S3 server, a fixture)
from tests.lake_scenario import PAY, SO, SO_KEY
from tests.lake_scenario import lake_under_test  # noqa: F401  (the `new_lake` fixture)
from tests.lake_scenario import writer, scenario, run


# -- watermarks -------------------------------------------------------------------------------


def test_watermark_is_the_minimum_marker_over_shards(new_lake):
    src = Source()
    layout = new_lake()
    lake = writer(layout)
    assert lake.lake_watermark(["a", "b"]) == 0
    with src.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(1))
    assert lake.write_batch("a", tx.events, markers=[100, 300]).marker == 300
    assert lake.lake_watermark(["a", "b"]) == 0
    lake.write_batch("b", [], markers=[200])
    assert lake.lake_watermark(["a", "b"]) == 200
    assert lake.record_marker("a", 250) is False  # a replayed, older marker
    assert writer(layout).lake_watermark(["a", "b"]) == 200
    assert writer(layout).lake_watermark(["a"]) == 300


# -- time travel, history, DuckDB -----------------------------------------------------------------


def test_time_travel_by_version_timestamp_and_lsn(new_lake):
    batches = scenario()
    layout = new_lake()
    lake = writer(layout)
    lsns = []
    for i, batch in enumerate(batches):
        lake.write_batch("s1", batch)
        lsns.append(max(e.lsn for e in batch))
        if i == 1:
            # Object stores keep commit times to the second: step away from them.
            time.sleep(1.1)
            moment = datetime.now(timezone.utc)
            time.sleep(1.1)
    events = [e for batch in batches for e in batch]
    commits = [c for c in tt.history(layout, SO) if c.lsn_max is not None]
    assert [c.lsn_max for c in commits] == lsns
    for i, commit in enumerate(commits):
        wanted = expected_state([e for e in events if e.lsn <= lsns[i]], SO)
        assert lake_state(layout, SO, SO_KEY, version=commit.version) == wanted
        # Rebuilt from the change log at the LSN == the state table's version at that LSN.
        rebuilt = tt.state_as_of_lsn(layout, SO, lsns[i])
        at_version = tt.current_state(layout, SO, version=tt.state_version_at_lsn(layout, SO, lsns[i]))
        assert rebuilt.to_pylist() == at_version.drop_columns(["_deleted"]).sort_by("sales_order_id").to_pylist()
        assert tt.changes_as_of_lsn(layout, SO, lsns[i]).num_rows == sum(
            e.table == SO and e.lsn <= lsns[i] for e in events
        )
    after_two = expected_state([e for e in events if e.lsn <= lsns[1]], SO)
    assert lake_state(layout, SO, SO_KEY, as_of=moment) == after_two
    assert tt.read_table(layout, "changes", SO, as_of=moment).num_rows == sum(
        e.table == SO and e.lsn <= lsns[1] for e in events
    )
    # The log begins with its empty CREATE TABLE commit (see ChangeLog.create).
    change_commits = [c for c in tt.history(layout, SO, "changes") if c.lsn_min is not None]
    assert [(c.lsn_min, c.lsn_max) for c in change_commits] == [
        (min(e.lsn for e in b if e.table == SO), max(e.lsn for e in b if e.table == SO)) for b in batches
    ]


def test_duckdb_queries_lake_tables_at_any_version(new_lake):
    batches = scenario()
    layout = run(new_lake(), batches)
    con = duckdb.connect()
    name = tt.register_duckdb(con, layout, SO)
    [(live,)] = con.sql(f"SELECT count(*) FROM {name} WHERE NOT _deleted").fetchall()
    assert live == len(expected_state([e for b in batches for e in b], SO))
    tt.register_duckdb(con, layout, SO, "changes", name="so_changes")
    ops = dict(con.sql("SELECT _op, count(*) FROM so_changes GROUP BY _op").fetchall())
    assert ops["r"] == 12 and ops["d"] == 2
    first = [c.version for c in tt.history(layout, SO) if c.lsn_max is not None][0]
    tt.register_duckdb(con, layout, SO, name="so_v1", version=first)
    assert con.sql("SELECT count(*), sum(unit_price) FROM so_v1").fetchall()[0][0] == 12
    assert con.sql("SELECT DISTINCT _commit_date FROM so_changes WHERE _op = 'r'").fetchall() == [(TODAY,)]


# -- maintenance, dead letters ----------------------------------------------------------------


def test_maintenance_keeps_data_and_time_travel_inside_the_window(new_lake):
    batches = scenario()
    layout = run(new_lake(), batches)
    before = {kind: table_snapshot(layout, kind, SO) for kind in ("changes", "tables")}
    versions = [c.version for c in tt.history(layout, SO) if c.lsn_max is not None]
    old = {v: lake_state(layout, SO, SO_KEY, version=v) for v in versions}
    report = maintain(layout, timedelta(hours=1))
    assert {r.uri.rsplit("/", 1)[-1] for r in report} >= {SO, PAY}
    assert any(r.files_removed for r in report)
    for kind in ("changes", "tables"):
        assert table_snapshot(layout, kind, SO) == before[kind]
    for version, rows in old.items():
        assert lake_state(layout, SO, SO_KEY, version=version) == rows
    # The shards' high-waters survive compaction and checkpoints: a replay adds nothing.
    assert writer(layout).write_batch("s1", batches[1]).appended == 0
    # Writing goes on after maintenance.
    src = Source(start_lsn=0x2000000)
    with src.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(99))
    writer(layout).write_batch("s1", tx.events)
    assert (99,) in lake_state(layout, SO, SO_KEY)


def test_dead_letters_are_kept_once_and_can_be_redriven(new_lake):
    layout = new_lake()
    letters = DeadLetters(layout)
    first = letters.add("not a totes-cdc record", b"\x00garbage", shard="s1", sequence_number="17")
    assert letters.add("not a totes-cdc record", b"\x00garbage", shard="s1", sequence_number="17") == first
    src = Source()
    with src.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(5))
    from change_events import encode_events

    second = letters.add("lake was down", encode_events(tx.events), shard="s1", sequence_number="18", table=SO)
    assert [letter.id for letter in letters.list()] == [first, second]
    lake = writer(layout)

    def handler(letter):
        lake.write_batch(letter.shard, list(decode(letter.record).events))

    report = letters.redrive(handler)
    assert report.redriven == [second] and first in report.failed
    assert (5,) in lake_state(layout, SO, SO_KEY)
    assert [letter.id for letter in letters.list()] == [first]
    assert {letter.id: letter.redriven_at is not None for letter in letters.list(include_redriven=True)} == {
        first: False,
        second: True,
    }
