"""One sync: the change-log events in `(checkpoint, upto]` → warehouse transactions, one per slice.

Why one file (~750 lines): one sync transaction, read top to bottom: checkpoint, lake types,
dims, facts, rejects; its SQL helpers are what its steps share.

    sync_once(lake, target, upto_lsn)        # slice_events=SLICE_EVENTS

`upto_lsn` is the lake watermark (every event at or below it, of every table, is in the
lake), so a sync never shows half a source transaction. A backlog larger than
`slice_events` is applied in slices (`slices.plan_slices`: each ends on a complete LSN, or
inside an LSN of snapshot reads between tables or seqs), so what the sync holds in memory is
one slice, whatever the backlog; each slice is read from the lake on its own
(`lake_source.read_slice`), and where the cuts fall changes nothing: a truncate that ends a
slice is no deletion of the rows snapshot reads bring back later (a reset's truncate at L1,
its rows at L2; `_read_slice`). A continuous caller's cache serves a small step in one slice, as
before. Each slice is one transaction, which also moves the checkpoint (and `_sync_partial`):

1. lock and read the position; stop when another sync moved it;
2. read every table's events in the slice, sorted by `(lsn, seq)`, deduplicated;
3. replay them over the source mirrors (`_src_<table>`) and write the mirrors back, only the
   rows of the keys the events touch (read by key, written by key);
4. upsert the dimension rows those events affect (a department or address change rebuilds
   every staff or counterparty row that uses it), before any fact points at them;
5. append the new fact versions (only versions whose projection changed), close the rows they
   supersede (`is_current` false, `valid_to` set; found by business key among the current
   rows), after adding the calendar days they need;
6. delete the dimension rows whose source row is gone, unless a fact row references them
   (history keeps pointing at the last known values);
7. set the position to the slice's end and commit.

Everything crosses to the engine in bulk: frames are staged as Arrow (DuckDB) or binary COPY
FROM (PostgreSQL, pgpq) and joined in SQL, large results come back as Arrow or COPY TO; no
statement or Python object per row. Mirrors and dimensions are upserted on the changed keys
only (DuckDB: by rowid in rowid order, see `_upsert`), facts closed by record id and appended.
What a slice costs grows with the slice, not with the warehouse, except DuckDB's scans for
keyed lookups (its ART indexes serve constraints, not joins) and
`max(record id)`. PostgreSQL checks each fact row's nine foreign keys one row at a time (its
triggers): most of what an append costs there.

A crash anywhere before a slice's commit leaves the warehouse as the previous slice left it;
a rerun goes on from there, and a rerun with the same `upto_lsn` does nothing. So a
warehouse that drops the connection mid-sync (a restart, a failover, an idle timeout) is
simply reconnected to and the sync run again, a few times with a growing pause: even a
connection lost during COMMIT is safe, the rerun finds the checkpoint moved or not.

Record ids are `max(record id) + 1, + 2, …` in `(source_lsn, source_seq, business key)` order,
assigned inside the transaction, so they are a function of the change log alone: a rolled
back sync leaves no gap (a sequence would: neither engine rolls sequences back) and one sync
or several over the same events give the same ids. The table's own sequence default is
advanced past them, for anyone inserting by hand.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import polars as pl
from lake.change_feed import ChangeLog
from lake.layout import LakeLayout
from warehouse_sync import bulk
from warehouse_sync.bulk_source import bulk_loadable, snapshot_part
from warehouse_sync import schema as wh_schema
from warehouse_sync import transforms as tf
from warehouse_sync.lake_source import (
    cached_events,
    count_events,
    follow_from,
    read_changes,
    read_slice,
    snapshot_returns,
    snapshot_seqs,
)
from warehouse_sync.replay import DELETES, Replay, replay
from warehouse_sync.schema import (
    BY_NAME,
    CHECKPOINT,
    DIM_COUNTERPARTY,
    DUCKDB,
    DIM_CURRENCY,
    DIM_DATE,
    DIM_DESIGN,
    DIM_LOCATION,
    DIM_PAYMENT_TYPE,
    DIM_STAFF,
    DIM_TRANSACTION,
    PARTIAL,
    SOURCES,
    Table,
    column_list,
    next_value,
    quote_identifier as q,
    references_to,
    schema_ddl,
)
from warehouse_sync.slices import SLICE_EVENTS, Position, plan_slices
from warehouse_sync.targets import Target

log = logging.getLogger("totes.sync")

RECONNECT_ATTEMPTS = 5
"""Syncs tried on a warehouse that keeps dropping the connection before giving up."""

DIMENSION_SOURCES = {
    DIM_LOCATION.name: "address",
    DIM_DESIGN.name: "design",
    DIM_CURRENCY.name: "currency",
    DIM_PAYMENT_TYPE.name: "payment_type",
    DIM_TRANSACTION.name: "transaction",
    DIM_STAFF.name: "staff",
    DIM_COUNTERPARTY.name: "counterparty",
}
"""Each dimension and the source table whose rows are its rows."""


@dataclass
class SyncResult:
    from_lsn: int
    to_lsn: int
    events: int = 0
    facts_appended: dict[str, int] = field(default_factory=dict)
    facts_closed: dict[str, int] = field(default_factory=dict)
    dimensions_upserted: dict[str, int] = field(default_factory=dict)
    dimensions_deleted: dict[str, int] = field(default_factory=dict)
    facts_rejected: dict[str, int] = field(default_factory=dict)
    """Fact versions set aside in `_sync_rejected` (a value does not fit its §3 column)."""
    slices: list[tuple[Position, int]] = field(default_factory=list)
    """Each committed slice: where it ended and how many events it held (those loaded in bulk
    are not: they stay in the engine)."""
    bulk_loaded: dict[str, int] = field(default_factory=dict)
    """Snapshot reads loaded in bulk (`bulk`), by fact table."""

    def add(self, applied: SyncResult, end: Position) -> None:
        """Count a committed slice in."""
        self.events += applied.events
        for mine, theirs in (
            (self.facts_appended, applied.facts_appended),
            (self.facts_closed, applied.facts_closed),
            (self.dimensions_upserted, applied.dimensions_upserted),
            (self.dimensions_deleted, applied.dimensions_deleted),
            (self.facts_rejected, applied.facts_rejected),
            (self.bulk_loaded, applied.bulk_loaded),
        ):
            for name, count in theirs.items():
                mine[name] = mine.get(name, 0) + count
        self.slices.append((end, applied.events - sum(applied.bulk_loaded.values())))

    @property
    def applied(self) -> bool:
        return self.to_lsn > self.from_lsn


def ensure_schema(target: Target) -> None:
    """Create whatever warehouse table is missing (idempotent)."""
    target.begin()
    try:
        for statement in schema_ddl(target.dialect):
            target.execute(statement)
        target.commit()
    except BaseException:
        target.rollback()
        raise
    target.schema_ready = True


def checkpoint_lsn(target: Target) -> int:
    """The LSN up to which the warehouse holds every event (0 before the first sync)."""
    frame = target.query(f"SELECT lsn FROM {q(CHECKPOINT.name)} WHERE id = 1")  # nosec B608 # names quoted by q(), values int()
    return int(frame.item()) if frame.height else 0


def sync_once(
    lake: LakeLayout | str,
    target: Target,
    upto_lsn: int,
    *,
    today: date | None = None,
    tables: dict | None = None,
    slice_events: int = SLICE_EVENTS,
) -> SyncResult:
    """Apply every change-log event with `checkpoint < _lsn <= upto_lsn`, in slices of at
    most `slice_events` events (see `slices`), one transaction each, reconnecting and going
    on from the last committed slice when the warehouse drops the connection.

    `tables`, a dict kept by a continuous caller, caches the lake's change logs between runs."""
    layout = lake if isinstance(lake, LakeLayout) else LakeLayout(lake)
    result: SyncResult | None = None
    lost = False
    for attempt in range(1, RECONNECT_ATTEMPTS + 1):
        try:
            if lost:
                target.reconnect()
            return _sync_once(
                layout, target, upto_lsn, today=today, tables=tables, slice_events=slice_events, result=result
            )
        except _Resume as resume:
            error, result = resume.error, resume.result
            if attempt == RECONNECT_ATTEMPTS or not target.lost_connection(error):
                raise error from None
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            delay = min(2.0 ** (attempt - 1), 10.0)
            log.warning(
                "the warehouse dropped the connection (%s); reconnecting in %.0f s and syncing again", first, delay
            )
            time.sleep(delay)
            lost = True
    raise AssertionError("unreachable")


