"""The dashboard's web app: a few HTML pages and the JSON they draw from.

    /          business views, filtered by date range, currency and "as of"
    /order     one sales order's every fact version, silent updates marked
    /lake      any lake table as of a version, a time or an LSN, or what changed between two
    /health    events/s per stage, lags, WAL retained, watermark, dead letters, lake size

Why starlette + uvicorn + altair/vega-embed: the charts are Vega-Lite specs made by altair,
the same specs `totes report` renders to SVG/PNG with vl-convert (no browser needed), and
vl-convert also ships the vega-embed bundle the pages load, so nothing is fetched from the
internet. Starlette is a small, well-kept ASGI library: a handful of routes returning JSON,
no framework state to learn (Dash, Panel or Streamlit would bring their own chart models and
a second way to draw the report). The pages refresh themselves every few seconds.

Every read is a short read-only session (the DuckDB warehouse's writer publishes a copy for
readers); the page never sees a DSN or a password: the source is read on the server only
for numbers (WAL bytes). The server binds 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import html
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from dashboard import charts, reading, views
from warehouse_sync.read_copy import WarehouseBusy

log = logging.getLogger("totes.dashboard")

VEGA_LITE_VERSION = "6.4"
"""The Vega-Lite that altair writes specs for (vl-convert bundles it for the browser)."""

PAGES = {"business": "Business", "order": "Order history", "lake": "Time travel", "health": "Pipeline health"}
PATHS = {"business": "/", "order": "/order", "lake": "/lake", "health": "/health"}


def bundle_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "totes-cdc"


@lru_cache(maxsize=1)
def vega_bundle() -> str:
    """vega, vega-lite and vega-embed in one script, made by vl-convert (works offline). Making
    it takes 5-15 s, so it is kept in the user's cache folder, per vl-convert version."""
    import vl_convert

    version = metadata.version("vl-convert-python")
    cached = bundle_cache() / f"vega-bundle-{version}-vl{VEGA_LITE_VERSION}.js"
    try:
        return cached.read_text(encoding="utf-8")
    except OSError:
        pass
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_name(f".{cached.name}.{os.getpid()}")
        temporary.write_text(bundle, encoding="utf-8")
        os.replace(temporary, cached)
    except OSError:
        pass  # no cache folder: made again next time
    return bundle


def _static(name: str) -> str:
    return resources.files("dashboard").joinpath("static", name).read_text(encoding="utf-8")


