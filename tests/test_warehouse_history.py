"""A mixed history (inserts, projected, silent and non-projected updates, unchanged TOAST
values, a department rename, an address change, deletes, a truncate, re-inserts) synced at
several points: after every sync the current facts and every dimension equal an independent
transform of the source as of that point, no fact references a missing dimension row, and at
the end every business key has one fact row per changing version and one current row."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.warehouse_fixtures import (
    FACT_DATE_COLUMNS,
    History,
    Row,
    ScriptedSource,
    assert_same_warehouse,
    dump_warehouse,
    expected_dim_date,
    mixed_history,
    read_table_sorted,
    scripted_expected,
    write_lake,
)
from warehouse_sync import DuckDBTarget, PostgresTarget, dangling_references, duplicate_current_rows, sync_once
from warehouse_sync.schema import BY_NAME, DIMENSIONS, FACTS, LINEAGE_NAMES, conform

TODAY = date(2024, 11, 18)
FACT_SOURCES = {"fact_sales_order": "sales_order", "fact_purchase_order": "purchase_order", "fact_payment": "payment"}
NOT_PROJECTED = {"payment": {"company_ac_number", "counterparty_ac_number"}}


@pytest.fixture(scope="module")
def history() -> History:
    return mixed_history()


@pytest.fixture(scope="module")
def history_lake(history, tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("lake"), history.source.events)


def _frame_equal(name: str, actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    try:
        assert_frame_equal(actual, expected, check_exact=True)
    except AssertionError as error:
        raise AssertionError(f"{name}: {error}") from None


def check_against_source(target, rows: dict[str, dict[str, Row]], kept: dict[str, set[str]]) -> None:
    """Current facts and dimensions == the independent transform of `rows`; integrity."""
    assert dangling_references(target) == {}
    assert duplicate_current_rows(target) == {}
    source = ScriptedSource(rows=rows)
    connection, expected = scripted_expected(source)
    for fact in FACTS:
        actual = read_table_sorted(target, fact.name)
        current = actual.filter(pl.col("is_current") & ~pl.col("is_deleted")).drop([fact.key, *LINEAGE_NAMES])
        schema = {n: t for n, t in fact.polars_schema.items() if n in current.columns}
        _frame_equal(fact.name, current.sort(fact.business_key),
                     conform(expected[fact.name], schema).sort(fact.business_key))
        deleted_now = actual.filter(pl.col("is_current") & pl.col("is_deleted"))[fact.business_key].to_list()
        assert not {str(k) for k in deleted_now} & set(rows[FACT_SOURCES[fact.name]]), fact.name
    for dimension in DIMENSIONS:
        if dimension.name == "dim_date":
            continue
        actual = read_table_sorted(target, dimension.name)
        want = conform(expected[dimension.name], dimension.polars_schema).sort(dimension.key)
        extra = actual.filter(~pl.col(dimension.key).is_in(want[dimension.key].implode()))
        assert {str(k) for k in extra[dimension.key].to_list()} <= kept.get(dimension.name, set()), dimension.name
        _frame_equal(dimension.name, actual.filter(pl.col(dimension.key).is_in(want[dimension.key].implode())), want)
    referenced = sorted({d for fact in FACTS for c in FACT_DATE_COLUMNS[fact.name]
                         for d in read_table_sorted(target, fact.name)[c].to_list()})
    _frame_equal("dim_date", read_table_sorted(target, "dim_date"),
                 conform(expected_dim_date(connection, referenced, TODAY), BY_NAME["dim_date"].polars_schema))


def expected_version_count(table: str, versions: list[Row | None]) -> int:
    """Fact rows one source row should have: one per version whose projection or
    deletedness differs from the version before it (a deletion of a live row counts)."""
    count, previous, deleted = 0, None, True
    for row in versions:
        if row is None:
            if not deleted:
                count += 1
            deleted = True
            continue
        projection = tuple(sorted((k, v) for k, v in row.items() if k not in NOT_PROJECTED.get(table, ())))
        if deleted or projection != previous:
            count += 1
        previous, deleted = projection, False
    return count


def check_history(target, source: ScriptedSource) -> None:
    for fact in FACTS:
        table = FACT_SOURCES[fact.name]
        actual = read_table_sorted(target, fact.name)
        assert set(actual[fact.business_key].cast(pl.String).to_list()) == set(source.history[table])
        for key, versions in source.history[table].items():
            rows = actual.filter(pl.col(fact.business_key) == int(key)).sort(fact.key)
            assert rows.height == expected_version_count(table, versions), (fact.name, key)
            assert rows["is_current"].to_list() == [False] * (rows.height - 1) + [True], (fact.name, key)
            assert rows["is_deleted"][-1] == (key not in source.rows[table]), (fact.name, key)
            assert rows["valid_to"].to_list() == rows["valid_from"].to_list()[1:] + [None], (fact.name, key)
            assert rows.select("source_lsn", "source_seq").rows() == sorted(rows.select("source_lsn", "source_seq").rows())


def check_sequences(target) -> None:
    """Each fact's own sequence default stays past the ids the sync assigned."""
    for fact in FACTS:
        last = target.query(f"SELECT max({fact.key}) AS n FROM {fact.name}").item()
        assert target.query(f"SELECT nextval('{fact.sequence}') AS n").item() > last


