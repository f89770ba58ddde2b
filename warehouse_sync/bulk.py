"""The initial load of a fact's source in bulk: its snapshot reads in one SQL statement per table.

A fact source whose first events in a sync are all snapshot reads (`op='r'`) at one LSN, into
a warehouse holding none of its rows (mirror and fact empty: a fresh load), needs none of the
general path's work: no prior state, one version per key, every version new and current. So
those events never become polars frames: the lake's files for them (`bulk_source.snapshot_part`)
are handed to the engine (DuckDB reads a local lake's Parquet files itself, or scans the Arrow
dataset of a lake elsewhere; PostgreSQL gets them by binary COPY into a temporary table, batch
by batch), and two statements write the mirror and the fact rows, with what the general path
gives them: record ids `max + row_number()` in `(seq, key)` order (from runs of consecutive
seqs, `numbering`, rather than a sort), `is_current` true, lineage from the event. What the
sync holds is then the part's key and seq columns, not its rows, and the slice planner counts
such a part as no events (`plan`, `weighed`): a table's snapshot is one transaction per
piece of up to PIECE_ROWS events, not one per 100,000.

Anything else about such a part falls back to the general path, decided before the slice is
read: a mirror whose columns were widened, lake types other than the mirror's, a key or a
position that appears twice (`bulk_source.bulk_loadable`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl
import pyarrow.dataset as ds

from warehouse_sync import ddl
from warehouse_sync import schema as wh_schema
from warehouse_sync.checks import require_references
from warehouse_sync import transforms as tf
from warehouse_sync.schema import BASE_SOURCES, DUCKDB, SOURCES, Table, column_list, next_value
from warehouse_sync.schema import quote_identifier as q
from warehouse_sync.slices import MAX_SEQ, MIN_SEQ, LsnCount, Position
from warehouse_sync.targets import Target

BULK_LOADS = True
"""Whether fresh snapshot parts take this path (False: every event goes the general way)."""

STAGED = "_wh_bulk"

MAX_GROUPS = 100_000
"""Runs of consecutive `seq` a part's record ids are counted from at most (else a window)."""


@dataclass(frozen=True)
class Numbering:
    """Where each event's record id comes from, without sorting the rows: the part's `seq`
    fall into groups `seq >> shift`, each a run of consecutive numbers (the bulk snapshot's
    chunks: the chunk number above the row's place, `cdc_reader.bulk_snapshot.snapshot_seq`),
    so an event's rank is the rows of the groups before its own plus its place in it."""

    shift: int
    groups: pl.DataFrame
    """`_wh_g` (the group), `_wh_first` (its first seq), `_wh_before` (rows of the groups before)."""


