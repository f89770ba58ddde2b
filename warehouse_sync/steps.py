"""A slice's steps: mirrors replayed, dimensions upserted, facts closed and appended, gone dimensions deleted."""

from __future__ import annotations

import logging
from datetime import date
from typing import TYPE_CHECKING

import polars as pl
from warehouse_sync import bulk
from warehouse_sync import schema as wh_schema
from warehouse_sync import transforms as tf
from warehouse_sync.checks import require_references
from warehouse_sync.replay import DELETES, Replay, replay
from warehouse_sync.schema import DIM_DATE, SOURCES, column_list, next_value, quote_identifier as q, references_to
from warehouse_sync.sql import mirror_rows, replace_mirror_rows, select, stage_keys, upsert
from warehouse_sync.targets import Target

if TYPE_CHECKING:
    from warehouse_sync.apply import SyncResult

log = logging.getLogger("totes.sync")


def apply_changes(
    target: Target,
    changes: dict[str, pl.DataFrame],
    today: date,
    result: SyncResult,
    returning: dict[str, pl.Series],
    parts: dict | None = None,
) -> None:
    """The slice's steps. A part loaded in bulk (`parts`: source → (BulkPart, its files)) is
    its table's first events: loaded after the dimensions its facts point at, before that
    table's later events of the slice go the general way."""
    parts = parts or {}
    replays = {
        source: _replay_mirror(target, source, events) for source, events in changes.items() if source not in parts
    }
    _upsert_dimensions(target, replays, result)
    for source, (part, files) in parts.items():
        _bulk_load(target, part, files, today, result)
        if source in changes:
            replays[source] = _replay_mirror(target, source, changes[source])
    fact_changes = {}
    for spec in tf.FACT_SPECS:
        if spec.source in replays:
            fact_changes[spec] = _fact_changes(target, spec, replays[spec.source], result, returning.get(spec.source))
    _add_calendar_days(target, fact_changes, today)
    for spec, changes_ in fact_changes.items():
        _write_facts(target, spec, changes_, result)
    _delete_dimensions(target, replays, result)


def _replay_mirror(target: Target, source: str, events: pl.DataFrame) -> Replay:
    """Replay `events` over the mirror of `source` and write the mirror's new state."""
    mirror = SOURCES[source]
    has_truncate = events.filter(pl.col("_op") == "t").height > 0
    prior = mirror_rows(target, source, None if has_truncate else events[mirror.key].drop_nulls())
    replayed = replay(source, prior, events)
    replace_mirror_rows(target, mirror, replayed.deleted, replayed.upserts)
    return replayed


def _touched(replays: dict[str, Replay], source: str) -> pl.Series:
    key = SOURCES[source].key
    if source not in replays:
        return pl.Series(key, [], dtype=pl.Int32)
    return replays[source].touched


def _known_rows(target: Target, replays: dict[str, Replay], source: str, keys: pl.Series) -> pl.DataFrame:
    """Current mirror rows of `keys`, and the last known values of those deleted by this sync."""
    mirror = SOURCES[source]
    rows = mirror_rows(target, source, keys).drop(["_lsn", "_seq"])
    if source in replays and replays[source].gone.height:
        gone = replays[source].gone
        gone = gone.filter(
            pl.col(mirror.key).is_in(keys.implode()) & ~pl.col(mirror.key).is_in(rows[mirror.key].implode())
        )
        rows = pl.concat([rows, gone.select(rows.columns)])
    return rows


def _upsert_dimensions(target: Target, replays: dict[str, Replay], result: SyncResult) -> None:
    for spec in tf.DIMENSION_SPECS:
        keys = _touched(replays, spec.source)
        if spec.joined_on is not None:  # and the rows that use a joined row touched
            joined = _touched(replays, spec.sources[1])
            using = mirror_rows(target, spec.source, joined, spec.joined_on)[SOURCES[spec.source].key]
            keys = pl.concat([keys, using]).unique()
        if keys.len() == 0:
            continue
        rows = _known_rows(target, replays, spec.source, keys)
        frames = [rows]
        if spec.joined_on is not None:
            frames.append(_known_rows(target, replays, spec.sources[1], rows[spec.joined_on].drop_nulls().unique()))
        result.dimensions_upserted[spec.table.name] = upsert(target, spec.table, spec.build(*frames))


