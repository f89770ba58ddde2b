"""`totes dashboard` in a real browser (headless Chromium): every page loads without console
errors, each chart draws the rows of its SQL over the warehouse, filters and time travel
change what is shown, and the live view moves while a sync writes the warehouse.

The warehouse is the sync's own over a scripted history (tests/warehouse_history.py), whose
source rows at each sync point are the independent oracle for the as-of and currency views.
Screenshots are kept under artifacts/dashboard/.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import duckdb
import pytest

from dashboard import views
from dashboard.charts import plain_rows
from tests.browser import browser, dashboard_process, new_page, wait_loaded, wait_until
from tests.conftest import make_scratch_dir
from tests.warehouse_history import mixed_history
from tests.scripted_source import write_lake
from change_events import format_lsn
from lake.timetravel import state_as_of_lsn
from warehouse_sync import sync_once
from warehouse_sync.read_copy import ReadCopyPublisher
from warehouse_sync.targets import open_target

CURRENCY_CODES = {"1": "GBP", "2": "USD", "3": "EUR"}


def sql_rows(warehouse, statement: str) -> list[dict]:
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        result = connection.execute(statement)
        names = [d[0] for d in result.description]
        return plain_rows([dict(zip(names, row)) for row in result.fetchall()])


def drawn_rows(page, view: str, columns) -> list[dict]:
    """The rows the chart of `view` draws (its Vega dataset), reduced to the view's columns."""
    rows = page.evaluate(f"totes.views['chart-{view}'].data('rows')")
    return [{c: row.get(c) for c in columns} for row in rows]


def commit_time_at(history, lsn: int):
    return max(e.commit_ts for e in history.source.events if e.lsn <= lsn and e.commit_ts is not None)


@pytest.fixture(scope="module")
def address(synced):
    _, home, _ = synced
    with dashboard_process(home, home / "lake", home / "warehouse.duckdb", refresh=0) as url:
        yield url


@pytest.fixture(scope="module")
def chromium():
    with browser() as context:
        yield context


@pytest.fixture
def page(chromium):
    with new_page(chromium, "dashboard") as page:
        yield page


def test_every_page_loads_without_console_errors(address, page):
    for path, name in (("/", "business"), ("/order", "order"), ("/lake", "lake"), ("/health", "health")):
        page.goto(address.rstrip("/") + path)
        wait_loaded(page)
        page.artifact(name)
        assert not page.locator("#error").is_visible() or page.locator("#error").inner_text() == "", name
        assert page.errors == [], (name, page.errors)
        charts = page.evaluate("Object.keys(totes.views)")
        if name != "lake":
            assert charts and page.locator("svg.marks").count() == len(charts), name


def test_each_chart_draws_the_rows_of_its_sql(synced, address, page):
    history, home, _ = synced
    warehouse = home / "warehouse.duckdb"
    page.goto(address)
    wait_loaded(page)
    for view in views.VIEWS:
        expected = sql_rows(warehouse, view.query(views.Filters()))
        assert expected, view.name
        assert drawn_rows(page, view.name, expected[0].keys()) == expected, view.name
        cells = page.locator(f"#card-{view.name} table.figures tbody tr").count()
        assert cells == len(expected), view.name
    # ... and those rows are the source's: units of the current orders, by a query of our own
    (total,) = sql_rows(
        warehouse, "SELECT sum(units_sold) AS u FROM fact_sales_order WHERE is_current AND NOT is_deleted"
    )[0].values()
    final_rows = history.points[-1][1]["sales_order"].values()
    assert total == sum(int(r["units_sold"]) for r in final_rows)
    drawn = drawn_rows(page, "sales-by-month", ["units"])
    assert sum(r["units"] for r in drawn) == total


