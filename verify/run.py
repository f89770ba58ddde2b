"""`totes verify` put together: source snapshot → wait for the lake (and warehouse) → compare.

Tables are read chunk by chunk (one key range of the source, the lake and the fact table at
a time), so memory holds one chunk of one table, whatever the table's size; dimensions are
whole tables (the transforms join them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cdc_reader.personal_data import NO_POLICY, Policy
from change_events import format_lsn
from lake.layout import LakeLayout
from lake.timetravel import lake_watermark
from verify.core import TableReport, Verification, align, compare_chunk
from verify.lake_side import lake_chunk
from verify.source import SourceSnapshot
from verify import warehouse_side as wh
from warehouse_sync.transforms import DIMENSION_BY_NAME
from change_events.errors import Kind, TotesError

DEFAULT_CHUNK_ROWS = 100_000
DEFAULT_TIMEOUT = 60.0


class VerifyError(TotesError, RuntimeError):
    """Verification could not run; str() is one sentence naming the fix."""

    kind = Kind.CONFIGURATION


def wait_until(
    reached: Callable[[], int | None], lsn: int, timeout: float, what: str, stop: threading.Event | None = None
) -> int:
    """Wait until `reached()` is at or past `lsn`; return it, or raise VerifyError (also
    when `stop` is set: the pipeline that runs the verification is stopping)."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        at = reached()
        if at is not None and at >= lsn:
            return at
        if stop.is_set():
            raise VerifyError("the verification was stopped before the lake reached its LSN.")
        if time.monotonic() >= deadline:
            shown = "nothing yet" if at is None else format_lsn(at)
            raise VerifyError(
                f"the {what} is at {shown}, short of the verification's LSN {format_lsn(lsn)} after "
                f"{timeout:g} s: is the pipeline running? Start it (totes run), or wait longer (--timeout)."
            )
        stop.wait(0.2)


def verify(
    dsn: str,
    lake: str,
    warehouse: str | None,
    tables: tuple[str, ...],
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    timeout: float = DEFAULT_TIMEOUT,
    schema: str = "public",
    on_table: Callable[[TableReport], None] | None = None,
    stop: threading.Event | None = None,
    policy: Policy = NO_POLICY,
) -> Verification:
    layout = LakeLayout(lake)
    reports: list[TableReport] = []

    def done(report: TableReport) -> None:
        reports.append(report)
        if on_table is not None:
            on_table(report)

    with SourceSnapshot(dsn, schema, policy) as source:
        lsn = source.lsn
        wait_until(lambda: lake_watermark(layout), lsn, timeout, "lake watermark", stop)
        reader = None
        if warehouse:
            wait_until(lambda: _checkpoint(warehouse), lsn, timeout, "warehouse", stop)
            reader = wh.WarehouseReader(warehouse)
        try:
            present = reader.tables() if reader else set()
            for table in tables:
                table_schema = source.table_schema(table)
                qualified = table_schema.table
                lake_report = TableReport(qualified, "lake", table, lsn)
                spec = wh.fact_spec(table)
                fact_report = (
                    TableReport(spec.table.name, "warehouse", table, lsn)
                    if spec is not None and spec.table.name in present
                    else None
                )
                for key, chunk, rows in source.chunks(table_schema, chunk_rows):
                    held = lake_chunk(layout, qualified, key, chunk, lsn)
                    if held is None:
                        lake_report.note = "not in the lake"
                        lake_report.rows += rows.num_rows
                        lake_report.missing += rows.column(key).to_pylist()
                    else:
                        columns = [c for c in rows.column_names if c in held.column_names]
                        compare_chunk(
                            lake_report,
                            key,
                            columns,
                            align(rows, held.schema, columns),
                            align(held, held.schema, columns),
                        )
                    if fact_report is not None and spec is not None:
                        expected = wh.expected_facts(spec, rows, lsn)
                        actual = wh.actual_facts(reader, spec, chunk, lsn)  # type: ignore[arg-type]
                        compare_chunk(
                            fact_report,
                            spec.business_key,
                            expected.column_names,
                            expected,
                            align(actual, expected.schema, expected.column_names),
                        )
                done(lake_report)
                if fact_report is not None:
                    done(fact_report)
            warehouse_lsn = None
            if reader is not None:
                warehouse_lsn = reader.checkpoint()
                for name, dimension in DIMENSION_BY_NAME.items():
                    if name not in present or not set(dimension.sources) <= set(tables):
                        continue
                    done(_dimension_report(layout, reader, name, warehouse_lsn or lsn, schema))
                if wh.DIM_DATE.name in present:
                    done(_calendar_report(reader, warehouse_lsn or lsn))
        finally:
            if reader is not None:
                reader.close()
    return Verification(lsn, reports, warehouse_lsn)


def verify_between(ends, tables: tuple[str, ...], **options) -> Verification:
    """`verify` of the source, lake and warehouse a pipeline runs between (its `PipelineConfig`,
    or `totes_cli.bootstrap.PipelinePlaces`), the source compared by the policy its reader
    applies; `options` are the rest of `verify`'s."""
    return verify(ends.source_dsn, ends.lake, ends.warehouse, tables, policy=ends.personal_data, **options)


def _dimension_report(layout: LakeLayout, reader: wh.WarehouseReader, name: str, at: int, schema: str) -> TableReport:
    table = wh.table(name)
    report = TableReport(
        name,
        "warehouse",
        wh.dimension_source(name),
        at,
        note="compared at the warehouse's checkpoint: dimensions hold the latest values",
    )
    expected = wh.expected_dimension(layout, name, at, schema)
    actual = wh.actual_dimension(reader, name)
    compare_chunk(report, table.key, table.names, expected, align(actual, expected.schema, table.names))
    kept = wh.referenced(reader, name, report.extra)
    report.extra = [k for k in report.extra if k not in kept]  # a deleted row's last values, still referenced
    return report


def _calendar_report(reader: wh.WarehouseReader, at: int) -> TableReport:
    """dim_date against the calendar the transform makes for the days the facts reference."""
    table = wh.table(wh.DIM_DATE.name)
    report = TableReport(
        table.name,
        "warehouse",
        wh.CALENDAR_SOURCE,
        at,
        note="a calendar: every day from its start to a year past the last sync, and every day a fact references",
    )
    actual = wh.actual_dimension(reader, table.name)
    last = actual.column(table.key).to_pylist()
    expected = wh.expected_calendar(wh.referenced_days(reader), max(last) if last else None)
    compare_chunk(report, table.key, table.names, expected, align(actual, expected.schema, table.names))
    return report


def _checkpoint(warehouse: str) -> int | None:

    try:
        reader = wh.WarehouseReader(warehouse)
    except Exception:  # noqa: BLE001 - not there yet, or being replaced: not synced as far as known
        return None
    try:
        return reader.checkpoint()
    finally:
        reader.close()
