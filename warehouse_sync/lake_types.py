"""The mirrors follow the lake's widened column types, read once per change-log version."""

from __future__ import annotations

import logging

import polars as pl
from lake.change_feed import ChangeLog
from lake.layout import LakeLayout
from warehouse_sync import schema as wh_schema
from warehouse_sync.schema import SOURCES
from warehouse_sync.targets import Target

log = logging.getLogger("totes.sync")

_LAKE_TYPES: dict[str, tuple[ChangeLog, int, dict[str, pl.DataType]]] = {}
"""Change log URI → (its change log, the version read, its column types then)."""


def _lake_types(layout: LakeLayout, uri: str, tables: dict | None) -> dict[str, pl.DataType] | None:
    """The column types of the change log at `uri` (None: no such table yet). A continuous
    sync's table (in `tables`, see lake_source) is brought up to date here, once for both."""
    feed = tables.get(uri) if tables is not None else None
    known = _LAKE_TYPES.get(uri)
    change_log = feed.log if feed is not None else known[0] if known is not None else ChangeLog.open(layout, uri)
    if change_log is None:
        return None
    if change_log.moved_on():
        change_log.update()
    if known is None or known[0] is not change_log or known[1] != change_log.version:
        known = _LAKE_TYPES[uri] = (
            change_log,
            change_log.version,
            dict(pl.DataFrame(change_log.schema().empty_table()).schema),
        )
    return known[2]


def opened_change_logs() -> dict:
    """Change log URI → its change log, as the last `follow_lake_types` brought it up to date."""
    return {uri: known[0] for uri, known in _LAKE_TYPES.items()}


def follow_lake_types(target: Target, layout: LakeLayout, tables: dict | None = None) -> None:
    """Widen the mirror columns whose lake column was widened (schema.widened_mirror): in
    SOURCES, which the reads and replays take their types from, and in the target's tables
    where they are still narrower (another process, or a rolled-back sync, may have widened
    SOURCES already)."""
    for source, mirror in wh_schema.BASE_SOURCES.items():
        types = _lake_types(layout, layout.changes_uri(f"public.{source}"), tables)
        if types is None:
            SOURCES[source] = mirror
            continue
        widened, changed = wh_schema.widened_mirror(mirror, types)
        SOURCES[source] = widened
        if not changed:
            continue
        present = _column_types(target, widened.name)
        for column in changed:
            if present.get(column.name) != column.type:
                target.execute(wh_schema.alter_column_type(widened, column, target.dialect))
                log.warning(
                    "%s.%s is now %s, as the lake's %s column is", widened.name, column.name, column.type, source
                )


def _column_types(target: Target, table: str) -> dict[str, str]:
    """The logical types (schema.TYPES names, or 'decimal(p,s)') of `table`'s columns."""
    frame = target.query(
        "SELECT column_name, data_type, numeric_precision, numeric_scale FROM information_schema.columns "  # nosec B608 # the table name is a quoted literal
        f"WHERE table_name = {wh_schema.quote_literal(table)}"
    )
    return {row[0]: wh_schema.logical_of(*row[1:]) for row in frame.rows()}


def widen_for_lake(target: Target, layout: LakeLayout, tables: dict | None) -> None:
    """Widen the mirrors as the lake's columns were, before the events are read in the
    mirrors' types (a wider column holds the same values: no need to wait for the sync)."""
    target.begin()
    try:
        follow_lake_types(target, layout, tables)
        target.commit()
    except BaseException:
        target.rollback()
        raise