class _Resume(Exception):
    """A sync failed after committing the slices in `result`."""

    def __init__(self, error: Exception, result: SyncResult | None):
        super().__init__(str(error))
        self.error, self.result = error, result


def _sync_once(
    layout: LakeLayout,
    target: Target,
    upto_lsn: int,
    *,
    today: date | None,
    tables: dict | None,
    slice_events: int,
    result: SyncResult | None,
) -> SyncResult:
    today = today or datetime.now(timezone.utc).date()
    try:
        if not target.schema_ready:
            ensure_schema(target)
        _widen_for_lake(target, layout, tables)
        start = _read_position(target)
    except Exception as error:
        raise _Resume(error, result) from error
    if result is None:
        result = SyncResult(_complete_lsn(start), max(_complete_lsn(start), upto_lsn))
    end = Position.complete(upto_lsn, len(SOURCES))
    if end <= start:
        return result
    try:
        if tables is not None and start.is_complete(len(SOURCES)):
            held = cached_events(layout, start.lsn, upto_lsn, tables, slice_events)
            if held is not None and held <= slice_events:
                _apply_slice(
                    layout,
                    target,
                    start,
                    end,
                    today,
                    tables,
                    result,
                    lambda: (read_changes(layout, start.lsn, upto_lsn, tables), {}, {}),
                )
                return result
        opened: dict = {uri: known[0] for uri, known in _LAKE_TYPES.items()}  # brought up to date just now
        # Whether an LSN is all snapshot reads decides cuts inside it: those of a large slice,
        # and those between the pieces of a part loaded in bulk (`bulk.PIECE_ROWS`).
        counts = count_events(layout, start, upto_lsn, opened, larger_than=min(slice_events, bulk.PIECE_ROWS))
        parts = bulk.plan(
            counts,
            _fresh_sources(target) if bulk.BULK_LOADS else set(),
            lambda part: bulk_loadable(layout, start, part, opened),
        )
        ends = bulk.with_pieces(
            plan_slices(
                bulk.weighed(counts, parts),
                upto_lsn,
                len(SOURCES),
                lambda lsn, table: snapshot_seqs(layout, start, lsn, table, opened),
                slice_events,
            ),
            parts,
        )
        for end_ in ends:
            start_ = start
            sources = {list(SOURCES)[c.table] for c in counts if start_.lsn <= c.lsn <= end_.lsn}
            here = [part for part in parts if part.within(start_, end_)]
            if not _apply_slice(
                layout,
                target,
                start_,
                end_,
                today,
                tables,
                result,
                lambda: _read_slice(layout, start_, end_, upto_lsn, opened, sources, here),
            ):
                break  # another sync moved the checkpoint: the next run starts from there
            start = end_
        if tables is not None:
            follow_from(layout, upto_lsn, tables, slice_events)
    except Exception as error:
        if tables is not None:
            tables.clear()  # read again from wherever the checkpoint is
        raise _Resume(error, result) from error
    return result


