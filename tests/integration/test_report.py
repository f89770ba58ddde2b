"""`totes report --out DIR`: the business charts as an HTML page, SVG, PNG and CSV files that
open and hold the warehouse's figures, now or as of a moment."""

from __future__ import annotations

from datetime import timedelta


from dashboard import views
from dashboard.reading import Warehouse
from dashboard.report import write_report
from tests.warehouse_fixtures import read_csv


def test_a_report_as_of_a_moment_shows_the_warehouse_as_it_was(synced):
    history, home, _ = synced
    lsn, rows_then = history.points[1]
    moment = max(e.commit_ts for e in history.source.events if e.lsn <= lsn and e.commit_ts) + timedelta(milliseconds=1)
    out = home / "report-then"
    write_report(out, Warehouse(str(home / "warehouse.duckdb")), views.parse_filters(as_of=moment.isoformat()))
    then = sum(int(r["units"]) for r in read_csv(out / "sales-by-month.csv"))
    assert then == sum(int(o["units_sold"]) for o in rows_then["sales_order"].values())
    now = sum(int(o["units_sold"]) for o in history.points[-1][1]["sales_order"].values())
    assert then != now
    assert moment.isoformat() in (out / "index.html").read_text(encoding="utf-8")
