"""The lake core on real Delta tables: exactly-once, order per row, TOAST, deletes, truncate,
schema evolution, rejects, watermarks, time travel, DuckDB, maintenance, dead letters.

Every test runs twice: on a local folder and on S3 (a moto server).
"""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from lake import LakeLayout, LakeWriter
from lake import timetravel as tt
from lake.dead_letters import DeadLetters
from lake.errors import IncompatibleSchemaError, ValueConversionError
from lake.maintenance import maintain
from lake.state import StateTable
from change_events import decode
from tests.lake_fixtures import (
    PAYMENT,
    SALES_ORDER,
    TODAY,
    Source,
    expected_state,
    lake_state,
    payment_row,
    sales_order_row,
    table_snapshot,
    with_column,
)
from tests.moto_s3 import moto_s3  # noqa: F401  (the session's S3 server, a fixture)

SO, PAY = SALES_ORDER.table, PAYMENT.table
SO_KEY, PAY_KEY = SALES_ORDER.key_names, PAYMENT.key_names


@pytest.fixture(params=["folder", "s3"])
def new_lake(request, tmp_path):
    """Makes empty lakes (each call a new root) on the parametrised storage."""
    if request.param == "s3":
        s3 = request.getfixturevalue("moto_s3")
        return lambda: LakeLayout(f"s3://{s3.BUCKET}/{uuid.uuid4().hex[:12]}", s3.storage_options)
    counter = itertools.count()
    return lambda: LakeLayout(tmp_path / f"lake{next(counter)}")


def writer(layout: LakeLayout) -> LakeWriter:
    return LakeWriter(layout, today=lambda: TODAY)


def scenario() -> list[list]:
    """Batches of one shard, in order: a snapshot, then updates with TOAST-unchanged columns,
    deletes, a re-insert, across two tables (and transactions spanning both)."""
    src = Source()
    batches = [
        src.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 13)])
        + src.snapshot(PAYMENT, [payment_row(i) for i in range(1, 5)], start_seq=12)
    ]
    with src.transaction() as t1:
        t1.update(SALES_ORDER, sales_order_row(2, 1))
        t1.update(SALES_ORDER, sales_order_row(3, 1), unchanged=("agreed_payment_date",))
        t1.delete(SALES_ORDER, {"sales_order_id": "4"})
        t1.insert(SALES_ORDER, sales_order_row(13))
        t1.update(PAYMENT, payment_row(1, paid=True))
    with src.transaction() as t2:
        t2.update(SALES_ORDER, sales_order_row(3, 2), unchanged=("agreed_payment_date", "agreed_delivery_date"))
        t2.insert(SALES_ORDER, sales_order_row(14))
        t2.delete(SALES_ORDER, {"sales_order_id": "13"})
        t2.update(PAYMENT, payment_row(2, paid=True))
    batches.append(t1.events + t2.events)
    with src.transaction() as t3:
        t3.insert(SALES_ORDER, sales_order_row(4, 5))
        t3.update(SALES_ORDER, sales_order_row(5, 1))
        t3.delete(PAYMENT, {"payment_id": "3"})
    batches.append(t3.events)
    with src.transaction() as t4:
        t4.update(SALES_ORDER, sales_order_row(14, 1), unchanged=("unit_price",))
        t4.update(SALES_ORDER, sales_order_row(6, 3))
    batches.append(t4.events)
    return batches


def run(layout: LakeLayout, batches, shard: str = "s1") -> LakeLayout:
    lake = writer(layout)
    for batch in batches:
        lake.write_batch(shard, batch)
    return layout


def assert_same_lake(got: LakeLayout, want: LakeLayout, tables=(SO, PAY)) -> None:
    for table in tables:
        for kind in ("changes", "tables"):
            assert table_snapshot(got, kind, table) == table_snapshot(want, kind, table), f"{kind}/{table}"


# -- exactly once, order per row ----------------------------------------------------------------


def test_clean_run_matches_reference_semantics(new_lake):
    batches = scenario()
    events = [e for batch in batches for e in batch]
    layout = run(new_lake(), batches)
    assert lake_state(layout, SO, SO_KEY) == expected_state(events, SO)
    assert lake_state(layout, PAY, PAY_KEY) == expected_state(events, PAY)
    changes = tt.read_table(layout, "changes", SO)
    assert changes.num_rows == sum(e.table == SO for e in events)
    toast = [r for r in changes.to_pylist() if r["_unchanged"]]
    assert toast and all(r[c] is None for r in toast for c in r["_unchanged"])


