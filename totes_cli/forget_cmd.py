"""`totes lake forget TABLE KEY...`: erase source rows' values from every version of the lake
and from the warehouse (lake/erasure.py, warehouse_sync/erasure.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from totes_cli.console import fail, out
from totes_cli.lake_cmd import _layout, _qualified
from totes_cli.options import LakeOption, WarehouseOption
from totes_cli.settings import ConfigError, load, resolve_warehouse
from totes_cli.writer_lock import LakeBusy, alone

LakeOnlyOption = Annotated[
    bool,
    typer.Option("--lake-only", help="Erase from the lake only, not the warehouse (e.g. one kept by another team)."),
]
"""Leaves the warehouse as it is: one kept by another team erases there itself."""


def forget(
    table: Annotated[str, typer.Argument(help="Source table, e.g. staff.")],
    keys: Annotated[
        list[str],
        typer.Argument(
            help="Primary key values of the rows to erase (a composite key: its values comma-separated, in key order)."
        ),
    ],
    lake: LakeOption = None,
    warehouse: WarehouseOption = None,
    lake_only: LakeOnlyOption = False,
) -> None:
    """Erase these rows' values from every version of the lake (change log and state: the
    files rewritten, the old ones vacuumed whatever the retention) and from the warehouse;
    record table, keys and time (never the values) in the lake's erasures. Refuses while the
    pipeline writes this lake (totes run, processor or sync): stop it first."""
    from lake.erasure import ErasureError
    from totes_cli.bootstrap import home_warehouse

    layout = _layout(lake)
    qualified = _qualified(layout, table)
    try:
        location = None if lake_only else resolve_warehouse(warehouse, home_warehouse(load().home))
    except ConfigError as error:
        raise fail(str(error), code=2) from None
    lake = lake or load().lake_location
    try:
        with alone(lake, load().home):
            _forget(layout, qualified, keys, location)
    except (LakeBusy, ErasureError) as error:
        raise fail(str(error), code=2) from None


def _forget(layout, qualified: str, keys: list[str], location: str | None) -> None:
    from lake.erasure import forget as forget_in_lake
    from warehouse_sync.erasure import forget_in_warehouse, rewrite_duckdb_file
    from warehouse_sync.targets import is_postgres_dsn, open_target

    erased = forget_in_lake(layout, qualified, keys)
    out.print(
        f"{qualified}: erased {erased.change_rows} change-log rows and {erased.state_rows} state rows "
        f"of {len(erased.keys)} keys from the lake ({erased.files_vacuumed} files vacuumed); recorded in "
        f"{layout.uri('erasures')}"
    )
    if location is None:
        return
    if not is_postgres_dsn(location) and not Path(location).exists():
        out.print(f"no warehouse at {location}: nothing to erase there")
        return
    target = open_target(location)
    try:
        touched = forget_in_warehouse(target, qualified.partition(".")[2], [",".join(k) for k in erased.keys])
    finally:
        target.close()
    if getattr(target, "dialect", None) == "duckdb":
        rewrite_duckdb_file(Path(location))
    out.print(f"warehouse: erased from {', '.join(touched)}")
