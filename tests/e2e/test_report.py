"""`totes report --out DIR`: the business charts as an HTML page, SVG, PNG and CSV files that
open and hold the warehouse's figures, now or as of a moment."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from datetime import timedelta

import duckdb
import pytest

from dashboard import views
from dashboard import reading
from dashboard.reading import Warehouse
from tests.cli_helpers import totes
from warehouse_sync import sync_once
from tests.warehouse_fixtures import read_csv


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def as_text(rows: list[tuple], names) -> list[dict]:
    """SQL rows as the CSV holds them (Decimal 4125.00 is written 4125.0, as JSON numbers)."""
    from dashboard.charts import plain_rows

    return [{k: str(v) for k, v in row.items()} for row in plain_rows([dict(zip(names, r)) for r in rows])]


def test_the_report_files_open_and_hold_the_warehouses_figures(synced):
    history, home, _ = synced
    out = home / "report-now"
    result = totes("report", "--out", str(out), "--warehouse", str(home / "warehouse.duckdb"), home=home)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("index.html")
    page = (out / "index.html").read_text(encoding="utf-8")
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        for view in views.VIEWS:
            found = connection.execute(view.query(views.Filters()))
            names = [d[0] for d in found.description]
            expected = as_text(found.fetchall(), names)
            assert read_csv(out / f"{view.name}.csv") == expected, view.name
            width, height = png_size((out / f"{view.name}.png").read_bytes())
            assert width > 300 and height > 200, view.name
            svg = ET.parse(out / f"{view.name}.svg").getroot()
            assert svg.tag.endswith("svg")
            texts = {t.text for t in svg.iter() if t.tag.endswith("text") and t.text}
            assert view.title in texts, view.name
            assert f'id="{view.name}"' in page and view.title in page
            for row in expected:  # every figure is in the page's tables
                assert all(f"<td>{value}</td>" in page for value in row.values()), (view.name, row)
    designs = {t.text for t in ET.parse(out / "top-designs.svg").getroot().iter() if t.tag.endswith("text")}
    assert {f"{row['design_name']} #{row['design_id']}" for row in read_csv(out / "top-designs.csv")} <= designs


def test_wrong_report_options_are_one_sentence(synced, tmp_path):
    _, home, _ = synced
    bad = totes(
        "report",
        "--out",
        str(tmp_path / "r"),
        "--warehouse",
        str(home / "warehouse.duckdb"),
        "--as-of",
        "yesterday",
        home=home,
    )
    assert bad.returncode == 2 and "is not a time like" in bad.stderr and "Traceback" not in bad.stderr
    missing = totes("report", "--out", str(tmp_path / "r"), "--warehouse", str(tmp_path / "none.duckdb"), home=home)
    assert missing.returncode == 2 and "no warehouse at" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_the_views_read_a_postgresql_warehouse_the_same(synced, empty_database):
    """The views' SQL is common to both engines: a PostgreSQL warehouse synced from the same
    lake shows the same figures, now and as of a moment."""
    from warehouse_sync import PostgresTarget

    history, home, _ = synced
    target = PostgresTarget(empty_database)
    try:
        from lake.layout import LakeLayout

        layout = LakeLayout(home / "lake")
        for lsn, _ in history.points:
            sync_once(layout, target, lsn)
    finally:
        target.close()
    lsn = history.points[1][0]
    moment = max(e.commit_ts for e in history.source.events if e.lsn <= lsn and e.commit_ts) + timedelta(milliseconds=1)
    for filters in (views.Filters(), views.Filters(currency="USD"), views.Filters(as_of=moment)):
        duck = reading.business(Warehouse(str(home / "warehouse.duckdb")), filters)
        postgres = reading.business(Warehouse(empty_database), filters)
        assert postgres["views"] == duck["views"], filters
        assert postgres["checkpoint_lsn"] == duck["checkpoint_lsn"]
