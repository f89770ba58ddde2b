"""The pure rules behind routine DDL (the whole path through a real PostgreSQL, reader, lake and
warehouse: tests/integration/test_schema_changes.py): which type a widened lake column takes,
which source type changes keep every value (the others make the reader re-read the table), and
an append that raced a widening landing in the widened log.
"""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pytest

from cdc_reader.schema_changes import preserves_values
from lake import LakeLayout, LakeWriter
from lake.arrow_types import common_type
from lake.timetravel import read_table
from tests.lake_fixtures import with_type

SO = "public.sales_order"
TODAY = date(2024, 11, 16)


@pytest.mark.parametrize(
    "old, new, widened",
    [
        (pa.int16(), pa.int32(), pa.int32()),
        (pa.int32(), pa.int64(), pa.int64()),
        (pa.int64(), pa.int32(), pa.int64()),
        (pa.decimal128(10, 2), pa.decimal128(14, 4), pa.decimal128(14, 4)),
        (pa.decimal128(10, 2), pa.decimal128(10, 4), pa.decimal128(12, 4)),
        (pa.int32(), pa.decimal128(12, 2), pa.decimal128(12, 2)),
        (pa.int32(), pa.decimal128(5, 2), pa.decimal128(12, 2)),
        (pa.int64(), pa.decimal128(38, 30), pa.string()),
        (pa.float32(), pa.float64(), pa.float64()),
        (pa.date32(), pa.timestamp("us"), pa.timestamp("us")),
        (pa.string(), pa.int32(), pa.string()),
        (pa.int32(), pa.string(), pa.string()),
        (pa.bool_(), pa.int32(), pa.string()),
    ],
)
def test_the_lake_column_takes_the_narrowest_type_that_holds_both(old, new, widened):
    assert common_type(old, new) == widened


@pytest.mark.parametrize(
    "old, new, same",
    [
        ("integer", "bigint", True),
        ("smallint", "integer", True),
        ("integer", "numeric(12,2)", True),
        ("numeric(10,2)", "numeric(14,4)", True),
        ("numeric(10,2)", "numeric", True),
        ("character varying(3)", "character varying(10)", True),
        ("character varying(3)", "text", True),
        ("text", "character varying(40)", False),
        ("real", "double precision", True),
        ("bigint", "integer", False),
        ("numeric(10,2)", "numeric(10,1)", False),
        ("text", "integer", False),
        ("integer", "text", False),
        ("character varying(10)", "character varying(3)", False),
        ("timestamp(3) without time zone", "timestamp with time zone", False),
        ("timestamp(3) without time zone", "timestamp(6) without time zone", True),
    ],
)
def test_the_reader_knows_which_type_changes_keep_every_value(old, new, same):
    assert preserves_values(old, new) is same


def test_an_append_that_raced_a_widening_lands_in_the_widened_log(tmp_path):
    """Shard s2 reads the log, then shard s1 widens it before s2 commits: s2's commit is
    refused (the table's metadata changed), and its retry must write into the new table."""
    from tests.lake_fixtures import SALES_ORDER, Source, sales_order_row

    layout = LakeLayout(tmp_path / "lake")
    src = Source()
    lake = LakeWriter(layout, today=lambda: TODAY)
    lake.write_batch("s1", src.snapshot(SALES_ORDER, [sales_order_row(i) for i in (1, 2)]))
    with src.transaction() as tx:
        tx.update(with_type(SALES_ORDER, "units_sold", "bigint"), {**sales_order_row(1, 1), "units_sold": "5000000000"})
    with src.transaction() as late:
        late.update(SALES_ORDER, sales_order_row(2, 1))

    other = LakeWriter(layout, today=lambda: TODAY)
    log = other.change_log(SO, "s2")
    refresh, raced = log.refresh, []

    def refresh_then_lose_the_race():
        table = refresh()
        if not raced:  # the widening lands between this shard's read and its commit
            raced.append(True)
            assert not lake.write_batch("s1", tx.events).rejected
        return table

    log.refresh = refresh_then_lose_the_race
    assert not other.write_batch("s2", late.events).rejected

    logged = read_table(layout, "changes", SO)
    assert logged.schema.field("units_sold").type == pa.int64()
    expected = [
        int(sales_order_row(1)["units_sold"]),
        int(sales_order_row(2)["units_sold"]),
        5_000_000_000,
        int(sales_order_row(2, 1)["units_sold"]),
    ]
    assert sorted(logged.column("units_sold").to_pylist()) == sorted(expected)
