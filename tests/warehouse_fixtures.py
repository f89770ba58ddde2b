"""The warehouse tests' fixtures and checks: a warehouse read back table by table, compared
with another or with the independent transform (`tests.expected_warehouse`) of the scripted
source's rows (`tests.scripted_source`, `tests.warehouse_history`), or of the real snapshot.
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.conftest import SHARED_DATA, make_scratch_dir
from warehouse_sync import DuckDBTarget, dangling_references, duplicate_current_rows, sync_once
from warehouse_sync.schema import BY_NAME, DIMENSIONS, FACTS, LINEAGE_NAMES, SOURCES, conform
from tests.expected_warehouse import FACT_DATE_COLUMNS, expected_dim_date, expected_tables, scripted_expected
from tests.expected_warehouse import source_connection
from tests.scripted_source import Row, ScriptedSource, snapshot_events, write_lake
from tests.warehouse_history import History, mixed_history, synced_history

# -- reading a warehouse back ------------------------------------------------------------------


def read_table_sorted(target, name: str) -> pl.DataFrame:
    """One warehouse table, every column, in key order, in the schema's polars types."""
    from warehouse_sync.schema import INTERNAL_TABLES

    table = BY_NAME.get(name) or next(t for t in INTERNAL_TABLES if t.name == name)
    frame = target.query(f"SELECT {', '.join(table.names)} FROM {name} ORDER BY {table.key}")
    return conform(frame, table.polars_schema)


def dump_warehouse(target) -> dict[str, pl.DataFrame]:
    """Every table the sync writes (the star schema, the mirrors and the checkpoint)."""
    from warehouse_sync.schema import INTERNAL_TABLES, WAREHOUSE_TABLES

    return {t.name: read_table_sorted(target, t.name) for t in WAREHOUSE_TABLES + INTERNAL_TABLES}


