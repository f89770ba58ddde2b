"""`totes lake ...` and `totes query`: look into the lake (and the warehouse) with DuckDB."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich import box
from rich.table import Table

from change_events import format_lsn
from lake.retention import DEFAULT_RETENTION, RetentionError, format_retention, parse_retention
from totes_cli.console import err, fail, out
from totes_cli.options import LakeOption, OutputFormat
from totes_cli.query_session import open_session, parse_as_of
from totes_cli.settings import load
from totes_cli.status_cmd import human_bytes, lake_table_name

if TYPE_CHECKING:  # the lake's libraries load in the commands that use them: `--help` stays light
    from lake.layout import LakeLayout

app = typer.Typer(help="Look into the lake: versions, dead letters, maintenance.", no_args_is_help=True)

LimitOption = Annotated[int, typer.Option("--limit", min=1, help="Show at most this many, the newest.")]


def _layout(lake: str | None) -> LakeLayout:
    from lake.layout import LakeLayout

    lake = lake or load().lake_location
    if "://" not in lake and not Path(lake).is_dir():
        raise fail(
            f"There is no lake at {lake}: run the pipeline first (totes run or totes demo), or point "
            "--lake (TOTES_LAKE) at it.",
            code=2,
        )
    return LakeLayout(lake)


def _qualified(layout: LakeLayout, table: str) -> str:
    from lake.layout import CHANGES

    known = layout.tables(CHANGES)
    for name in known:
        if table in (name, name.partition(".")[2]):
            return name
    raise fail(f"The lake has no table {table!r}; it has: {', '.join(known) or 'none yet'}.", code=2)


def narrow_table(title: str, *names: str) -> Table:
    """A table that stays readable at 80 columns: cells fold instead of being cut off."""
    view = Table(*names, title=title, title_justify="left")
    for column in view.columns:
        column.overflow = "fold"
    return view


def rows_view(title: str, names: list[str], rows: list[tuple], width: int):
    """Rows as a table when they fit in `width` columns, else one record after another, a
    line per column (as psql's expanded display), so that no header is cut into pieces."""
    cells = [["" if value is None else str(value) for value in row] for row in rows]
    needed = sum(max([len(name), *(len(row[i]) for row in cells)]) + 3 for i, name in enumerate(names)) + 1
    if needed <= width or not cells:
        view = narrow_table(title, *names)
        for row in cells:
            view.add_row(*row)
        return view
    records = Table(title=title, title_justify="left", show_header=False, box=box.SIMPLE, pad_edge=False)
    records.add_column(style="bold", overflow="fold", min_width=min(max(map(len, names)), width // 2))
    records.add_column(overflow="fold")
    for number, row in enumerate(cells, start=1):
        records.add_row(f"-- row {number}", "", end_section=False)
        for name, value in zip(names, row):
            records.add_row(name, value)
        records.add_section()
    return records


def _shown_of(count: int, limit: int) -> str:
    return f" (the newest {limit} of {count:,}; --limit shows more)" if count > limit else ""


@app.command()
def history(
    table: Annotated[str, typer.Argument(help="Source table, e.g. sales_order.")],
    lake: LakeOption = None,
    changes: Annotated[
        bool, typer.Option("--changes", help="The change log's versions instead of the state table's.")
    ] = False,
    limit: LimitOption = 20,
) -> None:
    """The Delta versions of a lake table: when, what, and which source LSNs each covered."""
    from lake.timetravel import history as lake_history

    layout = _layout(lake)
    name = _qualified(layout, table)
    commits = lake_history(layout, name, "changes" if changes else "tables")
    view = narrow_table(f"{'changes' if changes else 'tables'}/{name}{_shown_of(len(commits), limit)}")
    for column in ("version", "time (UTC)", "operation", "shard", "source LSNs", "rows"):
        view.add_column(column, overflow="fold")
    for commit in commits[-limit:]:
        lsns = "" if commit.lsn_min is None else f"{format_lsn(commit.lsn_min)} .. {format_lsn(commit.lsn_max)}"
        view.add_row(
            str(commit.version),
            f"{commit.timestamp:%Y-%m-%d %H:%M:%S}",
            commit.operation,
            commit.shard or "",
            lsns,
            "" if commit.rows is None else f"{commit.rows:,}",
        )
    out.print(view)


@app.command("dead-letters")
def dead_letters(
    lake: LakeOption = None,
    redrive: Annotated[
        bool, typer.Option("--redrive", help="Decode and write each one again; those that land are marked re-driven.")
    ] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Also list those already re-driven.")] = False,
    limit: LimitOption = 50,
) -> None:
    """Records the pipeline could not store, with the reason; re-drive them after a fix."""
    from change_events import CodecError, decode
    from lake.dead_letters import DeadLetters
    from lake.writer import LakeWriter

    layout = _layout(lake)
    letters = DeadLetters(layout)
    if redrive:
        writer = LakeWriter(layout)

        def write_again(letter) -> None:
            try:
                events = decode(letter.record).events
            except CodecError as error:
                raise ValueError(f"still undecodable: {error}") from None
            result = writer.write_batch(letter.shard or "redrive", list(events))
            if result.rejected:
                raise ValueError(str(result.rejected[0].error))

        report = letters.redrive(write_again)
        err.print(f"re-driven: {len(report.redriven)}, still failing: {len(report.failed)}")
        for letter_id, reason in report.failed.items():
            out.print(f"{letter_id}  {reason}")
        if report.failed:
            raise typer.Exit(1)
        return
    listed = letters.list(include_redriven=show_all)
    view = narrow_table(f"dead letters{_shown_of(len(listed), limit)}")
    for column in ("id", "failed at (UTC)", "shard", "sequence", "table", "bytes", "reason", "re-driven"):
        view.add_column(column, overflow="fold", ratio=3 if column == "reason" else None)
    for letter in listed[-limit:]:
        view.add_row(
            letter.id[:12],
            f"{letter.failed_at:%Y-%m-%d %H:%M:%S}",
            letter.shard or "",
            (letter.sequence_number or "")[-12:],
            letter.source_table or "",
            str(len(letter.record)),
            letter.reason,
            "" if letter.redriven_at is None else f"{letter.redriven_at:%H:%M:%S}",
        )
    out.print(view)


RetainOption = Annotated[
    str,
    typer.Option(
        "--retain",
        envvar="TOTES_RETAIN",
        help="Keep time travel by Delta version this long (24h, 90m, 7d; at least 1m); maintenance "
        "reclaims what older versions used. Time travel by source time or LSN works for any point.",
    ),
]


def retention_option(text: str):
    """`--retain` as a timedelta, or one sentence and exit code 2."""
    try:
        return parse_retention(text)
    except RetentionError as error:
        raise fail(str(error), code=2) from None


@app.command()
def maintain(lake: LakeOption = None, retain: RetainOption = format_retention(DEFAULT_RETENTION)) -> None:
    """Compact small files, checkpoint, clean up the log, and vacuum what no version inside the
    time-travel window uses. Safe while the pipeline runs."""
    from lake.maintenance import maintain as maintain_lake

    retention = retention_option(retain)
    layout = _layout(lake)
    view = narrow_table(
        f"maintenance (time travel kept for {format_retention(retention)})",
        "table",
        "files compacted",
        "files written",
        "files vacuumed",
        "version",
        "stored",
        "live",
    )
    for done in maintain_lake(layout, retention):
        size = done.size
        view.add_row(
            lake_table_name(done.uri),
            str(done.files_removed),
            str(done.files_added),
            str(len(done.vacuumed)),
            str(done.version),
            human_bytes(size.stored_bytes if size else None),
            human_bytes(size.live_bytes if size else None),
        )
    out.print(view)


# -- totes query -------------------------------------------------------------------------------
# The DuckDB session it opens is in totes_cli/query_session.py.


def _lake_and_warehouse(lake: str | None, warehouse: str | None, settings) -> tuple[str | None, str | None]:
    """The lake and the warehouse to query: those named (flag, TOTES_*, totes.toml) must be
    there; the defaults under TOTES_HOME are used when they are."""
    from totes_cli.status_cmd import missing_warehouse, no_warehouse_sentence

    named_warehouse = warehouse or (settings.warehouse.get_secret_value() if settings.warehouse else None)
    if named_warehouse and missing_warehouse(named_warehouse):
        raise fail(no_warehouse_sentence(named_warehouse), code=2)
    warehouse = named_warehouse or settings.warehouse_location
    lake = lake or settings.lake_location
    lake_there = "://" in lake or Path(lake).is_dir()
    if not lake_there and lake != str(settings.home / "lake"):  # a lake named, not the default
        raise fail(
            f"There is no lake at {lake}: run the pipeline first (totes run or totes demo), or point "
            "--lake (TOTES_LAKE) at it.",
            code=2,
        )
    if not lake_there and missing_warehouse(warehouse):
        raise fail(
            f"Nothing to query: there is no lake at {lake} and no warehouse at {warehouse}; create them "
            "with `totes run` (or `totes demo`), or point --lake and --warehouse at them.",
            code=2,
        )
    return (lake if lake_there else None), (None if missing_warehouse(warehouse) else warehouse)


DuckDBWarehouseOption = Annotated[
    Optional[str],
    typer.Option(
        "--warehouse",
        envvar="TOTES_WAREHOUSE",
        show_default=False,
        help="The warehouse DuckDB file \\[default: $TOTES_HOME/warehouse.duckdb].",
    ),
]
"""`totes query`'s --warehouse: DuckDB attaches a DuckDB file only, not a PostgreSQL warehouse."""
QueryAsOfOption = Annotated[
    Optional[str],
    typer.Option(
        "--as-of",
        help="Read as of a source TIMESTAMP or LSN (every lake table and the warehouse's facts: the source's state then), or a Delta VERSION (each lake state table's own).",
    ),
]
"""`totes query`'s --as-of: a moment of the source or a Delta version (see `query`)."""


def query(
    sql: Annotated[
        Optional[str], typer.Argument(help="SQL (DuckDB dialect) over the lake's tables and the warehouse.")
    ] = None,
    example: Annotated[
        Optional[str], typer.Option("--example", help="Run a named query instead (see --examples).")
    ] = None,
    examples: Annotated[bool, typer.Option("--examples", help="List the named queries.")] = False,
    lake: LakeOption = None,
    warehouse: DuckDBWarehouseOption = None,
    as_of: QueryAsOfOption = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="How to print the rows.")] = OutputFormat.table,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows to show in table format.")] = 100,
) -> None:
    """Query the lake (each source table by name, `changes_<table>` for its history) and the
    warehouse with DuckDB."""
    # --as-of a time or an LSN is the source's state then, the same in every table (see
    # open_session); the warehouse's dimensions keep their latest values. --as-of VERSION is
    # each lake state table's own Delta version: the lake's clock, and one version can hold
    # one shard's progress beyond another's.
    import duckdb

    from warehouse_sync.examples import EXAMPLES
    from warehouse_sync.read_copy import WarehouseBusy

    if examples:
        for name, (description, _) in EXAMPLES.items():
            out.print(f"{name:24} {description}")
        return
    if example is not None and not sql:  # SQL given wins over an example from totes.toml
        if example not in EXAMPLES:
            raise fail(f"No example {example!r}; there are: {', '.join(EXAMPLES)}.", code=2)
        sql = EXAMPLES[example][1]
    if not sql:
        raise fail("Give SQL to run, or --example NAME (--examples lists them).", code=2)
    settings = load()
    lake, warehouse = _lake_and_warehouse(lake, warehouse, settings)
    when = parse_as_of(as_of)
    if when is not None:
        from lake.layout import LakeLayout
        from lake.timetravel import AsOfError, check_as_of

        if not lake:
            raise fail(
                f"--as-of reads the lake, and there is none at {settings.lake_location}: run the pipeline "
                "first, or point --lake (TOTES_LAKE) at it.",
                code=2,
            )
        try:
            check_as_of(LakeLayout(lake), when)
        except AsOfError as error:
            raise fail(f"--as-of {as_of}: {error}", code=2) from None
    try:
        connection = open_session(lake, warehouse, when)
    except WarehouseBusy as error:
        raise fail(str(error), code=1) from None
    try:
        result = connection.execute(sql)
    except duckdb.Error as error:
        raise fail(str(error).splitlines()[0], code=2) from None
    names = [d[0] for d in result.description or []]
    rows = result.fetchall()
    if output is OutputFormat.json:
        out.print_json(json.dumps([dict(zip(names, row)) for row in rows], default=str))
    elif output is OutputFormat.csv:
        import csv
        import sys

        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(rows)
    else:
        title = f"{len(rows):,} rows" + (f" (first {limit}; --limit shows more)" if len(rows) > limit else "")
        out.print(rows_view(title, names, rows[:limit], out.width))