def test_replays_duplicates_and_overlaps_change_nothing(new_lake):
    batches = scenario()
    clean = run(new_lake(), batches)
    b0, b1, b2, b3 = batches
    messy = [b0, b0, b1 + b1[:3], b1[2:] + b2, b2, b0[5:] + b2 + b3, b3, b1]
    assert_same_lake(run(new_lake(), messy), clean)


def test_out_of_order_delivery_across_batches(new_lake):
    batches = scenario()
    clean = run(new_lake(), batches)
    b0, b1, b2, b3 = batches
    # Newer events of a key first, older ones later (a retried put reordered them).
    late = [e for e in b1 if e.table == SO and e.key["sales_order_id"] in ("3", "13")]
    early = [e for e in b1 if e not in late]
    reordered = [b0, early, b2 + b3, late]
    layout = run(new_lake(), reordered)
    assert_same_lake(layout, clean)


def test_late_older_update_cannot_resurrect_a_deleted_row(new_lake):
    src = Source()
    with src.transaction() as t1:
        t1.insert(SALES_ORDER, sales_order_row(1))
    with src.transaction() as t2:
        t2.update(SALES_ORDER, sales_order_row(1, 1))
    with src.transaction() as t3:
        t3.delete(SALES_ORDER, {"sales_order_id": "1"})
    layout = new_lake()
    lake = writer(layout)
    lake.write_batch("s1", t1.events)
    lake.write_batch("s1", t3.events)
    late = lake.write_batch("s1", t2.events).tables[SO]
    assert (late.late, late.appended) == (1, 1)
    assert lake_state(layout, SO, SO_KEY) == {}
    tombstone = tt.read_table(layout, "tables", SO).to_pylist()
    assert [(r["sales_order_id"], r["_deleted"], r["_op"]) for r in tombstone] == [(1, True, "d")]


def test_crash_between_change_log_and_state_then_retry(new_lake, monkeypatch):
    batches = scenario()
    clean = run(new_lake(), batches)
    layout = new_lake()
    lake = writer(layout)
    lake.write_batch("s1", batches[0])
    original = StateTable._apply_once

    def crash(*args, **kwargs):  # a kill, not an error the writer could handle
        raise KeyboardInterrupt("killed between the two commits")

    monkeypatch.setattr(StateTable, "_apply_once", crash)
    with pytest.raises(KeyboardInterrupt):
        lake.write_batch("s1", batches[1])
    monkeypatch.setattr(StateTable, "_apply_once", original)
    # A new process (fresh writer) retries the same batch, then goes on.
    lake = writer(layout)
    retry = lake.write_batch("s1", batches[1])
    assert retry.tables[SO].appended == 0 and retry.tables[SO].state_version is not None
    for batch in batches[2:]:
        lake.write_batch("s1", batch)
    assert_same_lake(layout, clean)


def test_state_catches_up_when_the_failed_batch_is_skipped(new_lake, monkeypatch):
    batches = scenario()
    clean = run(new_lake(), batches)
    layout = new_lake()
    lake = writer(layout)
    lake.write_batch("s1", batches[0])
    monkeypatch.setattr(StateTable, "_apply_once", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        lake.write_batch("s1", batches[1])
    monkeypatch.undo()
    # The stream moved on without redelivering batch 1 (payment's part of it never got
    # written): the next batch repairs sales_order's state from what its log holds.
    for batch in batches[2:]:
        writer(layout).write_batch("s1", batch)
    assert_same_lake(layout, clean, tables=(SO,))


# -- TOAST, truncate, schema evolution ----------------------------------------------------------


def test_unchanged_toast_columns_keep_their_previous_value(new_lake):
    src = Source()
    first = src.snapshot(SALES_ORDER, [sales_order_row(1), sales_order_row(2)])
    with src.transaction() as tx:
        tx.update(SALES_ORDER, sales_order_row(1, 1), unchanged=("agreed_delivery_date", "unit_price"))
        tx.update(SALES_ORDER, sales_order_row(2, 1), unchanged=("agreed_delivery_date",))
        tx.update(SALES_ORDER, sales_order_row(2, 2), unchanged=("unit_price",))
    layout = run(new_lake(), [first, tx.events])
    state = lake_state(layout, SO, SO_KEY)
    assert state == expected_state(first + tx.events, SO)
    original = lake_state(run(new_lake(), [first]), SO, SO_KEY)
    assert state[(1,)]["unit_price"] == original[(1,)]["unit_price"]
    assert state[(1,)]["agreed_delivery_date"] == original[(1,)]["agreed_delivery_date"]
    assert state[(1,)]["units_sold"] != original[(1,)]["units_sold"]


def test_truncate_empties_the_table_as_of_its_lsn(new_lake):
    src = Source()
    snapshot = src.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 6)])
    with src.transaction() as t1:
        t1.update(SALES_ORDER, sales_order_row(2, 1))
    with src.transaction() as t2:
        t2.truncate(SALES_ORDER)
        t2.insert(SALES_ORDER, sales_order_row(7))
    with src.transaction() as t3:
        t3.insert(SALES_ORDER, sales_order_row(8))
    events = snapshot + t1.events + t2.events + t3.events
    in_order = run(new_lake(), [snapshot, t1.events, t2.events, t3.events])
    assert set(lake_state(in_order, SO, SO_KEY)) == {(7,), (8,)}
    assert lake_state(in_order, SO, SO_KEY) == expected_state(events, SO)
    # The truncate arrives before older events: they must not come back.
    late = run(new_lake(), [t2.events, t3.events, snapshot, t1.events])
    assert_same_lake(late, in_order, tables=(SO,))


