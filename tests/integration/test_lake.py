"""The lake core on real Delta tables: exactly-once, order per row, TOAST, deletes, truncate,
schema evolution, rejects (watermarks, time travel, DuckDB, maintenance, dead letters:
test_lake_history.py).

Every test runs twice: on a local folder and on S3 (a moto server).
"""

from __future__ import annotations


import pytest

from lake import timetravel as tt
from lake.dead_letters import DeadLetters
from lake.errors import IncompatibleSchemaError, ValueConversionError
from lake.layout import LakeLayout
from lake.state import StateTable
from change_events import decode
from tests.lake_fixtures import (
    PAYMENT,
    SALES_ORDER,
    Source,
    expected_state,
    lake_state,
    payment_row,
    sales_order_row,
    with_column,
)
from tests.moto_s3 import moto_s3  # noqa: F401  (the session's S3 server, a fixture)
from tests.lake_scenario import PAY, PAY_KEY, SO, SO_KEY
from tests.lake_scenario import lake_under_test  # noqa: F401  (the `new_lake` fixture)
from tests.lake_scenario import writer, scenario, run, assert_same_lake


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


def _killed_between_the_commits(new_lake, monkeypatch) -> tuple[list[list], LakeLayout, LakeLayout]:
    """The scenario's first batch written, then the writer killed between the second batch's
    change log and state commits: (the batches, a lake that took them all cleanly, the killed one)."""
    batches = scenario()
    clean = run(new_lake(), batches)
    layout = new_lake()
    lake = writer(layout)
    lake.write_batch("s1", batches[0])

    def crash(*args, **kwargs):  # a kill, not an error the writer could handle
        raise KeyboardInterrupt("killed between the two commits")

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(StateTable, "_apply_once", crash)
        lake.write_batch("s1", batches[1])
    return batches, clean, layout


def test_crash_between_change_log_and_state_then_retry(new_lake, monkeypatch):
    batches, clean, layout = _killed_between_the_commits(new_lake, monkeypatch)
    # A new process (fresh writer) retries the same batch, then goes on.
    lake = writer(layout)
    retry = lake.write_batch("s1", batches[1])
    assert retry.tables[SO].appended == 0 and retry.tables[SO].state_version is not None
    for batch in batches[2:]:
        lake.write_batch("s1", batch)
    assert_same_lake(layout, clean)


def test_state_catches_up_when_the_failed_batch_is_skipped(new_lake, monkeypatch):
    batches, clean, layout = _killed_between_the_commits(new_lake, monkeypatch)
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
