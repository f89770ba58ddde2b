"""`totes report --out DIR`: the dashboard's business charts as a static page, SVG, PNG and CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from totes_cli.console import err, fail, out
from totes_cli.options import WarehouseOption
from totes_cli import bootstrap
from totes_cli.settings import load, resolve_warehouse


def report(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the report into (created if missing).")],
    warehouse: WarehouseOption = None,
    as_of: Annotated[
        Optional[str],
        typer.Option("--as-of", help="The warehouse as it was at this time (2024-11-15T14:00:00, UTC unless it says)."),
    ] = None,
    start: Annotated[
        Optional[str], typer.Option("--from", help="First day (orders' creation, payments' due day).")
    ] = None,
    end: Annotated[Optional[str], typer.Option("--to", help="Last day.")] = None,
    currency: Annotated[Optional[str], typer.Option("--currency", help="Only this currency (GBP, EUR, ...).")] = None,
) -> None:
    """Write the business charts (sales, designs, counterparties, purchases, payments due,
    delivery locations) as index.html plus one SVG, PNG and CSV per chart."""
    try:
        from dashboard import reading, views
        from dashboard.report import write_report
    except ImportError:
        from totes_cli.dashboard_cmd import MISSING_EXTRA

        raise fail(MISSING_EXTRA.format(command="report"), code=2) from None
    from cdc_reader.source import SourceConnectionError
    from warehouse_sync.read_copy import WarehouseBusy

    try:
        filters = views.parse_filters(start, end, currency, as_of)
    except views.FilterError as error:
        raise fail(str(error), code=2) from None
    location = resolve_warehouse(warehouse, bootstrap.home_warehouse(load().home))
    try:
        written = write_report(out_dir, reading.Warehouse(location), filters)
    except (reading.NoWarehouse, WarehouseBusy, SourceConnectionError) as error:
        raise fail(str(error), code=2) from None
    except OSError as error:
        raise fail(f"Cannot write the report into {out_dir}: {error.strerror or error}.", code=2) from None
    for files in written:
        err.print(f"{files.view}: {files.rows} rows")
    out.print(str(out_dir / "index.html"))