def test_filters_change_what_is_shown(synced, address, page):
    history, home, _ = synced
    final_orders = list(history.points[-1][1]["sales_order"].values())
    page.goto(address)
    loads = wait_loaded(page)
    everything = drawn_rows(page, "sales-by-month", ["currency_code", "units"])

    page.select_option("#filter-currency", "USD")
    page.click("#apply")
    loads = wait_loaded(page, loads)
    usd = drawn_rows(page, "sales-by-month", ["currency_code", "units"])
    assert usd != everything and {r["currency_code"] for r in usd} == {"USD"}
    assert sum(r["units"] for r in usd) == sum(
        int(o["units_sold"]) for o in final_orders if CURRENCY_CODES[o["currency_id"]] == "USD"
    )
    assert "currency=USD" in page.url
    page.artifact("filtered-usd")

    # as of the moment the first changes had been synced: the source's rows of that point
    lsn, rows_then = history.points[1]
    moment = commit_time_at(history, lsn) + timedelta(milliseconds=1)
    page.select_option("#filter-currency", "")
    page.fill("#filter-as_of", moment.replace(tzinfo=None).isoformat())
    page.click("#apply")
    wait_loaded(page, loads)
    then = drawn_rows(page, "sales-by-month", ["units"])
    assert sum(r["units"] for r in then) == sum(int(o["units_sold"]) for o in rows_then["sales_order"].values())
    assert then != [{"units": r["units"]} for r in everything]
    page.artifact("as-of")

    page.goto(address + "?" + urlencode({"start": "2099-01-01"}))
    wait_loaded(page)
    assert drawn_rows(page, "sales-by-month", ["units"]) == []
    page.goto(address + "?" + urlencode({"start": "nonsense"}))
    wait_loaded(page)
    assert "is not a date" in page.locator("#error").inner_text()


def test_one_orders_history_marks_its_silent_update(synced, address, page):
    _, home, _ = synced
    page.goto(address.rstrip("/") + "/order?id=2")
    wait_loaded(page)
    versions = sql_rows(home / "warehouse.duckdb", views.order_history_sql(2))
    assert page.locator("#versions tbody tr").count() == len(versions) >= 2
    silent = page.locator("#versions tbody tr.silent")
    assert silent.count() == 1 and "silent update" in silent.inner_text()
    page.artifact("order-2")


def test_time_travel_shows_a_lake_table_as_of_an_lsn_and_the_difference(synced, address, page):
    history, _, layout = synced
    first, last = history.points[0][0], history.points[-1][0]
    query = urlencode({"table": "public.sales_order", "at": format_lsn(first), "compare": format_lsn(last)})
    page.goto(address.rstrip("/") + "/lake?" + query)
    wait_loaded(page)
    then = state_as_of_lsn(layout, "public.sales_order", first)
    assert f": {then.num_rows} rows" in page.locator("#lake-count").inner_text()
    assert page.locator("#lake-rows tbody tr").count() == then.num_rows
    difference = page.locator("#lake-difference").inner_text()
    added = len(history.points[-1][1]["sales_order"]) - len(history.points[0][1]["sales_order"])
    assert f"{added} added" in difference and "0 changed" not in difference
    page.artifact("time-travel")


def test_the_live_view_moves_while_a_sync_writes_the_warehouse(chromium):
    """The warehouse is held by a writing sync (as under `totes run`): the page reads the copy
    it publishes and follows each commit by itself."""
    history = mixed_history()
    home = make_scratch_dir("totes-dashboard-live-")
    first_lsn = history.points[0][0]
    layout = write_lake(home / "lake", [e for e in history.source.events if e.lsn <= first_lsn])
    warehouse = home / "warehouse.duckdb"
    target = open_target(str(warehouse))
    readers = ReadCopyPublisher(target, min_interval=0)
    try:
        sync_once(layout, target, first_lsn)
        readers.after_sync(True)
        with dashboard_process(home, home / "lake", warehouse, refresh=0.5) as url, new_page(chromium, "live") as page:
            page.goto(url)
            wait_loaded(page)
            seen = [page.evaluate("document.body.dataset.checkpoint")]
            assert seen == [str(first_lsn)]
            for lsn, rows in (history.points[2], history.points[-1]):
                write_lake(home / "lake", [e for e in history.source.events if seen_lsn(seen) < e.lsn <= lsn])
                sync_once(layout, target, lsn)
                readers.after_sync(True)
                assert wait_until(lambda: page.evaluate("document.body.dataset.checkpoint") == str(lsn)), lsn
                units = wait_until(lambda: sum(r["units"] for r in drawn_rows(page, "sales-by-month", ["units"])))
                assert units == sum(int(o["units_sold"]) for o in rows["sales_order"].values()), lsn
                seen.append(str(lsn))
            page.artifact("final")
    finally:
        readers.close()
        target.close()


def seen_lsn(seen: list[str]) -> int:
    return int(seen[-1])