def _fact_changes(
    target: Target, spec: tf.FactSpec, replayed: Replay, result: SyncResult, returning: pl.Series | None
) -> tf.FactChanges:
    fact = spec.table
    staged = stage_keys(target, "_wh_fact_keys", replayed.touched)
    current = select(target, fact, f" WHERE is_current AND {q(spec.business_key)} IN (SELECT k FROM {q(staged)})")  # nosec B608 # names quoted by q(), values int()
    versions = _without_replaced_truncates(replayed.versions, SOURCES[spec.source].key, returning)
    # A delete of a row this warehouse never had (read into the lake after the delete, by a
    # bulk snapshot resumed or replacing at a later LSN) has no fact version to close.
    versions = versions.filter(~(pl.col("_op").is_in(DELETES) & ~pl.col("_known")))
    versions, rejected = tf.unfit_versions(spec, versions)
    if rejected.height:
        upsert(target, wh_schema.REJECTED, rejected)
        result.facts_rejected[fact.name] = rejected.select("source_lsn", "source_seq").unique().height
        for row in rejected.iter_rows(named=True):
            log.warning(
                "%s %s at %d/%d: %s %s, set aside in %s",
                row["source_table"],
                row["business_key"],
                row["source_lsn"],
                row["source_seq"],
                row["source_value"],
                row["reason"],
                wh_schema.REJECTED.name,
            )
    return tf.new_fact_rows(spec, current, tf.fact_rows(spec, versions))


def _without_replaced_truncates(versions: pl.DataFrame, key: str, returning: pl.Series | None = None) -> pl.DataFrame:
    """Drop a truncate's version of a row that a snapshot row brings back next: a table
    replaced by a new snapshot (truncate, then its rows, at the same LSN through the stream
    or at a later one in bulk; see the reader's `replaces_lost_slot`) deleted nothing that
    is still there, so the fact keeps its row (or gets one new version if the row changed),
    rather than a deletion and a copy. `returning`: the keys whose next event comes after
    these versions (a later slice) and is a snapshot read, so that where a slice ends
    changes nothing."""
    if versions.height == 0 or not (versions["_op"] == "t").any():
        return versions
    ordered = versions.sort([key, "_lsn", "_seq"])
    following = pl.col("_op").shift(-1).over(key)
    later = pl.lit(False) if returning is None else pl.col(key).is_in(returning.cast(versions[key].dtype).implode())
    replaced = (
        (pl.col("_op") == "t") & pl.when(following.is_null()).then(later).otherwise(following == "r")
    ).fill_null(False)
    return ordered.filter(~replaced)


def _bulk_load(target: Target, part: bulk.BulkPart, files, today: date, result: SyncResult) -> None:
    """A fresh fact source's snapshot reads in bulk (`bulk`): mirror, calendar days, facts."""
    spec = tf.FACT_BY_SOURCE[part.source]
    staged = target.stage_part(bulk.STAGED, files, bulk.staged_columns(part.source))
    rows = bulk.load_mirror(target, part, staged)
    mirror, piece = SOURCES[part.source].name, bulk.piece_rows(part)
    referenced = target.select(bulk.referenced_days_sql(spec, mirror, target.dialect, piece), {"date_id": pl.Date()})
    _insert_calendar_days(target, referenced["date_id"], today)
    bulk.load_facts(target, part, staged, rows)
    result.events += rows
    result.facts_appended[spec.table.name] = result.facts_appended.get(spec.table.name, 0) + rows
    result.bulk_loaded[spec.table.name] = result.bulk_loaded.get(spec.table.name, 0) + rows


