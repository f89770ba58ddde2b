"""`totes verify`'s warehouse side against a real DuckDB warehouse synced from a real lake."""

from __future__ import annotations

import duckdb


def test_dim_date_is_compared_with_the_calendar_the_transform_makes(tmp_path):
    """dim_date holds every day from the calendar's start to a year past the sync and every day
    a fact references, each with its calendar values: a wrong value, a missing day and days the
    transform never makes (before the start and unreferenced, past a year from today) are found."""
    from datetime import date, datetime, timedelta, timezone

    from tests.warehouse_history import synced_history
    from verify import warehouse_side as wh
    from verify.run import _calendar_report
    from warehouse_sync.transforms import CALENDAR_START

    history, _ = synced_history(tmp_path)
    warehouse = str(tmp_path / "warehouse.duckdb")
    reader = wh.WarehouseReader(warehouse)
    try:
        in_sync = _calendar_report(reader, history.final_lsn)
        referenced = set(wh.referenced_days(reader).to_list())
    finally:
        reader.close()
    assert in_sync.in_sync and in_sync.rows >= 366 and referenced  # the facts reference days
    assert in_sync.table == "dim_date" and in_sync.side == "warehouse"

    wrong, gone = CALENDAR_START + timedelta(days=10), CALENDAR_START + timedelta(days=20)
    early, late = date(2020, 1, 1), datetime.now(timezone.utc).date() + timedelta(days=800)
    assert early not in referenced
    with duckdb.connect(warehouse) as wh_db:
        wh_db.execute("UPDATE dim_date SET day_name = 'Funday' WHERE date_id = ?", [wrong])
        wh_db.execute("DELETE FROM dim_date WHERE date_id = ?", [gone])
        for day in (early, late):
            wh_db.execute(
                "INSERT INTO dim_date SELECT ?, year(?), month(?), day(?), isodow(?), dayname(?), "
                "monthname(?), quarter(?)",
                [day] * 8,
            )
    reader = wh.WarehouseReader(warehouse)
    try:
        report = _calendar_report(reader, history.final_lsn)
    finally:
        reader.close()
    assert report.different == {wrong: ["day_name"]}
    assert report.missing == [gone]
    assert report.extra == [early, late]
