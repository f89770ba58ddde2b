"""`totes lake ...` and `totes query`: look into the lake (and the warehouse) with DuckDB."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import duckdb
import typer
from rich.table import Table

from change_events import CodecError, decode, format_lsn, parse_lsn
from lake.dead_letters import DeadLetters
from lake.layout import CHANGES, LakeLayout, table_name
from lake.maintenance import DEFAULT_RETENTION, RetentionError, format_retention, parse_retention
from lake.maintenance import maintain as maintain_lake
from lake.timetravel import history as lake_history, register_duckdb, state_as_of_lsn
from lake.writer import LakeWriter
from totes_cli.console import err, fail, out
from totes_cli.settings import load
from totes_cli.status_cmd import human_bytes, lake_table_name
from warehouse_sync.schema import quote_identifier as q, quote_literal

app = typer.Typer(help="Look into the lake: versions, dead letters, maintenance.", no_args_is_help=True)

LakeOption = Annotated[Optional[str], typer.Option("--lake", envvar="TOTES_LAKE", help="The lake: a folder or s3://bucket/prefix.")]
_LSN = re.compile(r"^[0-9A-Fa-f]+/[0-9A-Fa-f]+$")


def _layout(lake: str | None) -> LakeLayout:
    if not lake:
        raise fail("No lake: pass --lake DIR (or s3://bucket/prefix) or set TOTES_LAKE.", code=2)
    if "://" not in lake and not Path(lake).is_dir():
        raise fail(f"There is no lake at {lake}: run the pipeline first, or fix --lake.", code=2)
    return LakeLayout(lake)


def _qualified(layout: LakeLayout, table: str) -> str:
    known = layout.tables(CHANGES)
    for name in known:
        if table in (name, name.partition(".")[2]):
            return name
    raise fail(f"The lake has no table {table!r}; it has: {', '.join(known) or 'none yet'}.", code=2)


@app.command()
def history(table: Annotated[str, typer.Argument(help="Source table, e.g. sales_order.")], lake: LakeOption = None,
            changes: Annotated[bool, typer.Option("--changes", help="The change log's versions instead of the state table's.")] = False) -> None:
    """The Delta versions of a lake table: when, what, and which source LSNs each covered."""
    layout = _layout(lake)
    name = _qualified(layout, table)
    view = Table(title=f"{'changes' if changes else 'tables'}/{name}", title_justify="left")
    for column in ("version", "time (UTC)", "operation", "shard", "source LSNs", "rows"):
        view.add_column(column)
    for commit in lake_history(layout, name, "changes" if changes else "tables"):
        lsns = "" if commit.lsn_min is None else f"{format_lsn(commit.lsn_min)} .. {format_lsn(commit.lsn_max)}"
        view.add_row(str(commit.version), f"{commit.timestamp:%Y-%m-%d %H:%M:%S}", commit.operation,
                     commit.shard or "", lsns, "" if commit.rows is None else f"{commit.rows:,}")
    out.print(view)


@app.command("dead-letters")
def dead_letters(lake: LakeOption = None,
                 redrive: Annotated[bool, typer.Option("--redrive", help="Decode and write each one again; those that land are marked re-driven.")] = False,
                 show_all: Annotated[bool, typer.Option("--all", help="Also list those already re-driven.")] = False) -> None:
    """Records the pipeline could not store, with the reason; re-drive them after a fix."""
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
    view = Table(title="dead letters", title_justify="left")
    for column in ("id", "failed at (UTC)", "shard", "sequence", "table", "bytes", "reason", "re-driven"):
        view.add_column(column)
    for letter in letters.list(include_redriven=show_all):
        view.add_row(letter.id[:12], f"{letter.failed_at:%Y-%m-%d %H:%M:%S}", letter.shard or "",
                     (letter.sequence_number or "")[-12:], letter.source_table or "", str(len(letter.record)),
                     letter.reason, "" if letter.redriven_at is None else f"{letter.redriven_at:%H:%M:%S}")
    out.print(view)


RetainOption = Annotated[str, typer.Option(
    "--retain", envvar="TOTES_RETAIN",
    help="Keep time travel by Delta version or time this long (24h, 90m, 7d; at least 1m); maintenance "
         "reclaims what older versions used. Time travel by source LSN works for any LSN.")]


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
    retention = retention_option(retain)
    layout = _layout(lake)
    view = Table("table", "files compacted", "files written", "files vacuumed", "version", "stored", "live",
                 title=f"maintenance (time travel kept for {format_retention(retention)})", title_justify="left")
    for done in maintain_lake(layout, retention):
        size = done.size
        view.add_row(lake_table_name(done.uri), str(done.files_removed),
                     str(done.files_added), str(len(done.vacuumed)), str(done.version),
                     human_bytes(size.stored_bytes if size else None), human_bytes(size.live_bytes if size else None))
    out.print(view)


# -- totes query -------------------------------------------------------------------------------

def parse_as_of(text: str | None):
    """VERSION (an integer), a source LSN (like 0/16B3748) or an ISO timestamp."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    if _LSN.match(text):
        return ("lsn", parse_lsn(text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--as-of {text!r} is neither a version (12), an LSN (0/16B3748) nor a time "
                   "(2024-11-15T14:00:00).", code=2) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def open_session(lake: str | None, warehouse: str | None, as_of=None) -> duckdb.DuckDBPyConnection:
    """A DuckDB session where every lake table is a view named after it (its current rows, or
    as of a version, time or LSN), its change log is `changes_<table>`, and the warehouse's
    tables are visible by name."""
    connection = duckdb.connect()
    if lake:
        layout = LakeLayout(lake)
        for table in layout.tables(CHANGES):
            short = table.partition(".")[2] or table  # the schema holds no dot (as the reader assumes)
            register_duckdb(connection, layout, table, CHANGES, name=f"changes_{short}")
            try:
                if isinstance(as_of, tuple):
                    connection.register(f"_state_{short}", state_as_of_lsn(layout, table, as_of[1]))
                    connection.execute(f"CREATE VIEW {q(short)} AS SELECT * FROM {q(f'_state_{short}')}")  # nosec B608 # view and table names quoted by q()
                    continue
                register_duckdb(connection, layout, table, name=f"_state_{short}",
                                version=as_of if isinstance(as_of, int) else None,
                                as_of=as_of if isinstance(as_of, datetime) else None)
            except Exception as error:  # e.g. TableNotInLake, or no such version/time
                err.print(f"[dim]{table}: not available as of {as_of} ({type(error).__name__})[/]")
                continue
            columns = [c for c in connection.execute(f"DESCRIBE {q(f'_state_{short}')}").fetchall()]
            visible = ", ".join(q(name) for name, *_ in columns if not name.startswith("_"))
            connection.execute(f"CREATE VIEW {q(short)} AS SELECT {visible} FROM {q(f'_state_{short}')} WHERE NOT _deleted")  # nosec B608 # view, column and table names quoted by q()
    if warehouse and Path(warehouse).exists():
        connection.execute(f"ATTACH {quote_literal(warehouse)} AS warehouse (READ_ONLY)")
        connection.execute("SET search_path = 'memory.main,warehouse.main'")
    return connection


def query(
    sql: Annotated[Optional[str], typer.Argument(help="SQL (DuckDB dialect) over the lake's tables and the warehouse.")] = None,
    example: Annotated[Optional[str], typer.Option("--example", help="Run a named query instead (see --examples).")] = None,
    examples: Annotated[bool, typer.Option("--examples", help="List the named queries.")] = False,
    lake: LakeOption = None,
    warehouse: Annotated[Optional[str], typer.Option("--warehouse", envvar="TOTES_WAREHOUSE", help="The warehouse DuckDB file.")] = None,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Read the lake as of a Delta VERSION, a TIMESTAMP or a source LSN.")] = None,
    output: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    limit: Annotated[int, typer.Option("--limit", help="Rows to show in table format.")] = 100,
) -> None:
    """Query the lake (each source table by name, `changes_<table>` for its history) and the
    warehouse with DuckDB."""
    from warehouse_sync.examples import EXAMPLES

    if examples:
        for name, (description, _) in EXAMPLES.items():
            out.print(f"{name:24} {description}")
        return
    if example is not None:
        if example not in EXAMPLES:
            raise fail(f"No example {example!r}; there are: {', '.join(EXAMPLES)}.", code=2)
        sql = EXAMPLES[example][1]
    if not sql:
        raise fail("Give SQL to run, or --example NAME (--examples lists them).", code=2)
    home = load().home
    if not lake and not warehouse:
        lake = lake or (str(home / "lake") if (home / "lake").is_dir() else None)
        warehouse = str(home / "warehouse.duckdb") if (home / "warehouse.duckdb").exists() else None
    if not lake and not warehouse:
        raise fail("Nothing to query: pass --lake and/or --warehouse (or set TOTES_LAKE / TOTES_WAREHOUSE), "
                   "or run the pipeline first (totes demo / totes run).", code=2)
    connection = open_session(lake, warehouse, parse_as_of(as_of))
    try:
        result = connection.execute(sql)
    except duckdb.Error as error:
        raise fail(str(error).splitlines()[0], code=2) from None
    names = [d[0] for d in result.description or []]
    rows = result.fetchall()
    if output == "json":
        out.print_json(json.dumps([dict(zip(names, row)) for row in rows], default=str))
    elif output == "csv":
        import csv
        import sys

        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(rows)
    else:
        view = Table(*names, title=f"{len(rows):,} rows" + (f" (first {limit})" if len(rows) > limit else ""),
                     title_justify="left")
        for row in rows[:limit]:
            view.add_row(*("" if v is None else str(v) for v in row))
        out.print(view)
