"""`totes run --until-caught-up` when there is nothing to catch up: answered in the time it
takes to ask, without starting the local Kinesis, the processor or the sync.

The warehouse holds everything committed before now when all of this holds:
* the lake's reader state says its snapshot was handed on whole and nothing is being read
  again (and, if the reader did not see the snapshot durable before it stopped, the
  warehouse's checkpoint is at or past the snapshot's LSN: the warehouse has it);
* the warehouse's checkpoint is at or past the marker of a shard the processor has read
  (so at or past the lake watermark, the minimum over shards: the lake holds nothing the
  warehouse has not taken);
* the slot holds no change of our tables committed before now (cdc_reader.pending marks
  "now" with a message of its own, then peeks up to it);
  what the slot gave before its confirmed position is in the lake, since it is confirmed only
  up to the lake watermark, and Kinesis holds only events after that position.
Anything unusual (a first run, a reset, a lake in S3, a slot in use) answers "no" and the
ordinary pipeline runs. When the answer is "yes" the slot is moved up to now, so an idle
pipeline run on a schedule still lets PostgreSQL recycle its WAL.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from totes_cli.bootstrap import PUBLICATION, SCHEMA, StatePaths, source_tables

log = logging.getLogger("totes.catch_up")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _snapshot_needed(paths: StatePaths, slot: str) -> int | None:
    """The LSN the warehouse must have reached for the reader's snapshot to be in it (0 once
    the reader saw it durable), or None while the reader has reading left to do."""
    state = _json(paths.reader_state(slot))
    if state.get("slot") != slot or state.get("rereads") or state.get("schema_rereads") or state.get("table_rereads"):
        return None
    if state.get("snapshot_done") is True:
        return 0
    # Handed on whole, but the run ended before the reader saw it in the lake.
    snapshot_lsn = state.get("snapshot_lsn")
    return snapshot_lsn if state.get("snapshot_published") is True and isinstance(snapshot_lsn, int) else None


def _warehouse_has_the_lake(lake: str, warehouse: str, shards: list[str], at_least: int) -> bool:
    from lake.layout import LakeLayout
    from lake.progress import Progress
    from warehouse_sync.position import checkpoint_lsn
    from warehouse_sync.targets import is_postgres_dsn, open_target

    if not is_postgres_dsn(warehouse) and not Path(warehouse).expanduser().is_file():
        return False
    marker = max(Progress(LakeLayout(lake)).marker(shard) for shard in shards)
    target = open_target(warehouse)
    try:
        checkpoint = checkpoint_lsn(target)
        return 0 < marker <= checkpoint and at_least <= checkpoint
    finally:
        target.close()


def nothing_to_catch_up(
    *,
    source_dsn: str,
    lake: str,
    warehouse: str,
    stream: str,
    publication: str = PUBLICATION,
    schema: str = SCHEMA,
    tables: tuple[str, ...] | None = None,
) -> int | None:
    """The source's LSN of now when everything committed before it is in the warehouse
    already (see the module's docstring; the slot has then been moved up to it), else None."""
    from cdc_reader.pending import nothing_new
    from cdc_reader.source import connect

    paths = StatePaths(lake)
    if paths.local is None:
        return None
    slot = _json(paths.names).get("slot")  # the pipeline's own choice, kept in the lake
    shards = sorted(_json(paths.offsets(stream)))
    snapshot = _snapshot_needed(paths, slot) if isinstance(slot, str) else None
    if snapshot is None or not shards:
        return None
    try:
        if not _warehouse_has_the_lake(lake, warehouse, shards, snapshot):
            return None
        conn = connect(source_dsn, application_name="totes-run")
        try:
            conn.autocommit = True
            return nothing_new(
                conn, slot=slot, publication=publication, schema=schema, tables=tables or source_tables()
            )
        finally:
            conn.close()
    except Exception as error:  # noqa: BLE001 - any doubt: the ordinary pipeline finds out
        log.info("catch-up check inconclusive (%s): running the pipeline", type(error).__name__)
        return None
