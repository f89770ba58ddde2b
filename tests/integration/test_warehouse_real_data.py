"""The real 2024-11-15 totesys snapshot, read as snapshot events at one LSN, synced into both
warehouse engines and compared with an independent DuckDB SQL transform of the snapshot's
parquet files."""

from __future__ import annotations

from datetime import date

import pytest

import warehouse_sync.bulk as bulk_module
from tests.warehouse_fixtures import read_table_sorted
from warehouse_sync import DuckDBTarget, PostgresTarget, dangling_references, duplicate_current_rows, sync_once
from warehouse_sync.schema import BY_NAME, FACTS
from tests.warehouse_fixtures import SNAPSHOT_LSN, _compare

TODAY = date(2024, 11, 18)


def test_real_snapshot_into_duckdb_equals_an_independent_transform(snapshot_lake, expected, tmp_path):
    target = DuckDBTarget(tmp_path / "warehouse.duckdb")
    result = sync_once(snapshot_lake, target, SNAPSHOT_LSN, today=TODAY)
    assert result.events == 48_066
    assert result.facts_appended == {"fact_sales_order": 11_187, "fact_purchase_order": 4_649, "fact_payment": 15_836}
    assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
    _compare(target, expected, [t.name for t in BY_NAME.values()])
    assert read_table_sorted(target, "dim_currency")["currency_name"].to_list() == [
        "Pound Sterling",
        "US Dollar",
        "Euro",
    ]
    # the source's own quirks survive: "Leds" and the NULL-less location rule
    assert "Leds" in read_table_sorted(target, "dim_staff")["location"].to_list()
    assert sync_once(snapshot_lake, target, SNAPSHOT_LSN, today=TODAY).events == 0
    target.close()


def test_real_snapshot_into_postgres_equals_an_independent_transform(snapshot_lake, expected, empty_database):
    target = PostgresTarget(empty_database)
    try:
        sync_once(snapshot_lake, target, SNAPSHOT_LSN, today=TODAY)
        assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
        _compare(target, expected, [t.name for t in FACTS] + ["dim_staff", "dim_counterparty", "dim_date"])
    finally:
        target.close()


@pytest.mark.parametrize("bulk", [False, True], ids=["general", "bulk"])
@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_real_snapshot_in_slices_equals_the_independent_transform(
    snapshot_lake, expected, tmp_path, request, engine, bulk, monkeypatch
):
    """The snapshot's one LSN cut into slices (between tables, and by seq inside the larger
    ones) gives the same warehouse as the independent transform: record ids in seq order;
    the facts' sources loaded in bulk or, where that is off, sliced like the rest."""
    monkeypatch.setattr(bulk_module, "BULK_LOADS", bulk)
    target = (
        DuckDBTarget(tmp_path / "warehouse.duckdb")
        if engine == "duckdb"
        else PostgresTarget(request.getfixturevalue("empty_database"))
    )
    try:
        result = sync_once(snapshot_lake, target, SNAPSHOT_LSN, today=TODAY, slice_events=4_000)
        assert result.events == 48_066 and result.to_lsn == SNAPSHOT_LSN
        assert set(result.bulk_loaded) == ({t.name for t in FACTS} if bulk else set())
        held = result.events - sum(result.bulk_loaded.values())  # the rest stays in the engine
        assert len(result.slices) >= held // 4_000 and max(size for _, size in result.slices) <= 4_000
        assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
        _compare(target, expected, [t.name for t in BY_NAME.values()])
        assert target.query("SELECT count(*) AS n FROM _sync_partial").item() == 0
    finally:
        target.close()