def _apply_slice(
    layout: LakeLayout,
    target: Target,
    start: Position,
    end: Position,
    today: date,
    tables: dict | None,
    result: SyncResult,
    read,
) -> bool:
    """One transaction: the events in `(start, end]` (as `read()` returns them, with the
    keys snapshot reads bring back after the slice and the parts loaded in bulk:
    `_read_slice`), the position moved to `end`. False (nothing done) when the warehouse is
    not at `start`."""
    target.begin()
    try:
        if _read_position(target, lock=True) != start:
            target.rollback()
            return False
        _follow_lake_types(target, layout, tables)
        changes, returning, parts = read()
        applied = SyncResult(result.from_lsn, result.to_lsn)
        applied.events = sum(frame.height for frame in changes.values())
        _apply(target, changes, today, applied, returning, parts)
        _advance_position(target, end)
        target.commit()
    except BaseException:
        target.rollback()
        raise
    result.add(applied, end)
    return True


def _read_slice(
    layout: LakeLayout,
    start: Position,
    end: Position,
    upto_lsn: int,
    opened: dict,
    sources: set[str],
    parts: list[bulk.BulkPart] = (),  # type: ignore[assignment]
) -> tuple[dict[str, pl.DataFrame], dict[str, pl.Series], dict]:
    """The slice's events but those of `parts` (loaded in bulk: their files are returned, by
    source, instead), and for each fact source it truncates, the keys whose next event
    after the slice (up to `upto_lsn`) is a snapshot read. A reset truncates at L1 and writes
    the rows back at a later L2; a slice ending between the two must not delete the facts a
    single sync keeps (`_without_replaced_truncates`)."""
    loads = {part.source: (part, snapshot_part(layout, start, part, opened)) for part in parts}
    changes = read_slice(layout, start, end, opened, sources, {part.source: part.lsn for part in parts})
    returning = {}
    if end < Position.complete(upto_lsn, len(SOURCES)):
        for source, events in changes.items():
            if source in tf.FACT_BY_SOURCE and (events["_op"] == "t").any():
                returning[source] = snapshot_returns(layout, end, upto_lsn, source, opened)
    return changes, returning, loads


