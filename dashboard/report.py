"""`totes report`: the business charts as files to e-mail or share, from the warehouse now or
as of a moment. The same views and chart specs as the dashboard; vl-convert draws them to SVG
and PNG without a browser.

    DIR/index.html        one self-contained page: every chart (inline SVG) and its figures
    DIR/<view>.svg|.png   each chart alone
    DIR/<view>.csv        each chart's figures
"""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from change_events import format_lsn
from dashboard import charts, reading, views

VEGA_LITE_VERSION = "6.4"


@dataclass
class ReportFile:
    view: str
    svg: Path
    png: Path
    csv: Path
    rows: int


def _figures_html(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>no rows</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    return f'<table class="figures"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def write_report(out: Path, warehouse: reading.Warehouse, filters: views.Filters) -> list[ReportFile]:
    """Write the report into `out` (created if missing); return what was written."""
    import vl_convert

    out.mkdir(parents=True, exist_ok=True)
    found = reading.business(warehouse, filters)
    written, sections = [], []
    for view in views.VIEWS:
        rows = found["views"][view.name]
        spec = charts.chart_spec(view.name, rows, view.title)
        svg = vl_convert.vegalite_to_svg(spec, vl_version=VEGA_LITE_VERSION)
        files = ReportFile(
            view.name, out / f"{view.name}.svg", out / f"{view.name}.png", out / f"{view.name}.csv", len(rows)
        )
        files.svg.write_text(svg, encoding="utf-8")
        files.png.write_bytes(vl_convert.vegalite_to_png(spec, vl_version=VEGA_LITE_VERSION, scale=2))
        with files.csv.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if rows:
                writer.writerow(rows[0].keys())
                writer.writerows(row.values() for row in rows)
        sections.append(
            f'<section id="{html.escape(view.name)}"><h2>{html.escape(view.title)}</h2>'
            f"<p>{html.escape(view.description)}</p>{svg}{_figures_html(rows)}</section>"
        )
        written.append(files)
    moment = filters.as_of.isoformat() if filters.as_of else "now"
    scope = (
        ", ".join(
            part
            for part in (
                f"from {filters.start}" if filters.start else "",
                f"to {filters.end}" if filters.end else "",
                f"in {filters.currency}" if filters.currency else "",
            )
            if part
        )
        or "all days, every currency"
    )
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    (out / "index.html").write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Terrific Totes: business report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} section{{margin-bottom:2em}}
table.figures{{border-collapse:collapse;font-size:.85em}} .figures th,.figures td{{border:1px solid #ccd;padding:.15em .4em;text-align:right}}</style>
</head><body><h1>Terrific Totes: business report</h1>
<p id="scope">Warehouse as of {html.escape(moment)} (up to source LSN {html.escape(format_lsn(found["checkpoint_lsn"] or 0))}); {html.escape(scope)}. Made {made}.</p>
{"".join(sections)}
</body></html>""",
        encoding="utf-8",
    )
    return written
