"""`totes verify --repair TABLE`: read a diverged table again, then verify again.

The re-read is the reader's own (`--resnapshot` with a lake: cdc_reader/bulk_reread.py):
the pipeline is started here with that table to re-read, so the table's rows at a new LSN
L_r go straight into the lake as `op='r'` rows, no watermark passes L_r before all of them
are written, and the warehouse syncs them like any other events. Newer rows win everywhere
downstream, so a missing, stale or edited row is replaced.

A re-read brings back what the source has; it cannot remove what the source lacks. So,
first, keys a side holds that the source did not (extra) are removed:
- from the lake, by delete events at the source's current WAL position X (below L_r: a row
  inserted meanwhile comes back with the re-read), in shard `REPAIR_SHARD`;
- from the warehouse, the fact version live at the verified LSN, or the dimension row.

The pipeline must not be running (it owns the slot and the warehouse): this starts it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import date

from change_events import ChangeEvent, Op
from lake.layout import LakeLayout
from lake.writer import LakeWriter
from cdc_reader.source import connect, current_wal_lsn
from verify.core import TableReport, Verification
from verify.run import VerifyError, verify_between
from warehouse_sync.as_of import fact_rows_as_of
from warehouse_sync.schema import BY_NAME, DIM_DATE, quote_identifier as q

REPAIR_SHARD = "verify-repair"
"""`_shard` of the delete events a repair writes into the lake."""


def slot_in_use(dsn: str, slot: str) -> bool:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            row = cur.fetchone()
        return bool(row and row[0])
    finally:
        conn.close()


def remove_lake_extras(dsn: str, layout: LakeLayout, report: TableReport, schema_name: str = "public") -> int:
    """Delete events for the lake's extra keys of `report`; the number written."""
    if not report.extra:
        return 0
    from cdc_reader.catalog import read_table_schema

    conn = connect(dsn)
    try:
        schema = read_table_schema(conn, schema_name, report.source)
    finally:
        conn.close()
    key = schema.key_names[0]
    at = current_wal_lsn(dsn)
    events = [
        ChangeEvent(schema, Op.DELETE, at, seq, None, None, {key: str(value)}, None, {key: str(value)})
        for seq, value in enumerate(report.extra)
    ]
    LakeWriter(layout).write_batch(REPAIR_SHARD, events)
    return len(events)


def _literal(key) -> str:
    """A key as SQL: an integer through int(), a day (dim_date's) as a DATE literal of its ISO form."""
    if isinstance(key, date):
        return f"DATE '{key.isoformat()}'"
    return str(int(key))


def remove_warehouse_extras(warehouse: str, report: TableReport) -> int:
    """Remove the warehouse's extra rows of `report`. dim_date's differing days go too: the
    sync adds a calendar's missing days again (with their values), never rewrites a present one."""
    gone = list(report.extra) + (list(report.different) if report.table == DIM_DATE.name else [])
    if not gone:
        return 0
    from warehouse_sync import open_target

    table = BY_NAME[report.table]
    keys = ", ".join(_literal(k) for k in gone)
    target = open_target(warehouse)
    try:
        target.begin()
        if table.is_fact:
            live = fact_rows_as_of(table, report.lsn, where=f"{q(table.business_key or '')} IN ({keys})")
            target.execute(
                f"DELETE FROM {q(table.name)} WHERE {q(table.key)} IN (SELECT {q(table.key)} FROM ({live}) AS live)"
            )  # nosec B608 # names quoted by q(), keys int() or dates
        else:
            target.execute(f"DELETE FROM {q(table.name)} WHERE {q(table.key)} IN ({keys})")  # nosec B608 # names quoted by q(), keys int() or dates
        target.commit()
    finally:
        target.close()
    return len(gone)


class _Running:
    """A pipeline run in a thread of this process, for as long as a `with` block."""

    def __init__(self, config):
        from totes_cli.pipeline import Pipeline

        self.pipeline = Pipeline(config)
        self._thread = threading.Thread(target=self.pipeline.run, name="verify-pipeline", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self.pipeline

    def __exit__(self, *exc) -> None:
        self.pipeline.stop.set()
        self._thread.join(120)

    def check(self) -> None:
        if self.pipeline.errors or not self._thread.is_alive():
            stage, error = self.pipeline.errors[0] if self.pipeline.errors else ("pipeline", "it stopped")
            raise VerifyError(f"the {stage} stopped during the repair: {error}")


def _refuse_if_running(config) -> None:
    from totes_cli.bootstrap import remembered_slot

    slot = remembered_slot(config.lake, config.slot)
    if slot_in_use(config.source_dsn, slot):
        raise VerifyError(
            f"the pipeline is running (its slot {slot} is in use)",
            fix="stop it, then repair, which runs the pipeline itself while it re-reads.",
        )


def verify_with_pipeline(config, tables: tuple[str, ...], *, timeout: float, chunk_rows: int) -> Verification:
    """Verify while a pipeline started here for it runs (none runs elsewhere)."""
    _refuse_if_running(config)
    running = _Running(config)
    with running:
        return verify_between(config, tables, chunk_rows=chunk_rows, timeout=timeout)


def repair(
    config, tables: list[str], found: Verification, *, timeout: float, chunk_rows: int, all_tables: tuple[str, ...]
) -> Verification:
    """Repair `tables` (source table names) of `found` through a pipeline run with `config`
    (a PipelineConfig), then verify every table again while it runs."""
    _refuse_if_running(config)
    layout = LakeLayout(config.lake)
    for report in found.reports:
        if report.source in tables:
            if report.side == "lake":
                remove_lake_extras(config.source_dsn, layout, report)
            else:
                remove_warehouse_extras(config.warehouse, report)
    running = _Running(dataclasses.replace(config, resnapshot=tuple(tables)))
    with running as pipeline:
        wanted = {f"public.{t}" for t in tables}
        deadline = time.monotonic() + max(timeout, 60.0) * max(1, len(tables))
        while not (pipeline.reader is not None and wanted <= set(pipeline.reader.reread)):
            running.check()
            if time.monotonic() > deadline:
                raise VerifyError("the re-read did not finish in time", fix="run the repair again (it starts over).")
            time.sleep(0.2)
        return verify_between(config, all_tables, chunk_rows=chunk_rows, timeout=timeout)