def _widen_for_lake(target: Target, layout: LakeLayout, tables: dict | None) -> None:
    """Widen the mirrors as the lake's columns were, before the events are read in the
    mirrors' types (a wider column holds the same values: no need to wait for the sync)."""
    target.begin()
    try:
        _follow_lake_types(target, layout, tables)
        target.commit()
    except BaseException:
        target.rollback()
        raise


def _fresh_sources(target: Target) -> set[str]:
    """The fact sources the warehouse holds nothing of (`bulk.fresh_sources`)."""
    target.begin()
    try:
        return bulk.fresh_sources(target)
    finally:
        target.rollback()


def _complete_lsn(position: Position) -> int:
    """The LSN up to which a position holds every event."""
    return position.lsn if position.is_complete(len(SOURCES)) else position.lsn - 1


def _read_position(target: Target, lock: bool = False) -> Position:
    """Where the warehouse is: its checkpoint, or inside an LSN of snapshot reads."""
    if not lock:
        target.begin()
    try:
        lsn = int(
            target.query(
                f"SELECT lsn FROM {q(CHECKPOINT.name)} WHERE id = 1"  # nosec B608 # names quoted by q()
                f"{target.for_update if lock else ''}"
            ).item()
        )
        partial = target.query(f"SELECT lsn, source, seq FROM {q(PARTIAL.name)} WHERE id = 1")  # nosec B608 # names quoted by q()
    finally:
        if not lock:
            target.rollback()
    if partial.height == 0:
        return Position.complete(lsn, len(SOURCES))
    p_lsn, source, seq = partial.row(0)
    return Position(int(p_lsn), list(SOURCES).index(source), int(seq))


def _advance_position(target: Target, end: Position) -> None:
    _advance_checkpoint(target, _complete_lsn(end))
    target.execute(f"DELETE FROM {q(PARTIAL.name)}")  # nosec B608 # names quoted by q()
    if not end.is_complete(len(SOURCES)):
        source = wh_schema.quote_literal(list(SOURCES)[end.table])
        target.execute(
            f"INSERT INTO {q(PARTIAL.name)} (id, lsn, source, seq) "  # nosec B608 # names quoted, values int() or quoted
            f"VALUES (1, {int(end.lsn)}, {source}, {int(end.seq)})"
        )


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


def _follow_lake_types(target: Target, layout: LakeLayout, tables: dict | None = None) -> None:
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