def page(name: str, refresh: float) -> str:
    nav = " ".join(
        f'<a href="{PATHS[key]}" class="{"here" if key == name else ""}">{html.escape(title)}</a>'
        for key, title in PAGES.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>totes-cdc · {html.escape(PAGES[name])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>{_static("style.css")}</style>
<script src="/static/vega.js"></script>
</head><body data-page="{name}" data-refresh="{refresh:g}">
<header><strong>totes-cdc</strong> <nav>{nav}</nav> <span id="status" class="status"></span></header>
<main id="main"></main>
<script src="/static/app.js"></script>
</body></html>"""


class Dashboard:
    """What the routes read from, and the health samples taken in the background."""

    def __init__(
        self,
        lake: str | None,
        warehouse: str,
        source_dsn: str | None = None,
        refresh: float = 5.0,
        sample_seconds: float = 3.0,
        home: Path | None = None,
    ):
        self.lake = lake
        self.home = home  # where a reader outside the lake writes its status (TOTES_HOME)
        self.warehouse = reading.Warehouse(warehouse)
        self._source_dsn = source_dsn  # never sent to a page
        self.refresh = refresh
        self.sample_seconds = sample_seconds
        self.samples: collections.deque = collections.deque(maxlen=400)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._watched_at = float("-inf")
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Dashboard(lake={self.lake!r}, warehouse={self.warehouse!r})"

    def take_sample(self) -> None:
        self.samples.append(reading.sample(self.lake or "", self.warehouse, self._source_dsn, home=self.home))

    IDLE_SAMPLE_SECONDS = 30.0
    """Between samples while nobody has looked at the health page for a few minutes."""

    def watched(self) -> None:
        """The health page asked: sample at the full rate for the next few minutes."""
        self._watched_at = time.monotonic()
        self._wake.set()

    def _sampling(self) -> None:
        while not self._stop.is_set():
            try:
                self.take_sample()
            except Exception:  # noqa: BLE001 - the next sample tries again
                log.exception("a health sample failed")
            recently = time.monotonic() - self._watched_at < 300
            self._wake.wait(self.sample_seconds if recently else self.IDLE_SAMPLE_SECONDS)
            self._wake.clear()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._sampling, name="dashboard-health", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _problem(error: Exception, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": str(error).strip().splitlines()[0]}, status_code=status)


KNOWN_PROBLEMS = (views.FilterError, reading.MomentError, reading.NoWarehouse, WarehouseBusy)


def create_app(dashboard: Dashboard) -> Starlette:
    async def serve_page(request: Request) -> HTMLResponse:
        name = {path: key for key, path in PATHS.items()}[request.url.path]
        return HTMLResponse(page(name, dashboard.refresh))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "vega.js":
            return Response(
                await run_in_threadpool(vega_bundle),
                media_type="text/javascript",
                headers={"Cache-Control": "max-age=86400"},
            )
        if name == "app.js":
            return Response(_static("app.js"), media_type="text/javascript")
        return Response("not found", status_code=404, media_type="text/plain")

    async def api(request: Request) -> JSONResponse:
        handler = API[request.path_params["name"]] if request.path_params["name"] in API else None
        if handler is None:
            return JSONResponse({"error": "no such data"}, status_code=404)
        try:
            return JSONResponse(await run_in_threadpool(handler, dashboard, dict(request.query_params)))
        except KNOWN_PROBLEMS as error:
            return _problem(error, 503 if isinstance(error, (WarehouseBusy, reading.NoWarehouse)) else 400)
        except Exception as error:  # noqa: BLE001 - one sentence for the page, the details in the log
            log.exception("%s failed", request.url.path)
            return _problem(
                RuntimeError(f"could not read the data ({type(error).__name__}); see the dashboard's log"), 500
            )

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=vega_bundle, name="vega-bundle", daemon=True).start()  # ready before a page asks
        dashboard.start()
        yield
        dashboard.stop()

    return Starlette(
        routes=[
            *(Route(path, serve_page) for path in PATHS.values()),
            Route("/static/{name}", static),
            Route("/api/{name}", api),
        ],
        lifespan=lifespan,
    )


# -- the JSON behind each page -----------------------------------------------------------------


def business_data(dashboard: Dashboard, query: dict) -> dict:
    filters = views.parse_filters(query.get("start"), query.get("end"), query.get("currency"), query.get("as_of"))
    found = reading.business(dashboard.warehouse, filters)
    shown = []
    for view in views.VIEWS:
        rows = found["views"][view.name]
        shown.append(
            {
                "name": view.name,
                "title": view.title,
                "description": view.description,
                "columns": list(rows[0]) if rows else [],
                "rows": rows,
                "spec": charts.chart_spec(view.name, rows, view.title),
            }
        )
    from change_events import format_lsn

    lsn = found["checkpoint_lsn"]
    return {
        "views": shown,
        "currencies": found["currencies"],
        "checkpoint_lsn": lsn,
        "checkpoint": format_lsn(lsn) if lsn else None,
        "filters": {
            "start": query.get("start") or "",
            "end": query.get("end") or "",
            "currency": filters.currency or "",
            "as_of": query.get("as_of") or "",
        },
    }


def order_data(dashboard: Dashboard, query: dict) -> dict:
    text = (query.get("id") or "").strip()
    if text and not text.isdigit():
        raise views.FilterError(f"order {text!r} is not a sales order id like 42.")
    found = reading.order_history(dashboard.warehouse, int(text) if text else None)
    found["spec"] = charts.order_versions_spec(found["versions"], f"Sales order {found['order']}: its versions")
    return found


def lake_data(dashboard: Dashboard, query: dict) -> dict:
    if not dashboard.lake:
        raise reading.MomentError("The dashboard was started without a lake (--lake).")
    tables = reading.lake_tables(dashboard.lake)
    table = query.get("table") or next((t for t in tables if t.endswith(".sales_order")), tables[0] if tables else "")
    if not table:
        return {"tables": [], "table": "", "rows": [], "count": 0}
    at = reading.parse_moment(query.get("at"))
    state = reading.lake_state(dashboard.lake, table, at)
    result = {
        "tables": tables,
        "table": table,
        "at": query.get("at") or "",
        "count": state.height,
        "columns": state.columns,
        "rows": charts.plain_rows(state.head(200).to_dicts()),
    }
    if (query.get("compare") or "").strip():
        compare = reading.parse_moment(query.get("compare"))
        result["compare"] = query["compare"]
        result["difference"] = reading.lake_difference(dashboard.lake, table, at, compare)
    return result


def health_data(dashboard: Dashboard, query: dict) -> dict:
    dashboard.watched()
    samples = list(dashboard.samples)
    latest = samples[-1] if samples else None
    from change_events import format_lsn

    def lsn(value):
        return format_lsn(value) if value else None

    now = (
        {}
        if latest is None
        else {
            "at": latest.at.isoformat(),
            "source_wal_lsn": lsn(latest.source_wal),
            "slot_wal_retained_bytes": latest.slot_retained,
            "lake_watermark": lsn(latest.lake_watermark),
            "reader_events": latest.reader_events,
            "lake_events": latest.lake_events,
            "warehouse_lsn": lsn(latest.warehouse_lsn),
            "warehouse_fact_rows": latest.warehouse_facts,
            "lake_behind_source_bytes": (
                max(latest.source_wal - latest.lake_watermark, 0)
                if latest.source_wal is not None and latest.lake_watermark
                else None
            ),
        }
    )
    facts = reading.lake_facts(dashboard.lake) if dashboard.lake else {}
    return {
        "now": now,
        "lake": facts,
        "samples": len(samples),
        "charts": [
            charts.series_spec(reading.rates(samples), "rate", "Events per second, per stage", "per second"),
            charts.series_spec(reading.lags(samples), "seconds", "Commit → warehouse lag", "seconds"),
            charts.series_spec(reading.behind(samples), "kib", "Behind the source's WAL", "KiB"),
        ],
    }


API = {"business": business_data, "order": order_data, "lake": lake_data, "health": health_data}
