"""The lake's read port for change logs (lake.change_feed) on a real Delta lake, and the
boundary it keeps: the warehouse reads change logs through it and drives no Delta itself."""

from __future__ import annotations

import ast
from pathlib import Path

from lake import ChangeFeed, LakeLayout, LakeWriter
from tests.lake_fixtures import SALES_ORDER, Source, sales_order_row

TABLE = "public.sales_order"


def _lake(tmp_path):
    layout, src = LakeLayout(tmp_path), Source()
    lake = LakeWriter(layout)
    lake.write_batch("s1", src.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 4)]))

    def update(orders) -> int:
        with src.transaction() as tx:
            for order in orders:
                tx.update(SALES_ORDER, sales_order_row(order, src.lsn))
        lake.write_batch("s1", tx.events)
        return src.lsn

    return layout, update


def test_between_reads_the_lsn_range_and_the_columns_asked_for_that_exist(tmp_path):
    layout, update = _lake(tmp_path)
    first, second, third = update([1]), update([2, 3]), update([1])
    feed = ChangeFeed(layout)
    table = feed.between(TABLE, ["_lsn", "_op", "no_such_column"], first, second)
    assert table is not None
    assert table.column_names == ["_lsn", "_op"]
    assert table.column("_lsn").to_pylist() == [second, second]
    unbounded = feed.between(TABLE, ["_lsn"], first)
    assert sorted(unbounded.column("_lsn").to_pylist()) == [second, second, third]
    assert feed.between("public.no_such_table", ["_lsn"], 0) is None


def test_a_kept_log_reads_only_what_the_commits_since_its_version_appended(tmp_path):
    layout, update = _lake(tmp_path)
    first = update([1])
    log = ChangeFeed(layout).open(TABLE)
    assert log is not None and not log.moved_on()
    seen = log.version
    second, third = update([2, 3]), update([1])
    assert log.moved_on() and log.version == seen  # still the version it was opened at
    log.update()
    assert log.version > seen and not log.moved_on()
    assert log.added_rows(seen) == 3
    appended = log.appended(seen, ["_lsn", "_seq"], second)
    assert appended.column_names == ["_lsn", "_seq"]
    assert appended.column("_lsn").to_pylist() == [third]
    assert log.count_after(first) == 3
    assert "_lsn" in log.schema().names


def test_the_warehouse_imports_no_delta():
    """Change logs reach the warehouse through lake.change_feed, so only the lake knows Delta."""
    package = Path(__file__).resolve().parents[2] / "warehouse_sync"
    importing = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] == "deltalake" for name in names):
                importing.append(path.name)
    assert importing == []