def _advance_checkpoint(target: Target, lsn: int) -> None:
    target.execute(f"UPDATE {q(CHECKPOINT.name)} SET lsn = {int(lsn)} WHERE id = 1")  # nosec B608 # names quoted by q(), values int()


# -- SQL helpers shared by both engines (every name quoted: `quote_identifier`) ---------------


def _stage_keys(target: Target, name: str, keys: pl.Series) -> str:
    return target.stage(name, pl.DataFrame({"k": keys}))


def _select(target: Target, table: Table, where: str = "") -> pl.DataFrame:
    return target.select(
        f"SELECT {column_list(table.names)} FROM {q(table.name)}{where}",  # nosec B608 # names quoted by q(), values int()
        table.polars_schema,
    )


def _mirror_rows(target: Target, source: str, keys: pl.Series | None, column: str | None = None) -> pl.DataFrame:
    """Mirror rows of `source` whose `column` (default: the key) is in `keys` (None: all)."""
    mirror = SOURCES[source]
    if keys is None:
        return _select(target, mirror)
    if keys.len() == 0:
        return pl.DataFrame(schema=mirror.polars_schema)
    staged = _stage_keys(target, "_wh_lookup", keys.unique())
    return _select(target, mirror, f" WHERE {q(column or mirror.key)} IN (SELECT k FROM {q(staged)})")  # nosec B608 # names quoted by q(), values int()


def _upsert(target: Target, table: Table, rows: pl.DataFrame) -> int:
    if rows.height == 0:
        return 0
    staged = q(target.stage("_wh_upsert", rows.select(table.names)))
    name, key, columns = q(table.name), q(table.key), column_list(table.names)
    if target.dialect != DUCKDB:
        updates = ", ".join(f"{q(n)} = excluded.{q(n)}" for n in table.names if n != table.key)
        target.execute(
            f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {staged} "  # nosec B608 # names quoted by q()
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
        )
        return rows.height
    # DuckDB: its ON CONFLICT, or an UPDATE joined on the key, updates the rows in the order
    # the staged rows come, and rows out of the table's own order cost it ~50 us each (a
    # backlog's 100k updates took seconds). Updated by rowid, in rowid order, they cost
    # ~1 us; the join that finds the rowids reads only the key column.
    updates = ", ".join(f"{q(n)} = s.{q(n)}" for n in table.names if n != table.key)
    target.execute(
        f"UPDATE {name} SET {updates} FROM (SELECT u.*, t.rowid AS _wh_row FROM {staged} AS u "  # nosec B608 # names quoted by q()
        f"JOIN {name} AS t ON t.{key} = u.{key} ORDER BY _wh_row) AS s WHERE {name}.rowid = s._wh_row"
    )
    target.execute(
        f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {staged} AS s "  # nosec B608 # names quoted by q()
        f"WHERE NOT EXISTS (SELECT 1 FROM {name} AS t WHERE t.{key} = s.{key})"
    )
    return rows.height


def _delete_keys(target: Target, table: Table, keys: pl.Series, condition: str = "") -> None:
    if keys.len():
        staged = _stage_keys(target, "_wh_delete", keys)
        target.execute(f"DELETE FROM {q(table.name)} WHERE {q(table.key)} IN (SELECT k FROM {q(staged)}){condition}")  # nosec B608 # names quoted by q(), values int()


# -- the steps ---------------------------------------------------------------------------------


