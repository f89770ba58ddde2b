"""`totes status`: what every stage is doing right now.

The source: rows per table, its newest change, WAL position and the WAL each replication
slot holds back; what the reader last reported; the lake's watermark and its size (bytes
stored per table against the live bytes of each table's current version: their ratio is the
storage amplification that maintenance keeps bounded); the warehouse's position.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from totes_cli.console import fail, out
from totes_cli.options import LakeOption, OldDsnOption, SourceOption, WarehouseOption, source_or_old_name
from totes_cli.settings import ConfigError, NoSourceError, resolve_source_dsn, resolve_warehouse, shown
from cdc_reader.source import SourceConnectionError, connect, describe, scrub
from change_events import format_lsn
from totesys.stats import SourceSnapshot, read_source


def where(dsn: str) -> str:
    """A DSN for display: user@host:port/dbname, never the password."""
    d = describe(dsn)
    return f"{d.get('user')}@{d.get('host')}:{d.get('port')}/{d.get('dbname')}" if d else "(unparseable DSN)"


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def source_table(
    snapshot: SourceSnapshot, dsn: str, previous: SourceSnapshot | None = None, compact: bool = False
) -> Table:
    """Rows per table (with the change since `previous`, when given) and the slots; `compact`
    puts the tables side by side, two to a line, without borders (the demo's 80×24 view)."""
    elapsed = (snapshot.taken_at - previous.taken_at).total_seconds() if previous else 0.0
    table = Table(
        title=f"totesys source  {where(dsn)}",
        title_justify="left",
        expand=False,
        **({"box": box.SIMPLE_HEAD, "pad_edge": False, "show_edge": False} if compact else {}),
    )
    cells = []
    for name, count in snapshot.row_counts.items():
        cell = [name, f"{count:,}"]
        if previous:
            delta = count - previous.row_counts.get(name, count)
            cell.append(f"{delta:+,}" if delta else "")
        cells.append(cell)
    per_line = 2 if compact else 1
    for _ in range(per_line):
        table.add_column("table", no_wrap=True, overflow="ellipsis")
        table.add_column("rows", justify="right", no_wrap=True)
        if previous:
            table.add_column("Δ rows", justify="right", no_wrap=True)
    rows = -(-len(cells) // per_line)
    for line in range(rows):
        row = []
        for part in range(per_line):
            index = part * rows + line
            row += cells[index] if index < len(cells) else [""] * (3 if previous else 2)
        table.add_row(*row)
    wal_rate = ""
    if previous and elapsed > 0:
        wal_rate = f"  ({human_bytes(int((snapshot.wal_bytes - previous.wal_bytes) / elapsed))}/s)"
    newest = snapshot.latest_change.isoformat(sep=" ", timespec="milliseconds") if snapshot.latest_change else "-"
    if compact:
        newest = f"{snapshot.latest_change:%H:%M:%S.%f}"[:-3] if snapshot.latest_change else "-"
        table.caption = (
            f"PostgreSQL {snapshot.server_version.split()[0]}, WAL at {snapshot.wal_lsn}{wal_rate}, "
            f"newest change {newest}"
        )
    else:
        table.caption = (
            f"PostgreSQL {snapshot.server_version}, wal_level={snapshot.wal_level}, "
            f"WAL at {snapshot.wal_lsn}{wal_rate}, newest last_updated {newest}"
        )
    table.caption_justify = "left"
    return table


def slots_table(snapshot: SourceSnapshot) -> Table | None:
    if not snapshot.slots:
        return None
    table = Table(title="replication slots", title_justify="left")
    for column in ("slot", "active", "WAL retained", "confirmed"):
        table.add_column(column)
    for slot in snapshot.slots:
        table.add_row(
            slot.name,
            "yes" if slot.active else "no",
            human_bytes(slot.retained_wal_bytes),
            slot.confirmed_flush_lsn or "-",
        )
    return table


def reader_tables(home, lake: str | None = None) -> list[Table]:
    """What each reader last reported (its status file, under TOTES_HOME or the local lake)."""
    import time as _time

    from totes_cli.bootstrap import status_dirs
    from totes_cli.reader_status import STALE_SECONDS, read_statuses

    tables = []
    for slot, data in read_statuses(status_dirs(home, lake)).items():
        age = _time.time() - data.get("updated_at", 0)
        table = Table(
            title=f"reader  slot {slot}{'  (no report for %.0f s: not running?)' % age if age > STALE_SECONDS else ''}",
            title_justify="left",
        )
        for column in ("events", "events/s", "MiB/s", "confirmed LSN", "behind source", "events/record"):
            table.add_column(column, justify="right")
        behind = data.get("seconds_behind")
        table.add_row(
            f"{data.get('events', 0):,}",
            f"{data.get('events_per_second', 0):,.0f}",
            f"{data.get('bytes_per_second', 0) / 2**20:.2f}",
            data.get("confirmed_lsn", "-"),
            "-" if behind is None else f"{behind:.1f} s",
            f"{data.get('publisher', {}).get('events_per_record', 0):.0f}",
        )
        tables.append(table)
    return tables


def readers_json(home, lake: str | None) -> dict:
    """Per slot: the reader's events, events/s (since its previous report) and whether it runs."""
    from totes_cli.bootstrap import status_dirs
    from totes_cli.reader_status import read_statuses, running

    return {
        slot: {
            "events": data.get("events"),
            "snapshot_events": data.get("snapshot_events"),
            "events_per_second": data.get("events_per_second"),
            "confirmed_lsn": data.get("confirmed_lsn"),
            "updated_at": data.get("updated_at"),
            "running": running(data),
        }
        for slot, data in read_statuses(status_dirs(home, lake)).items()
    }


def lake_table(lake: str) -> Table | None:
    """The lake's watermark, per shard, and when each shard last passed a marker."""
    from lake.layout import LakeLayout
    from lake.progress import Progress

    if "://" not in lake and not Path(lake).is_dir():
        return None
    history = Progress(LakeLayout(lake)).history()
    if not history.num_rows:
        return None
    latest: dict[str, tuple[int, object]] = {}
    for row in history.to_pylist():
        latest[row["shard"]] = (row["marker_lsn"], row["recorded_at"])
    table = Table(
        title=f"lake  {lake}  watermark {format_lsn(min(m for m, _ in latest.values()))}", title_justify="left"
    )
    for column in ("shard", "marker passed", "recorded at (UTC)"):
        table.add_column(column)
    for shard, (marker, at) in sorted(latest.items()):
        table.add_row(shard, format_lsn(marker), f"{at:%Y-%m-%d %H:%M:%S}")
    return table


def lake_sizes(lake: str) -> list | None:
    """Stored and live bytes of every lake table (None when there is no lake there)."""
    from lake.layout import LakeLayout
    from lake.maintenance import lake_sizes as sizes

    if "://" not in lake and not Path(lake).is_dir():
        return None
    return sizes(LakeLayout(lake))


def lake_table_name(uri: str) -> str:
    """'changes/public.sales_order' or '_progress': a lake table's name inside the lake."""
    from lake.layout import KINDS, table_name

    parts = uri.rstrip("/").split("/")
    return f"{parts[-2]}/{table_name(parts[-1])}" if len(parts) > 1 and parts[-2] in KINDS else parts[-1]


def lake_size_table(lake: str, sizes: list) -> Table:
    """Per lake table and in total: bytes stored, live bytes, and their ratio."""
    table = Table(title=f"lake size  {lake}", title_justify="left")
    for column in ("table", "stored", "live", "stored/live", "files"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for size in sorted(sizes, key=lambda s: lake_table_name(s.uri)):
        ratio = size.amplification
        table.add_row(
            lake_table_name(size.uri),
            human_bytes(size.stored_bytes),
            human_bytes(size.live_bytes),
            "-" if ratio is None else f"{ratio:.1f}x",
            f"{size.files:,}",
        )
    stored, live = sum(s.stored_bytes for s in sizes), sum(s.live_bytes for s in sizes)
    table.add_row(
        "total",
        human_bytes(stored),
        human_bytes(live),
        f"{stored / live:.1f}x" if live else "-",
        f"{sum(s.files for s in sizes):,}",
        style="bold",
    )
    return table


def _sizes_json(sizes: list | None) -> dict | None:
    if sizes is None:
        return None
    stored, live = sum(s.stored_bytes for s in sizes), sum(s.live_bytes for s in sizes)
    return {
        "stored_bytes": stored,
        "live_bytes": live,
        "tables": {
            lake_table_name(s.uri): {"stored_bytes": s.stored_bytes, "live_bytes": s.live_bytes, "files": s.files}
            for s in sizes
        },
    }


def missing_warehouse(warehouse: str) -> bool:
    """A DuckDB warehouse file that is not there (a PostgreSQL DSN is never "missing")."""
    from warehouse_sync.targets import is_postgres_dsn

    return not is_postgres_dsn(warehouse) and not Path(warehouse).exists()


def no_warehouse_sentence(warehouse: str) -> str:
    return (
        f"There is no warehouse at {warehouse}: create it with `totes run` (or `totes sync` from a lake), "
        "or point --warehouse (TOTES_WAREHOUSE) at the right file."
    )


def warehouse_table(warehouse: str, source: SourceSnapshot | None) -> Table | None:
    """Where the warehouse is up to, and how far behind the source that is."""
    from warehouse_sync.position import checkpoint_lsn
    from warehouse_sync.schema import row_counts_sql
    from warehouse_sync.read_copy import connect_for_reading
    from warehouse_sync.targets import DuckDBTarget, is_postgres_dsn, open_target

    if not is_postgres_dsn(warehouse) and not Path(warehouse).exists():
        return None
    try:  # a DuckDB file read-only: itself, or the copy its writer publishes while one writes it
        target = (
            open_target(warehouse)
            if is_postgres_dsn(warehouse)
            else DuckDBTarget(warehouse, connection=connect_for_reading(warehouse))
        )
    except Exception as error:  # e.g. a running sync holds the DuckDB file
        table = Table(title=f"warehouse  {shown(warehouse)}", title_justify="left")
        table.add_column("state")
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        table.add_row(f"cannot open it now: {scrub(reason)}")
        return table
    try:
        lsn = checkpoint_lsn(target)
        counts = target.query(row_counts_sql(("fact_sales_order", "fact_purchase_order", "fact_payment")))
    except Exception:
        return None
    finally:
        target.close()
    behind = ""
    if source is not None and lsn:
        behind = f", {human_bytes(max(source.wal_bytes - lsn, 0))} of WAL behind the source"
    table = Table(title=f"warehouse  up to {format_lsn(lsn)}{behind}", title_justify="left")
    table.add_column("fact table")
    table.add_column("rows", justify="right")
    for name, count in zip(counts["t"].to_list(), counts["n"].to_list()):
        table.add_row(name, f"{count:,}")
    return table


def status(
    source: SourceOption = None,
    lake: LakeOption = None,
    warehouse: WarehouseOption = None,
    dsn: OldDsnOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Show the state of the pipeline: source rows, newest change, WAL and slot lag, then what
    the reader, the lake and the warehouse last reached. A source that cannot be reached is
    said in one sentence; the other stages are still shown, and the exit code is 1."""
    snapshot, problem = None, None
    dsn = source_or_old_name(source, dsn)
    try:
        dsn = resolve_source_dsn(dsn)
        conn = connect(dsn)
    except (NoSourceError, SourceConnectionError) as error:
        problem = str(error)
    else:
        try:
            snapshot = read_source(conn)
        finally:
            conn.close()
    from totes_cli.settings import load

    settings = load()
    home = settings.home
    lake = lake or settings.lake_location
    sizes = lake_sizes(lake)
    try:
        named_warehouse = warehouse is not None or settings.warehouse is not None
        warehouse = resolve_warehouse(warehouse, settings.warehouse_location)
    except ConfigError as error:
        raise fail(str(error), code=2) from None
    no_warehouse = no_warehouse_sentence(warehouse) if named_warehouse and missing_warehouse(warehouse) else None
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "lake_size": _sizes_json(sizes),
                    "source": None
                    if snapshot is None
                    else {
                        "where": where(dsn),
                        "server_version": snapshot.server_version,
                        "wal_level": snapshot.wal_level,
                        "wal_lsn": snapshot.wal_lsn,
                        "latest_change": snapshot.latest_change.isoformat() if snapshot.latest_change else None,
                        "rows": snapshot.row_counts,
                        "slots": [slot.__dict__ for slot in snapshot.slots],
                    },
                    "source_error": problem,
                    "readers": readers_json(home, lake),
                    "warehouse_error": no_warehouse,
                }
            )
        )
        if problem or no_warehouse:
            raise typer.Exit(1)
        return
    if snapshot is not None:
        out.print(source_table(snapshot, dsn))
        slots = slots_table(snapshot)
        if slots is not None:
            out.print(slots)
    for table in reader_tables(home, lake):
        out.print(table)
    for table in (
        lake_table(lake),
        lake_size_table(lake, sizes) if sizes else None,
        warehouse_table(warehouse, snapshot),
    ):
        if table is not None:
            out.print(table)
    if missing_warehouse(warehouse):
        if no_warehouse:
            raise fail(no_warehouse, code=1)
        out.print(f"warehouse  none yet at {warehouse}: `totes run` (or `totes sync`) creates it")
    if problem:
        raise fail(f"the source cannot be read: {problem}", code=1)