def numbering(seqs: pl.Series) -> Numbering | None:
    """The groups of `seqs` (sorted, distinct), or None when they are more than MAX_GROUPS
    (or a seq is negative, where `>>` and a floor division part ways)."""
    if seqs.len() == 0 or seqs[0] < 0:
        return None
    # Two neighbours with a gap between them must fall into different groups: their highest
    # differing bit must be at `shift` or above. The smallest such XOR has the lowest one.
    seq, previous = pl.col("_seq"), pl.col("_seq").shift(1)
    differing = (
        pl.DataFrame({"_seq": seqs})
        .select(x=pl.when(seq - previous != 1).then(seq.xor(previous)))
        .filter(pl.col("x") > 0)["x"]
        .min()
    )
    shift = 62 if differing is None else int(differing).bit_length() - 1  # type: ignore[arg-type]
    groups = (
        pl.DataFrame({"_seq": seqs})
        .group_by((pl.col("_seq") // (1 << shift)).alias("_wh_g"))  # = seq >> shift (seq >= 0)
        .agg(_wh_first=pl.col("_seq").min(), _wh_last=pl.col("_seq").max(), _wh_rows=pl.len())
        .sort("_wh_g")
    )
    if groups.height > MAX_GROUPS or (groups["_wh_last"] - groups["_wh_first"] + 1 != groups["_wh_rows"]).any():
        return None
    before = groups["_wh_rows"].cum_sum() - groups["_wh_rows"]
    return Numbering(shift, groups.select("_wh_g", "_wh_first", before.cast(pl.Int64).alias("_wh_before")))


PIECE_ROWS = 250_000
"""Events of a part loaded in one transaction at most: DuckDB holds a transaction's new rows'
index entries (the primary key's) in memory until it commits. At 1,000,000 the initial load
of 5,000,000 orders ran out of the sync's DuckDB memory (`DUCKDB_MEMORY_LIMIT`) in 6 of 7
runs, at 250,000 in none of 3, about 15 % slower (bench/README.md, `sync`)."""


@dataclass(frozen=True)
class BulkPart:
    """The events of the source table at index `table` at `lsn` with `low <= seq <= high`:
    snapshot reads to load in bulk, `rows` of them, after `before` of the same part."""

    lsn: int
    table: int
    numbering: Numbering | None = field(default=None, compare=False)
    low: int = MIN_SEQ
    high: int = MAX_SEQ
    rows: int = 0
    before: int = 0

    @property
    def source(self) -> str:
        return list(SOURCES)[self.table]

    @property
    def end(self) -> Position:
        return Position(self.lsn, self.table, self.high)

    def within(self, start: Position, end: Position) -> bool:
        """Whether the slice `(start, end]` holds the whole piece (a planned piece is never cut)."""
        return start < Position(self.lsn, self.table, self.low) and self.end <= end


def _pieces(count: LsnCount, seqs: pl.Series, cut: bool) -> list[BulkPart]:
    """The part's pieces of at most PIECE_ROWS events (one piece unless `cut`)."""
    shared = numbering(seqs)
    size = PIECE_ROWS if cut else max(seqs.len(), 1)
    pieces = []
    for before in range(0, seqs.len(), size):
        rows = min(size, seqs.len() - before)
        low = MIN_SEQ if before == 0 else int(seqs[before])
        high = MAX_SEQ if before + rows == seqs.len() else int(seqs[before + rows - 1])
        pieces.append(BulkPart(count.lsn, count.table, shared, low, high, rows, before))
    return pieces


def fresh_sources(target: Target) -> set[str]:
    """The fact sources of which the warehouse holds nothing (neither mirror nor fact rows)."""
    fresh = set()
    for spec in tf.FACT_SPECS:
        held = target.query(
            f"SELECT EXISTS (SELECT 1 FROM {q(SOURCES[spec.source].name)}) "  # nosec B608 # names quoted by q()
            f"OR EXISTS (SELECT 1 FROM {q(spec.table.name)}) AS held"
        ).item()
        if not held:
            fresh.add(spec.source)
    return fresh


def plan(
    counts: Sequence[LsnCount], fresh: set[str], loadable: Callable[[BulkPart], pl.Series | None]
) -> list[BulkPart]:
    """The parts of `counts` to load in bulk: each fresh fact source's first (LSN, table), when
    `loadable` says its events there are all snapshot reads that their files allow to load
    (giving their sorted `seq`). A large part comes in pieces (`PIECE_ROWS`), where every
    event at its LSN is a snapshot read (a cut there shows no half transaction)."""
    if not BULK_LOADS:
        return []
    first: dict[int, LsnCount] = {}
    for count in sorted(counts, key=lambda c: (c.lsn, c.table)):
        first.setdefault(count.table, count)
    parts = []
    for count in first.values():
        part = BulkPart(count.lsn, count.table)
        source = part.source
        if source not in fresh or SOURCES[source] != BASE_SOURCES[source]:
            continue
        seqs = loadable(part)
        if seqs is not None:
            cut = all(c.snapshot_only for c in counts if c.lsn == count.lsn)
            parts.extend(_pieces(count, seqs, cut))
    return parts


def weighed(counts: Sequence[LsnCount], parts: Sequence[BulkPart]) -> list[LsnCount]:
    """`counts` with the bulk parts as no events: they take no memory, and are never cut
    (but between their pieces: `with_pieces`)."""
    bulk = {(p.lsn, p.table) for p in parts}
    return [LsnCount(c.lsn, c.table, 0, True) if (c.lsn, c.table) in bulk else c for c in counts]


def with_pieces(ends: Sequence[Position], parts: Sequence[BulkPart]) -> list[Position]:
    """The planned slice ends and one after each piece but a part's last."""
    cuts = {p.end for p in parts if p.high != MAX_SEQ}
    return sorted(set(ends) | cuts)


# -- SQL over the staged events -----------------------------------------------------------------


def _cast(expression: str, logical: str, dialect: str) -> str:
    return f"CAST({expression} AS {wh_schema.sql_type(logical, dialect)})"


def _projection(spec: tf.FactSpec, dialect: str) -> list[str]:
    """The fact's columns after its record id, as SQL over the mirror's columns: the same
    rules as `spec.projection` (a timestamp split into date and time, a text date cast), read
    from its expressions' names so that the two cannot drift apart."""
    mirror = SOURCES[spec.source]
    fact = spec.table
    sql = []
    for item in spec.projection():
        expression = pl.col(item) if isinstance(item, str) else item
        name, (root,) = expression.meta.output_name(), expression.meta.root_names()
        target_type, source_type = fact.column(name).type, mirror.column(root).type
        value = q(root)
        if target_type in ("date", "time") and source_type != target_type:
            value = _cast(value, target_type, dialect)
        sql.append(value)
    lineage = ["true", "false", q("_op"), q("_lsn"), q("_seq"), q("_commit_ts"), "NULL"]
    return sql + lineage


def referenced_days_sql(spec: tf.FactSpec, relation: str, dialect: str, where: str = "") -> str:
    """The distinct days the fact rows of `relation` (`where` ...) reference (their dim_date keys)."""
    names = spec.table.names[1:]
    values = dict(zip(names, _projection(spec, dialect)))
    days = [values[c.name] for c in spec.table.foreign_keys if c.references == wh_schema.DIM_DATE.name]
    rows = f"{q(relation)}{where}"
    union = " UNION ".join(f"SELECT {day} AS d FROM {rows}" for day in days)  # nosec B608 # names quoted by q()
    return f"SELECT d AS date_id FROM ({union}) AS days WHERE d IS NOT NULL"  # nosec B608 # built above


def staged_columns(source: str) -> list[str]:
    """The columns of a part's events the load reads."""
    return wh_schema.source_columns(source) + ["_op", "_lsn", "_seq", "_commit_ts"]


def piece_filter(part: BulkPart) -> tuple[ds.Expression, str]:
    """The piece's events among its table's, as an Arrow filter and as an SQL condition."""
    lsn, seq = ds.field("_lsn"), ds.field("_seq")
    arrow, sql = lsn == int(part.lsn), [f"{q('_lsn')} = {int(part.lsn)}"]
    if part.low != MIN_SEQ:
        arrow, sql = arrow & (seq >= int(part.low)), sql + [f"{q('_seq')} >= {int(part.low)}"]
    if part.high != MAX_SEQ:
        arrow, sql = arrow & (seq <= int(part.high)), sql + [f"{q('_seq')} <= {int(part.high)}"]
    return arrow, " AND ".join(sql)


def piece_rows(part: BulkPart) -> str:
    """` WHERE ...`: the piece's rows among a mirror's."""
    return f" WHERE {piece_filter(part)[1]}"


def load_mirror(target: Target, part: BulkPart, relation: str) -> int:
    """The mirror's rows: one per event of the piece (each its own key)."""
    mirror = SOURCES[part.source]
    columns = column_list(mirror.names)
    target.execute(
        f"INSERT INTO {q(mirror.name)} ({columns}) SELECT {columns} FROM {q(relation)}"  # nosec B608 # names quoted by q()
    )
    return part.rows


def load_facts(target: Target, part: BulkPart, relation: str, rows: int) -> int:
    """The fact rows: every event a current version, record ids after the table's largest in
    `(seq, key)` order (one LSN), then the table's own sequence moved past them.

    Their references are checked in the piece's transaction, set-based on both engines: DuckDB
    declares no foreign keys and the sync checks the new rows (`checks.require_references`).
    PostgreSQL's declared keys fire a trigger per row and key (nine lookups a fact row, most
    of what a piece cost there), so the piece drops them, inserts, and declares them again,
    which checks the table with one join per key (the sync owns its tables: `ensure_schema`
    creates and alters them). A failed check rolls the piece back, keys included, as a crash
    does. The fact table and its dimensions are locked against other sessions until the piece
    commits (an initial load's tables)."""
    spec = tf.FACT_BY_SOURCE[part.source]
    fact: Table = spec.table
    base = int(target.query(f"SELECT coalesce(max({q(fact.key)}), 0) AS n FROM {q(fact.name)}").item())  # nosec B608 # names quoted by q()
    values = ", ".join(_projection(spec, target.dialect))
    source = q(relation)
    if part.numbering is None:  # a sort of every row
        record_id = f"{base} + row_number() OVER (ORDER BY {q('_seq')}, {q(spec.business_key)})"
    else:  # one LSN, each seq once: the rank of its seq, from its group (no sort)
        groups = q(target.stage("_wh_bulk_groups", part.numbering.groups))
        record_id = f"{base - part.before} + g._wh_before + ({q('_seq')} - g._wh_first) + 1"
        source += f" JOIN {groups} AS g ON g._wh_g = ({q('_seq')} >> {int(part.numbering.shift)})"
    sql_order = " ORDER BY 1" if target.dialect == DUCKDB else ""  # stored in record id order
    declared = ddl.declared_foreign_keys(fact, target.dialect)
    for column in declared:
        target.execute(ddl.drop_foreign_key(fact, column))
    target.execute(
        f"INSERT INTO {q(fact.name)} ({column_list(fact.names)}) "  # nosec B608 # names quoted by q(), values int()
        f"SELECT {record_id}, {values} FROM {source}{sql_order}"
    )
    for column in declared:
        target.execute(ddl.add_foreign_key(fact, column))
    require_references(target, fact, after=base)
    if rows:
        target.query(f"SELECT max({next_value(fact)}) AS n FROM {target.series(rows)}")  # nosec B608 # names quoted by q(), values int()
    return rows