def _apply(
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
    prior = _mirror_rows(target, source, None if has_truncate else events[mirror.key].drop_nulls())
    replayed = replay(source, prior, events)
    _delete_keys(target, mirror, replayed.deleted)
    _upsert(target, mirror, replayed.upserts)
    return replayed


def _touched(replays: dict[str, Replay], source: str) -> pl.Series:
    key = SOURCES[source].key
    if source not in replays:
        return pl.Series(key, [], dtype=pl.Int32)
    return replays[source].touched


def _known_rows(target: Target, replays: dict[str, Replay], source: str, keys: pl.Series) -> pl.DataFrame:
    """Current mirror rows of `keys`, and the last known values of those deleted by this sync."""
    mirror = SOURCES[source]
    rows = _mirror_rows(target, source, keys).drop(["_lsn", "_seq"])
    if source in replays and replays[source].gone.height:
        gone = replays[source].gone
        gone = gone.filter(
            pl.col(mirror.key).is_in(keys.implode()) & ~pl.col(mirror.key).is_in(rows[mirror.key].implode())
        )
        rows = pl.concat([rows, gone.select(rows.columns)])
    return rows


def _upsert_dimensions(target: Target, replays: dict[str, Replay], result: SyncResult) -> None:
    simple = {
        DIM_LOCATION: ("address", tf.dim_location),
        DIM_DESIGN: ("design", tf.dim_design),
        DIM_CURRENCY: ("currency", tf.dim_currency),
        DIM_PAYMENT_TYPE: ("payment_type", tf.dim_payment_type),
        DIM_TRANSACTION: ("transaction", tf.dim_transaction),
    }
    for dimension, (source, transform) in simple.items():
        keys = _touched(replays, source)
        if keys.len():
            result.dimensions_upserted[dimension.name] = _upsert(
                target, dimension, transform(_known_rows(target, replays, source, keys))
            )

    staff_keys = pl.concat(
        [
            _touched(replays, "staff"),
            _mirror_rows(target, "staff", _touched(replays, "department"), "department_id")["staff_id"],
        ]
    ).unique()
    if staff_keys.len():
        staff = _known_rows(target, replays, "staff", staff_keys)
        departments = _known_rows(target, replays, "department", staff["department_id"].drop_nulls().unique())
        result.dimensions_upserted[DIM_STAFF.name] = _upsert(target, DIM_STAFF, tf.dim_staff(staff, departments))

    counterparty_keys = pl.concat(
        [
            _touched(replays, "counterparty"),
            _mirror_rows(target, "counterparty", _touched(replays, "address"), "legal_address_id")["counterparty_id"],
        ]
    ).unique()
    if counterparty_keys.len():
        counterparties = _known_rows(target, replays, "counterparty", counterparty_keys)
        addresses = _known_rows(target, replays, "address", counterparties["legal_address_id"].drop_nulls().unique())
        result.dimensions_upserted[DIM_COUNTERPARTY.name] = _upsert(
            target, DIM_COUNTERPARTY, tf.dim_counterparty(counterparties, addresses)
        )


def _fact_changes(
    target: Target, spec: tf.FactSpec, replayed: Replay, result: SyncResult, returning: pl.Series | None
) -> tf.FactChanges:
    fact = spec.table
    staged = _stage_keys(target, "_wh_fact_keys", replayed.touched)
    current = _select(target, fact, f" WHERE is_current AND {q(spec.business_key)} IN (SELECT k FROM {q(staged)})")  # nosec B608 # names quoted by q(), values int()
    versions = _without_replaced_truncates(replayed.versions, SOURCES[spec.source].key, returning)
    # A delete of a row this warehouse never had (read into the lake after the delete, by a
    # bulk snapshot resumed or replacing at a later LSN) has no fact version to close.
    versions = versions.filter(~(pl.col("_op").is_in(DELETES) & ~pl.col("_known")))
    versions, rejected = tf.unfit_versions(spec, versions)
    if rejected.height:
        _upsert(target, wh_schema.REJECTED, rejected)
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
    target.query(f"SELECT max({next_value(fact)}) AS n FROM {target.series(inserts.height)}")  # nosec B608 # names quoted by q(), values int()
    result.facts_appended[fact.name] = result.facts_appended.get(fact.name, 0) + inserts.height


def _delete_dimensions(target: Target, replays: dict[str, Replay], result: SyncResult) -> None:
    for name, source in DIMENSION_SOURCES.items():
        if source not in replays or replays[source].deleted.len() == 0:
            continue
        dimension = BY_NAME[name]
        staged = _stage_keys(target, "_wh_gone", replays[source].deleted)
        table, key = q(name), q(dimension.key)
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
