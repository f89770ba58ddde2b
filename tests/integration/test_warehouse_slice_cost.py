"""What a small slice costs a DuckDB warehouse follows the slice: its commit appends its
changes to the WAL, it does not checkpoint (rewrite every row group the slice touched, which
for updates spread over the keys is every row group of the fact table and its mirror)."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from change_events import Op
from tests.scripted_source import snapshot_events, write_lake
from tests.warehouse_fixtures import SNAPSHOT, SNAPSHOT_LSN
from warehouse_sync import DuckDBTarget, dangling_references, duplicate_current_rows, sync_once

TODAY = date(2024, 11, 18)
EVERY = 11
"""Every 11th of the real snapshot's 11,187 sales orders: a slice of ~1,000 spread updates."""


@pytest.fixture(scope="module")
def spread_updates(tmp_path_factory):
    """The real snapshot, then one transaction updating every EVERY-th sales order."""
    if not SNAPSHOT.is_dir():
        pytest.skip(f"shared snapshot not available at {SNAPSHOT}")
    events = snapshot_events(SNAPSHOT, SNAPSHOT_LSN)
    orders = [e for e in events if e.table.endswith("sales_order") and e.after][::EVERY]
    lsn = SNAPSHOT_LSN + 0x1000
    when = datetime(2024, 11, 18, 9, tzinfo=timezone.utc)
    updates = [
        dataclasses.replace(
            event,
            op=Op.UPDATE,
            lsn=lsn,
            seq=seq,
            xid=7,
            commit_ts=when,
            after={**event.after, "units_sold": str(int(event.after["units_sold"]) + 1)},
        )
        for seq, event in enumerate(orders)
    ]
    return write_lake(tmp_path_factory.mktemp("lake"), events + updates), lsn, len(updates)


def test_a_small_slice_of_spread_updates_commits_into_the_wal_without_rewriting_the_warehouse(spread_updates, tmp_path):
    lake, lsn, count = spread_updates
    path = tmp_path / "warehouse.duckdb"
    target = DuckDBTarget(path)
    sync_once(lake, target, SNAPSHOT_LSN, today=TODAY)
    target.close()  # checkpointed: the file holds the snapshot, no WAL
    size, wal = path.stat().st_size, Path(f"{path}.wal")
    target = DuckDBTarget(path)
    try:
        result = sync_once(lake, target, lsn, today=TODAY)
        assert result.events == count and result.facts_closed == {"fact_sales_order": count}
        assert wal.exists() and wal.stat().st_size > 0  # the slice is in the WAL...
        assert path.stat().st_size == size  # ...and the database file was not rewritten
        assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
        current = target.query(
            "SELECT count(*) AS n FROM fact_sales_order WHERE is_current AND source_lsn = " + str(int(lsn))
        )
        assert current["n"].item() == count
    finally:
        target.close()
