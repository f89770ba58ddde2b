"""Chart definitions: a view's rows → a Vega-Lite spec (altair), shared by the live dashboard
(drawn by vega-embed in the browser) and `totes report` (drawn to SVG/PNG by vl-convert).

Every chart's data is the view's rows themselves, as the inline dataset named `rows`, so what
a chart draws can be read back (in a browser: `view.data("rows")`) and compared with the SQL.
"""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

import altair as alt

WIDTH = 520
HEIGHT = 260


def plain(value):
    """A value JSON and Vega can hold: numbers as numbers, days and times as ISO text."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return value


def plain_rows(rows: list[dict]) -> list[dict]:
    return [{k: plain(v) for k, v in row.items()} for row in rows]


def _month_label(rows: list[dict]) -> list[dict]:
    return [{**row, "month_label": f"{int(row['year']):04d}-{int(row['month']):02d}"} for row in rows]


def _base(rows: list[dict], title: str) -> alt.Chart:
    return alt.Chart(alt.InlineData(values=plain_rows(rows), name="rows")).properties(
        title=title, width=WIDTH, height=HEIGHT
    )


def per_month_and_currency(measure: str, axis_title: str, tooltip: list, **encodings):
    """A chart of bars per month of creation, coloured by currency: `measure` high, `tooltip`
    after the month and currency."""

    def chart(rows, title) -> alt.Chart:
        return (
            _base(_month_label(rows), title)
            .mark_bar()
            .encode(
                x=alt.X("month_label:O", title="month"),
                y=alt.Y(f"{measure}:Q", title=axis_title),
                color=alt.Color("currency_code:N", title="currency"),
                tooltip=["month_label:O", "currency_code:N", *tooltip],
                **encodings,
            )
        )

    return chart


def _design_label(rows: list[dict]) -> list[dict]:
    """Designs share names (several "Cotton"s): each bar is one design, named with its id."""
    return [{**row, "design": f"{row['design_name']} #{row['design_id']}"} for row in rows]


def _place_label(rows: list[dict]) -> list[dict]:
    return [{**row, "place": f"{row['city']}, {row['country']}"} for row in rows]


def top_by_units(category: str, label: str, labelled=None, tooltip: tuple[str, ...] | None = None):
    """A chart of horizontal bars of units sold per `category` (a column the rows have, or one
    `labelled` adds to them); the tooltip shows `tooltip` (the category) then orders and units."""

    def chart(rows, title) -> alt.Chart:
        return (
            _base(labelled(rows) if labelled else rows, title)
            .mark_bar()
            .encode(
                y=alt.Y(f"{category}:N", sort="-x", title=label),
                x=alt.X("units:Q", title="units sold"),
                tooltip=[*(tooltip or [f"{category}:N"]), "orders:Q", "units:Q"],
            )
        )

    return chart


AGES = ["not due yet", "1-30 days overdue", "31-90 days overdue", "over 90 days overdue"]


def payments_due(rows, title):
    return (
        _base(rows, title)
        .mark_bar()
        .encode(
            y=alt.Y("counterparty_legal_name:N", sort="-x", title="counterparty"),
            x=alt.X("sum(amount):Q", title="amount unpaid"),
            color=alt.Color(
                "age:N", sort=AGES, scale=alt.Scale(domain=AGES, range=["#9ecae1", "#fdae6b", "#e6550d", "#a50f15"])
            ),
            tooltip=[
                "counterparty_legal_name:N",
                "currency_code:N",
                "age:N",
                "payments:Q",
                alt.Tooltip("amount:Q", format=",.2f"),
            ],
        )
    )


CHARTS = {
    "sales-by-month": per_month_and_currency(
        "revenue",
        "revenue",
        ["orders:Q", "units:Q", alt.Tooltip("revenue:Q", format=",.2f")],
        xOffset="currency_code:N",
    ),
    "top-designs": top_by_units("design", "design", _design_label),
    "top-counterparties": top_by_units("counterparty_legal_name", "counterparty"),
    "purchase-volumes": per_month_and_currency(
        "items", "items bought", ["purchase_orders:Q", "items:Q", alt.Tooltip("cost:Q", format=",.2f")]
    ),
    "payments-due": payments_due,
    "sales-by-location": top_by_units("place", "delivery location", _place_label, tooltip=("country:N", "city:N")),
}


def chart_spec(view_name: str, rows: list[dict], title: str) -> dict:
    """The Vega-Lite spec of a business view's chart."""
    return CHARTS[view_name](rows, title).to_dict()


def order_versions_spec(versions: list[dict], title: str) -> dict:
    """One order's versions over time: units sold per version, silent updates marked."""
    points = [
        {
            **row,
            "version": i + 1,
            "kind": "silent update" if row.get("silent") else ("deleted" if row.get("is_deleted") else "version"),
        }
        for i, row in enumerate(plain_rows(versions))
    ]
    return (
        _base(points, title)
        .mark_point(size=120, filled=True)
        .encode(
            x=alt.X("version:O", title="version"),
            y=alt.Y("units_sold:Q", title="units sold"),
            color=alt.Color("kind:N", title=None),
            shape=alt.Shape("kind:N", title=None),
            tooltip=["sales_record_id:Q", "source_lsn:Q", "valid_from:N", "changed:N", "kind:N"],
        )
        .to_dict()
    )


def series_spec(samples: list[dict], field: str, title: str, axis_title: str) -> dict:
    """A health measure over time (one line per `series` when the rows have one)."""
    encoding = dict(
        x=alt.X("at:T", title="time (UTC)"), y=alt.Y(f"{field}:Q", title=axis_title), tooltip=["at:T", f"{field}:Q"]
    )
    if samples and "series" in samples[0]:
        encoding["color"] = alt.Color("series:N", title=None)
    return _base(samples, title).properties(height=180).mark_line(point=True).encode(**encoding).to_dict()
