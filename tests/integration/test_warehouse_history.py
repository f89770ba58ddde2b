"""A mixed history (inserts, projected, silent and non-projected updates, unchanged TOAST
values, a department rename, an address change, deletes, a truncate, re-inserts) synced at
several points: after every sync the current facts and every dimension equal an independent
transform of the source as of that point, no fact references a missing dimension row, and at
the end every business key has one fact row per changing version and one current row."""

from __future__ import annotations

from datetime import date

import polars as pl

from tests.warehouse_fixtures import assert_same_warehouse, dump_warehouse, read_table_sorted
from warehouse_sync import DuckDBTarget, PostgresTarget, dangling_references, sync_once
from warehouse_sync.schema import BY_NAME
from tests.warehouse_fixtures import check_against_source, check_history, check_sequences

TODAY = date(2024, 11, 18)


def _facts(target, name: str, key: int) -> list[dict]:
    fact = BY_NAME[name]
    return read_table_sorted(target, name).filter(pl.col(fact.business_key) == key).to_dicts()


def check_story(target) -> None:
    """The scenario's individual beats, spelt out."""
    sales_2 = _facts(target, "fact_sales_order", 2)
    assert [(r["design_id"], r["agreed_delivery_date"]) for r in sales_2] == [
        (1, date(2024, 11, 25)),
        (2, date(2024, 12, 31)),
    ]  # the silent update, then an update changing nothing
    assert sales_2[0]["last_updated_date"] == sales_2[1]["last_updated_date"]
    sales_3 = _facts(target, "fact_sales_order", 3)
    assert [r["units_sold"] for r in sales_3] == [1500, 3999]
    assert sales_3[1]["agreed_delivery_date"] == sales_3[0]["agreed_delivery_date"]  # unchanged TOAST kept
    assert [(r["is_deleted"], r["source_op"]) for r in _facts(target, "fact_sales_order", 4)] == [
        (False, "c"),
        (True, "d"),
        (False, "c"),
    ]
    assert [r["sales_staff_id"] for r in _facts(target, "fact_sales_order", 5)] == [4, 1]
    payment_1 = _facts(target, "fact_payment", 1)
    assert [(r["is_deleted"], r["source_op"]) for r in payment_1] == [(False, "r"), (True, "t")]  # ac numbers: no row
    assert [(r["paid"], r["is_deleted"]) for r in _facts(target, "fact_payment", 2)] == [
        (False, False),
        (True, False),
        (True, True),
    ]  # paid, then truncated
    staff = {r["staff_id"]: r for r in read_table_sorted(target, "dim_staff").to_dicts()}
    assert staff[1]["department_name"] == "Sales & Marketing"
    assert staff[3]["location"] == ""  # department without a location
    assert staff[4]["last_name"] == "Worker"  # deleted at the source, still named by fact history
    counterparties = {r["counterparty_id"]: r for r in read_table_sorted(target, "dim_counterparty").to_dicts()}
    assert counterparties[2]["counterparty_legal_city"] == counterparties[3]["counterparty_legal_city"] == "New City"
    assert counterparties[2]["counterparty_legal_address_line_2"] is None
    locations = {r["location_id"]: r for r in read_table_sorted(target, "dim_location").to_dicts()}
    assert locations[2]["city"] == "New City"
    assert 3 not in read_table_sorted(target, "dim_design")["design_id"].to_list()
    assert read_table_sorted(target, "dim_design").filter(pl.col("design_id") == 1).row(0) == (
        1,
        "Design One",
        "/usr/ports",
        "d1-20221103-ab12.json",
    )
    days = read_table_sorted(target, "dim_date")["date_id"]
    assert date(2022, 10, 15) in days.to_list() and days.max() == date(2026, 3, 1)


def test_mixed_history_on_duckdb(history_of_every_kind, history_lake, tmp_path):
    target = DuckDBTarget(tmp_path / "warehouse.duckdb")
    for lsn, rows in history_of_every_kind.points:
        sync_once(history_lake, target, lsn, today=TODAY)
        check_against_source(target, rows, history_of_every_kind.kept)
    check_history(target, history_of_every_kind.source)
    check_story(target)
    check_sequences(target)
    target.close()


def test_mixed_history_on_postgres_equals_duckdb(history_of_every_kind, history_lake, empty_database):
    reference = DuckDBTarget()
    target = PostgresTarget(empty_database)
    try:
        for lsn, rows in history_of_every_kind.points:
            sync_once(history_lake, reference, lsn, today=TODAY)
            sync_once(history_lake, target, lsn, today=TODAY)
            assert dangling_references(target) == {}
        check_against_source(target, history_of_every_kind.points[-1][1], history_of_every_kind.kept)
        check_history(target, history_of_every_kind.source)
        assert_same_warehouse(dump_warehouse(target), dump_warehouse(reference))
        check_sequences(target)
    finally:
        target.close()
        reference.close()


def test_a_truncate_that_the_same_lsn_brings_back_is_no_deletion_for_the_facts():
    """A table replaced by a new snapshot (the reader's --reset after a lost slot): the
    truncate's version of a row the snapshot brings back at the same LSN is dropped; a row
    it does not bring back keeps its deletion; an earlier truncate stays a deletion."""
    from warehouse_sync.steps import _without_replaced_truncates

    versions = pl.DataFrame(
        {
            "id": [1, 1, 2, 3, 3],
            "_op": ["t", "r", "t", "t", "c"],
            "_lsn": [100, 100, 100, 50, 60],
            "_seq": [0, 5, 0, 0, 1],
        }
    )
    kept = _without_replaced_truncates(versions, "id")
    assert kept.select("id", "_op", "_lsn").rows() == [(1, "r", 100), (2, "t", 100), (3, "t", 50), (3, "c", 60)]