def _facts(target, name: str, key: int) -> list[dict]:
    fact = BY_NAME[name]
    return read_table_sorted(target, name).filter(pl.col(fact.business_key) == key).to_dicts()


def check_story(target) -> None:
    """The scenario's individual beats, spelt out."""
    sales_2 = _facts(target, "fact_sales_order", 2)
    assert [(r["design_id"], r["agreed_delivery_date"]) for r in sales_2] == [
        (1, date(2024, 11, 25)), (2, date(2024, 12, 31))]  # the silent update, then an update changing nothing
    assert sales_2[0]["last_updated_date"] == sales_2[1]["last_updated_date"]
    sales_3 = _facts(target, "fact_sales_order", 3)
    assert [r["units_sold"] for r in sales_3] == [1500, 3999]
    assert sales_3[1]["agreed_delivery_date"] == sales_3[0]["agreed_delivery_date"]  # unchanged TOAST kept
    assert [(r["is_deleted"], r["source_op"]) for r in _facts(target, "fact_sales_order", 4)] == [
        (False, "c"), (True, "d"), (False, "c")]
    assert [r["sales_staff_id"] for r in _facts(target, "fact_sales_order", 5)] == [4, 1]
    payment_1 = _facts(target, "fact_payment", 1)
    assert [(r["is_deleted"], r["source_op"]) for r in payment_1] == [(False, "r"), (True, "t")]  # ac numbers: no row
    assert [(r["paid"], r["is_deleted"]) for r in _facts(target, "fact_payment", 2)] == [
        (False, False), (True, False), (True, True)]  # paid, then truncated
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
        1, "Design One", "/usr/ports", "d1-20221103-ab12.json")
    days = read_table_sorted(target, "dim_date")["date_id"]
    assert date(2022, 10, 15) in days.to_list() and days.max() == date(2026, 3, 1)


def test_mixed_history_on_duckdb(history, history_lake, tmp_path):
    target = DuckDBTarget(tmp_path / "warehouse.duckdb")
    for lsn, rows in history.points:
        sync_once(history_lake, target, lsn, today=TODAY)
        check_against_source(target, rows, history.kept)
    check_history(target, history.source)
    check_story(target)
    check_sequences(target)
    target.close()


def test_mixed_history_on_postgres_equals_duckdb(history, history_lake, empty_database):
    reference = DuckDBTarget()
    target = PostgresTarget(empty_database)
    try:
        for lsn, rows in history.points:
            sync_once(history_lake, reference, lsn, today=TODAY)
            sync_once(history_lake, target, lsn, today=TODAY)
            assert dangling_references(target) == {}
        check_against_source(target, history.points[-1][1], history.kept)
        check_history(target, history.source)
        assert_same_warehouse(dump_warehouse(target), dump_warehouse(reference))
        check_sequences(target)
    finally:
        target.close()
        reference.close()


def test_a_truncate_that_the_same_lsn_brings_back_is_no_deletion_for_the_facts():
    """A table replaced by a new snapshot (the reader's --reset after a lost slot): the
    truncate's version of a row the snapshot brings back at the same LSN is dropped; a row
    it does not bring back keeps its deletion; an earlier truncate stays a deletion."""
    from warehouse_sync.apply import _without_replaced_truncates

    versions = pl.DataFrame({
        "id": [1, 1, 2, 3, 3],
        "_op": ["t", "r", "t", "t", "c"],
        "_lsn": [100, 100, 100, 50, 60],
        "_seq": [0, 5, 0, 0, 1],
    })
    kept = _without_replaced_truncates(versions, "id")
    assert kept.select("id", "_op", "_lsn").rows() == [(1, "r", 100), (2, "t", 100), (3, "t", 50), (3, "c", 60)]
