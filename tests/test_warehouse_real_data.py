"""The real 2024-11-15 totesys snapshot, read as snapshot events at one LSN, synced into both
warehouse engines and compared with an independent DuckDB SQL transform of the snapshot's
parquet files."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.conftest import SHARED_DATA
from tests.warehouse_fixtures import (
    FACT_DATE_COLUMNS,
    expected_dim_date,
    expected_tables,
    read_table_sorted,
    snapshot_events,
    source_connection,
    write_lake,
)
from warehouse_sync import DuckDBTarget, PostgresTarget, dangling_references, duplicate_current_rows, sync_once
from warehouse_sync.schema import BY_NAME, FACTS, LINEAGE_NAMES, conform

SNAPSHOT = SHARED_DATA / "snapshot_2024-11-15_aidan-mooney"
SNAPSHOT_LSN = 0x2_4000_0000
TODAY = date(2024, 11, 18)


@pytest.fixture(scope="module")
def snapshot_lake(tmp_path_factory):
    if not SNAPSHOT.is_dir():
        pytest.skip(f"shared snapshot not available at {SNAPSHOT}")
    return write_lake(tmp_path_factory.mktemp("lake"), snapshot_events(SNAPSHOT, SNAPSHOT_LSN))


@pytest.fixture(scope="module")
def expected():
    if not SNAPSHOT.is_dir():
        pytest.skip(f"shared snapshot not available at {SNAPSHOT}")
    relations = {path.stem: f"read_parquet('{path}')" for path in Path(SNAPSHOT).glob("*.parquet")}
    connection = source_connection(relations)
    tables = expected_tables(connection)
    referenced = sorted({d for fact, columns in FACT_DATE_COLUMNS.items() for c in columns
                         for d in tables[fact][c].to_list()})
    tables["dim_date"] = expected_dim_date(connection, referenced, TODAY)
    return tables


def _compare(target, expected: dict[str, pl.DataFrame], names) -> None:
    for name in names:
        table = BY_NAME[name]
        actual = read_table_sorted(target, name)
        if table.is_fact:
            assert actual[table.key].to_list() == list(range(1, actual.height + 1))
            assert actual.sort("source_seq")[table.key].to_list() == actual[table.key].to_list()
            lineage = actual.select("is_current", "is_deleted", "source_op", "source_lsn", "valid_from", "valid_to")
            assert lineage.unique().rows() == [(True, False, "r", SNAPSHOT_LSN, None, None)]
            actual = actual.drop([table.key, *LINEAGE_NAMES]).sort(table.business_key)
            schema = {n: t for n, t in table.polars_schema.items() if n in actual.columns}
        else:
            schema = table.polars_schema
        want = conform(expected[name], schema).sort(actual.columns[0])
        try:
            assert_frame_equal(actual, want, check_exact=True)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


def test_real_snapshot_into_duckdb_equals_an_independent_transform(snapshot_lake, expected, tmp_path):
    target = DuckDBTarget(tmp_path / "warehouse.duckdb")
    result = sync_once(snapshot_lake, target, SNAPSHOT_LSN, today=TODAY)
    assert result.events == 48_066
    assert result.facts_appended == {"fact_sales_order": 11_187, "fact_purchase_order": 4_649, "fact_payment": 15_836}
    assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
    _compare(target, expected, [t.name for t in BY_NAME.values()])
    assert read_table_sorted(target, "dim_currency")["currency_name"].to_list() == ["Pound Sterling", "US Dollar", "Euro"]
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


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_real_snapshot_in_slices_equals_the_independent_transform(snapshot_lake, expected, tmp_path, request,
                                                                  engine):
    """The snapshot's one LSN cut into slices (between tables, and by seq inside the larger
    ones) gives the same warehouse as the independent transform: record ids in seq order."""
    target = (DuckDBTarget(tmp_path / "warehouse.duckdb") if engine == "duckdb"
              else PostgresTarget(request.getfixturevalue("empty_database")))
    try:
        result = sync_once(snapshot_lake, target, SNAPSHOT_LSN, today=TODAY, slice_events=4_000)
        assert result.events == 48_066 and result.to_lsn == SNAPSHOT_LSN
        assert len(result.slices) >= 12 and max(size for _, size in result.slices) <= 4_000
        assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
        _compare(target, expected, [t.name for t in BY_NAME.values()])
        assert target.query("SELECT count(*) AS n FROM _sync_partial").item() == 0
    finally:
        target.close()