def _add_calendar_days(target: Target, fact_changes: dict[tf.FactSpec, tf.FactChanges], today: date) -> None:
    referenced = pl.concat(
        [pl.Series("date_id", [], dtype=pl.Date)]
        + [tf.referenced_days(spec, c.inserts) for spec, c in fact_changes.items()]
    )
    _insert_calendar_days(target, referenced, today)


def _insert_calendar_days(target: Target, referenced: pl.Series, today: date) -> None:
    days = tf.dim_date(tf.calendar_days(referenced, today))
    present = target.query(f"SELECT count(*) AS n, min(date_id) AS first, max(date_id) AS last FROM {q(DIM_DATE.name)}")  # nosec B608 # names quoted by q(), values int()
    first, last = present["first"].item(), present["last"].item()
    if first is not None and present["n"].item() == (last - first).days + 1:
        days = days.filter((pl.col("date_id") < first) | (pl.col("date_id") > last))  # the contiguous part is there
    if days.height:
        staged = target.stage("_wh_days", days)
        columns = column_list(DIM_DATE.names)
        target.execute(
            f"INSERT INTO {q(DIM_DATE.name)} ({columns}) SELECT {columns} FROM {q(staged)} "  # nosec B608 # names quoted by q(), values int()
            f"ON CONFLICT ({q(DIM_DATE.key)}) DO NOTHING"
        )


def _write_facts(target: Target, spec: tf.FactSpec, changes: tf.FactChanges, result: SyncResult) -> None:
    fact = spec.table
    if changes.closes.height:
        staged = target.stage("_wh_closes", changes.closes)
        target.execute(
            f"UPDATE {q(fact.name)} SET is_current = false, valid_to = s.valid_to FROM {q(staged)} AS s "  # nosec B608 # names quoted by q(), values int()
            f"WHERE {q(fact.name)}.{q(fact.key)} = s.{q(fact.key)}"
        )
        result.facts_closed[fact.name] = changes.closes.height
    inserts = changes.inserts
    if inserts.height == 0:
        return
    base = int(target.query(f"SELECT coalesce(max({q(fact.key)}), 0) AS n FROM {q(fact.name)}").item())  # nosec B608 # names quoted by q(), values int()
    rows = inserts.with_columns(pl.int_range(base + 1, base + 1 + inserts.height, dtype=pl.Int32).alias(fact.key))
    staged = target.stage("_wh_inserts", rows.select(fact.names))
    columns = column_list(fact.names)
    target.execute(f"INSERT INTO {q(fact.name)} ({columns}) SELECT {columns} FROM {q(staged)} ORDER BY {q(fact.key)}")  # nosec B608 # names quoted by q(), values int()
    require_references(target, fact, after=base)  # the keys the engine does not check itself
    target.query(f"SELECT max({next_value(fact)}) AS n FROM {target.series(inserts.height)}")  # nosec B608 # names quoted by q(), values int()
    result.facts_appended[fact.name] = result.facts_appended.get(fact.name, 0) + inserts.height


def _delete_dimensions(target: Target, replays: dict[str, Replay], result: SyncResult) -> None:
    for spec in tf.DIMENSION_SPECS:
        name, source = spec.table.name, spec.source
        if source not in replays or replays[source].deleted.len() == 0:
            continue
        staged = stage_keys(target, "_wh_gone", replays[source].deleted)
        table, key = q(name), q(spec.table.key)
        present = f"SELECT count(*) AS n FROM {table} WHERE {key} IN (SELECT k FROM {q(staged)})"  # nosec B608 # names quoted by q(), values int()
        before = int(target.query(present).item())
        unreferenced = "".join(
            f" AND NOT EXISTS (SELECT 1 FROM {q(fact.name)} AS f WHERE f.{q(column.name)} = {table}.{key})"  # nosec B608 # names quoted by q(), values int()
            for fact, column in references_to(name)
        )
        target.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT k FROM {q(staged)}){unreferenced}")  # nosec B608 # names quoted by q(), values int()
        deleted = before - int(target.query(present).item())
        if deleted:
            result.dimensions_deleted[name] = deleted