def frame_equal(name: str, actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    """Exactly equal frames, or an AssertionError that names the table (and, where the columns
    agree, the rows only one side has)."""
    try:
        assert_frame_equal(actual, expected, check_exact=True)
    except AssertionError as error:
        detail = ""
        if actual.columns == expected.columns:
            extra = actual.join(expected, on=actual.columns, how="anti", nulls_equal=True)
            missing = expected.join(actual, on=actual.columns, how="anti", nulls_equal=True)
            with pl.Config(tbl_cols=-1, tbl_rows=20, tbl_width_chars=250):
                detail = f"\nonly in the warehouse:\n{extra}\nonly in the expected:\n{missing}"
        raise AssertionError(f"{name}: {error}{detail}") from None


def assert_same_warehouse(left: dict[str, pl.DataFrame], right: dict[str, pl.DataFrame]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        frame_equal(name, left[name], right[name])


@pytest.fixture(scope="module")
def synced():
    """A lake with the whole scripted history and a warehouse synced to its end, under a home
    of their own (`home/lake`, `home/warehouse.duckdb`): (history, home, lake layout)."""
    home = make_scratch_dir("totes-synced-")
    history, layout = synced_history(home)
    return history, home, layout


def read_csv(path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


TODAY = date(2024, 11, 18)


class Crash(Exception):
    pass


def whole_history_synced(lake, history: History):
    """One sync of the whole history into a fresh DuckDB warehouse: its result and its tables."""
    target = DuckDBTarget()
    try:
        return sync_once(lake, target, history.final_lsn, today=TODAY), dump_warehouse(target)
    finally:
        target.close()


@pytest.fixture(scope="module")
def exactly_once_reference(history_of_every_kind, history_lake):
    """The warehouse after one sync of the whole history."""
    return whole_history_synced(history_lake, history_of_every_kind)[1]


def _sync(history_lake, target, lsn):
    result = sync_once(history_lake, target, lsn, today=TODAY)
    assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
    return result


FACT_SOURCES = {"fact_sales_order": "sales_order", "fact_purchase_order": "purchase_order", "fact_payment": "payment"}


NOT_PROJECTED = {"payment": {"company_ac_number", "counterparty_ac_number"}}


@pytest.fixture(scope="module")
def history_of_every_kind() -> History:
    return mixed_history()


@pytest.fixture(scope="module")
def history_lake(history_of_every_kind, tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("lake"), history_of_every_kind.source.events)


def current_facts_equal(fact, actual: pl.DataFrame, expected: dict[str, pl.DataFrame]) -> list:
    """The current, not deleted rows of one fact table (its rows `actual`) equal the expected
    ones; returns the business keys whose current row says "deleted"."""
    current = actual.filter(pl.col("is_current") & ~pl.col("is_deleted")).drop([fact.key, *LINEAGE_NAMES])
    schema = {n: t for n, t in fact.polars_schema.items() if n in current.columns}
    frame_equal(
        fact.name, current.sort(fact.business_key), conform(expected[fact.name], schema).sort(fact.business_key)
    )
    return actual.filter(pl.col("is_current") & pl.col("is_deleted"))[fact.business_key].to_list()


def dimensions_against(target, expected: dict[str, pl.DataFrame]):
    """Each dimension but dim_date: the dimension, its rows, the expected rows, and the rows the
    expected ones lack (whether those may stay is the caller's rule)."""
    for dimension in DIMENSIONS:
        if dimension.name == "dim_date":
            continue
        actual = read_table_sorted(target, dimension.name)
        want = conform(expected[dimension.name], dimension.polars_schema).sort(dimension.key)
        yield dimension, actual, want, actual.filter(~pl.col(dimension.key).is_in(want[dimension.key].implode()))


def check_against_source(target, rows: dict[str, dict[str, Row]], kept: dict[str, set[str]]) -> None:
    """Current facts and dimensions == the independent transform of `rows`; integrity."""
    assert dangling_references(target) == {}
    assert duplicate_current_rows(target) == {}
    source = ScriptedSource(rows=rows)
    connection, expected = scripted_expected(source)
    for fact in FACTS:
        deleted_now = current_facts_equal(fact, read_table_sorted(target, fact.name), expected)
        assert not {str(k) for k in deleted_now} & set(rows[FACT_SOURCES[fact.name]]), fact.name
    for dimension, actual, want, extra in dimensions_against(target, expected):
        assert {str(k) for k in extra[dimension.key].to_list()} <= kept.get(dimension.name, set()), dimension.name
        frame_equal(dimension.name, actual.filter(pl.col(dimension.key).is_in(want[dimension.key].implode())), want)
    referenced = sorted(
        {
            d
            for fact in FACTS
            for c in FACT_DATE_COLUMNS[fact.name]
            for d in read_table_sorted(target, fact.name)[c].to_list()
        }
    )
    frame_equal(
        "dim_date",
        read_table_sorted(target, "dim_date"),
        conform(expected_dim_date(connection, referenced, TODAY), BY_NAME["dim_date"].polars_schema),
    )


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
            assert rows.select("source_lsn", "source_seq").rows() == sorted(
                rows.select("source_lsn", "source_seq").rows()
            )


def check_sequences(target) -> None:
    """Each fact's own sequence default stays past the ids the sync assigned."""
    for fact in FACTS:
        last = target.query(f"SELECT max({fact.key}) AS n FROM {fact.name}").item()
        assert target.query(f"SELECT nextval('{fact.sequence}') AS n").item() > last


SNAPSHOT = SHARED_DATA / "snapshot_2024-11-15_aidan-mooney"


SNAPSHOT_LSN = 0x2_4000_0000


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
    referenced = sorted(
        {d for fact, columns in FACT_DATE_COLUMNS.items() for c in columns for d in tables[fact][c].to_list()}
    )
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
        frame_equal(name, actual, conform(expected[name], schema).sort(actual.columns[0]))


TABLES = len(SOURCES)


@pytest.fixture(scope="module")
def sliced_reference(history_of_every_kind, history_lake):
    """The warehouse after one sync of the whole history, in one slice."""
    result, tables = whole_history_synced(history_lake, history_of_every_kind)
    assert len(result.slices) == 1
    return tables


def _transaction_sizes(history_of_every_kind) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for event in history_of_every_kind.source.events:
        sizes[event.lsn] = sizes.get(event.lsn, 0) + 1
    return sizes
