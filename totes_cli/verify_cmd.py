"""`totes verify`: source = lake = warehouse at one source LSN, online (verify/)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from change_events import format_lsn, metrics
from totes_cli.console import err, fail, out
from totes_cli.options import LakeOption, SourceOption, StreamOption, WarehouseOption
from totes_cli import bootstrap
from totes_cli.settings import ConfigError
from cdc_reader.source import SourceConnectionError

if TYPE_CHECKING:
    from verify.core import Verification

DEFAULT_CHUNK_ROWS = 100_000  # verify.run.DEFAULT_CHUNK_ROWS, without importing pyarrow for --help
DEFAULT_TIMEOUT = 60.0


def emit_emf(result: Verification) -> None:
    """One CloudWatch embedded-metric-format line on stdout: rows compared and rows that differ
    (the "verify mismatch" alarm watches the second)."""
    metrics.emit_emf(
        "verify",
        ("VerifiedRows", "Count", sum(r.rows for r in result.reports)),
        ("MismatchedRows", "Count", result.mismatched),
    )


def summary(result: Verification) -> str:
    """One line: in sync, or which tables differ by how many rows."""
    if result.in_sync:
        return f"verified at {format_lsn(result.lsn)}: source, lake and warehouse in sync"
    differing = ", ".join(f"{r.table} ({r.side}) {r.mismatched:,}" for r in result.reports if not r.in_sync)
    return f"verified at {format_lsn(result.lsn)}: rows differ in {differing}: totes verify shows which"


def show(result: Verification) -> None:
    from rich.table import Table

    from verify.core import describe

    view = Table(title=f"verified at source LSN {format_lsn(result.lsn)}", title_justify="left")
    for name in ("table", "side", "at LSN", "rows", "chunks", "differing", "status"):
        view.add_column(name, justify="right" if name in ("rows", "chunks", "differing") else "left")
    for report in result.reports:
        status = "[green]in sync[/]" if report.in_sync else f"[red]{report.mismatched:,} rows differ[/]"
        view.add_row(
            report.table,
            report.side,
            format_lsn(report.lsn),
            f"{report.rows:,}",
            str(report.chunks),
            str(report.chunks_differing),
            status,
        )
    out.print(view)
    for report in result.reports:
        if not report.in_sync:
            out.print(
                f"[red]{report.table}[/] ({report.side}): {describe(report)}; "
                f"repair with `totes verify --repair {report.source}`"
            )


def verify(
    source: SourceOption = None,
    lake: LakeOption = None,
    warehouse: WarehouseOption = None,
    repair: Annotated[
        Optional[list[str]],
        typer.Option(
            "--repair",
            help="Read this source table again (through the reader's re-read, running the pipeline here: stop it first), then verify again (repeatable).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    emf: Annotated[
        bool,
        typer.Option(
            "--emf",
            help="Also print a CloudWatch embedded-metric-format line (rows compared, rows that differ) to stdout, for a scheduled task.",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", help="Seconds to wait for the lake and the warehouse to reach the verification's LSN."
        ),
    ] = DEFAULT_TIMEOUT,
    chunk_rows: Annotated[
        int,
        typer.Option(
            "--chunk-rows", min=1, help="About how many rows one key range holds (memory holds one range of one table)."
        ),
    ] = DEFAULT_CHUNK_ROWS,
    stream: StreamOption = bootstrap.STREAM,
    slot: Annotated[
        Optional[str],
        typer.Option(
            "--slot",
            envvar="TOTES_SLOT",
            help="The pipeline's replication slot, for --repair \\[default: the one remembered in a local lake].",
        ),
    ] = None,
) -> None:
    """Compare the source, the lake and the warehouse at one source LSN while everything runs:
    rows compared per table, and which keys differ and how. Exit 0 only when all match."""
    from verify.run import VerifyError, verify_between

    tables = bootstrap.source_tables()

    try:
        places = bootstrap.pipeline_places(source, lake, warehouse)  # the source compares by its policy
    except ConfigError as error:
        raise fail(str(error), code=2) from None
    unknown = [t for t in repair or () if t not in tables]
    if unknown:
        raise fail(f"--repair {unknown[0]} is not a source table: give one of {', '.join(tables)}.", code=2)
    try:
        if repair:
            from verify.repair import repair as run_repair, verify_with_pipeline

            config = places.config(stream=stream, slot=slot)
            found = verify_with_pipeline(config, tables, timeout=timeout, chunk_rows=chunk_rows)
            if not as_json:
                show(found)
            result = run_repair(config, list(repair), found, timeout=timeout, chunk_rows=chunk_rows, all_tables=tables)
            if not as_json:
                err.print(f"re-read {', '.join(repair)}; verified again:")
        else:
            result = verify_between(places, tables, chunk_rows=chunk_rows, timeout=timeout)
    except (VerifyError, SourceConnectionError) as error:
        raise fail(str(error), code=2) from None
    if emf:
        emit_emf(result)
    if as_json:
        out.print_json(json.dumps(result.as_dict(), default=str))
    else:
        show(result)
    if not result.in_sync:
        raise typer.Exit(1)