def test_added_column_appears_in_both_tables(new_lake):
    src = Source()
    wider = with_column(SALES_ORDER, "discount", "numeric(5,2)")
    layout = new_lake()
    lake = writer(layout)
    lake.write_batch("s1", src.snapshot(SALES_ORDER, [sales_order_row(1), sales_order_row(2)]))
    with src.transaction() as tx:
        tx.update(wider, {**sales_order_row(2, 1), "discount": "1.50"})
        tx.insert(wider, {**sales_order_row(3), "discount": None})
    result = lake.write_batch("s1", tx.events)
    assert not result.rejected
    state = lake_state(layout, SO, SO_KEY)
    assert str(state[(2,)]["discount"]) == "1.50"
    assert state[(1,)]["discount"] is None and state[(3,)]["discount"] is None
    changes = tt.read_table(layout, "changes", SO)
    assert "discount" in changes.column_names
    assert str(changes.schema.field("discount").type) == "decimal128(5, 2)"


def test_a_column_named_like_a_lake_column_is_refused_while_other_tables_land(new_lake):
    src = Source()
    layout = new_lake()
    lake = writer(layout)
    lake.write_batch("s1", src.snapshot(SALES_ORDER, [sales_order_row(1)]), markers=[src.lsn])
    clashing = with_column(SALES_ORDER, "_lsn", "bigint")
    with src.transaction() as tx:
        tx.update(clashing, {**sales_order_row(1, 1), "_lsn": "1"})
        tx.insert(PAYMENT, payment_row(1))
    result = lake.write_batch("s1", tx.events, markers=[src.lsn])
    assert [(r.table, len(r.events)) for r in result.rejected] == [(SO, 1)]
    assert isinstance(result.rejected[0].error, IncompatibleSchemaError)
    assert "_lsn" in str(result.rejected[0].error)
    assert lake_state(layout, PAY, PAY_KEY) == expected_state(tx.events, PAY)
    assert lake_state(layout, SO, SO_KEY)[(1,)]["units_sold"] == 1037
    # Without a dead-letter callback the marker waits; with one it is recorded.
    assert result.marker is None and lake.lake_watermark(["s1"]) < src.lsn
    letters = DeadLetters(layout)
    again = lake.write_batch("s1", tx.events, markers=[src.lsn], on_rejected=lambda r: letters.add_rejected(r, "s1"))
    assert again.marker == src.lsn and lake.lake_watermark(["s1"]) == src.lsn
    [letter] = letters.list()
    assert letter.source_table == SO and "incompatible" in letter.reason
    assert [e.event_id for e in decode(letter.record).events] == [tx.events[0].event_id]


def test_values_that_do_not_fit_reject_only_their_events(new_lake):
    src = Source()
    with src.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(1))
        tx.insert(SALES_ORDER, {**sales_order_row(2), "created_at": "infinity"})
        tx.insert(SALES_ORDER, sales_order_row(3))
    result = writer(layout := new_lake()).write_batch("s1", tx.events)
    [rejected] = result.rejected
    assert isinstance(rejected.error, ValueConversionError) and rejected.error.column == "created_at"
    assert [e.key for e in rejected.events] == [{"sales_order_id": "2"}]
    assert set(lake_state(layout, SO, SO_KEY)) == {(1,), (3,)}


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
