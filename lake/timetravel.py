"""Reading the lake as it was (guarantee 6): by Delta version, by timestamp, by source LSN.

- `read_table(layout, kind, table, version=… | as_of=datetime)`: any lake table as of a Delta
  version or a Delta commit time, i.e. the lake's own clock (`kind` is `changes`, `tables`,
  `_progress`, `_dead_letters`); a source time goes through `lsn_at_time` instead.
- `changes_as_of_lsn`: the change log up to an LSN (`_lsn <= X`).
- `state_as_of_lsn`: a table's state at LSN X rebuilt from its change log (the log is the
  record; this is exact for any X). `state_version_at_lsn` instead names the newest version
  of `tables/<t>` whose merges never went past X; when X is the end of a merged batch, that
  version's live rows equal the rebuilt state (a test proves it).
- `history`: the Delta versions of a lake table with their time, operation, shard and the
  LSN range each commit covered.
- `register_duckdb`: a lake table (any version) as a DuckDB relation, through a pyarrow
  dataset on a native pyarrow filesystem (deltalake's own handler can abort at exit).
- `lsn_at_time`: a source time as the LSN of the last transaction committed at or before it,
  so that "as of a time" means the source's state then, exact across tables and shards
  (Delta's own timestamps are the lake's clock, and one Delta version of a state table can
  hold one shard's progress beyond another's: a state the source never had).
- `check_as_of`: whether the lake can answer "as of" a version, time or LSN at all (one
  sentence when it cannot: older than the lake, past what it holds, in the future, not
  caught up to that time yet), since Delta itself answers a time before a table's first
  commit with its empty first version.

State tables keep tombstones: current-state readers filter `NOT _deleted`
(`current_state` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from lake.changelog import COMMIT_INFO_PREFIX
from lake.collapse import collapse
from lake.delta_io import ZERO, Position, plain_types, read_sql
from lake.layout import CHANGES, STATE, LakeLayout
from lake.schemas import data_columns
from lake.state import PRIMARY_KEY_PROPERTY, key_columns
from change_events.errors import Kind, TotesError


class TableNotInLake(LookupError):
    """No such lake table (or not at that version/time)."""


def open_table(
    layout: LakeLayout,
    kind: str,
    table: str | None = None,
    *,
    version: int | None = None,
    as_of: datetime | None = None,
) -> DeltaTable:
    """The Delta table `kind/table` at `version`, or as of the time `as_of`, or latest."""
    uri = layout.uri(kind, table)
    delta = layout.open(uri)
    if delta is None:
        raise TableNotInLake(uri)
    if version is not None:
        delta.load_as_version(version)
    elif as_of is not None:
        delta.load_as_version(as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc))
    return delta


def read_table(
    layout: LakeLayout, kind: str, table: str | None = None, *, where: str | None = None, **when
) -> pa.Table:
    """Rows of a lake table (at `when`: `open_table`'s version= or as_of=), optionally
    filtered by SQL `where`."""
    delta = open_table(layout, kind, table, **when)
    return read_sql(delta, "SELECT * FROM t" + (f" WHERE {where}" if where else ""))  # nosec B608 # `where` is a predicate the calling code writes, never data


def current_state(layout: LakeLayout, table: str, **when) -> pa.Table:
    """The live rows of `tables/<table>` (tombstones filtered), latest or at `version`/`as_of`."""
    return read_table(layout, STATE, table, where="NOT _deleted", **when)


def changes_as_of_lsn(layout: LakeLayout, table: str, lsn: int, where: str | None = None) -> pa.Table:
    """Every logged event of `table` with commit LSN <= `lsn`, in (lsn, seq) order; with
    `where` (a predicate on the key columns the calling code writes) only the events it
    selects, and every truncate."""
    delta = open_table(layout, CHANGES, table)
    rows = f" AND (_op = 't' OR ({where}))" if where else ""
    return read_sql(delta, f"SELECT * FROM t WHERE _lsn <= {int(lsn)}{rows} ORDER BY _lsn, _seq")  # nosec B608 # the LSN is int(), `where` is code


def state_as_of_lsn(
    layout: LakeLayout, table: str, lsn: int, keys: list[str] | None = None, where: str | None = None
) -> pa.Table:
    """The live rows of `table` once every event up to `lsn` is applied, rebuilt from the log
    (only the rows `where` selects, e.g. a key range: `totes verify` reads a table so).

    Columns: the source columns, then `_op`, `_lsn`, `_seq`, `_commit_ts` (as the state
    table). `keys` defaults to the state table's key columns, read from its merges."""
    log = pl.from_arrow(changes_as_of_lsn(layout, table, lsn, where))
    columns = data_columns(pa.schema(open_table(layout, CHANGES, table).schema()))
    keys = keys or state_keys(layout, table)
    truncates = log.filter(pl.col("_op") == "t")
    truncated = ZERO if truncates.height == 0 else Position(*truncates.select("_lsn", "_seq").row(-1))
    rows = log.filter(
        (pl.col("_op") != "t")
        & ((pl.col("_lsn") > truncated.lsn) | ((pl.col("_lsn") == truncated.lsn) & (pl.col("_seq") > truncated.seq)))
    )
    state = collapse(rows, keys, columns, complete=True).filter(~pl.col("_deleted"))
    state = state.select(*columns, "_op", "_lsn", "_seq", "_commit_ts").sort(keys)
    return plain_types(state.to_arrow())


def state_keys(layout: LakeLayout, table: str) -> list[str]:
    """The primary key columns of a state table (kept in its configuration)."""
    configuration = open_table(layout, STATE, table).metadata().configuration
    return key_columns(configuration[PRIMARY_KEY_PROPERTY])


@dataclass(frozen=True)
class Commit:
    version: int
    timestamp: datetime
    operation: str
    shard: str | None
    lsn_min: int | None
    lsn_max: int | None
    rows: int | None


def history(layout: LakeLayout, table: str, kind: str = STATE) -> list[Commit]:
    """The Delta versions of `kind/table`, oldest first, with the LSN range of each commit
    that wrote events (None for maintenance commits)."""
    commits = []
    for info in open_table(layout, kind, table).history():

        def meta(name, cast=str, info=info):
            value = info.get(f"{COMMIT_INFO_PREFIX}{name}")
            return None if value is None else cast(value)

        commits.append(
            Commit(
                version=info["version"],
                timestamp=datetime.fromtimestamp(info["timestamp"] / 1000, tz=timezone.utc),
                operation=meta("operation") or info.get("operation", ""),  # a merge by rewrite is a Delta WRITE
                shard=meta("shard"),
                lsn_min=meta("lsn_min", int),
                lsn_max=meta("lsn_max", int),
                rows=meta("rows", int),
            )
        )
    return sorted(commits, key=lambda c: c.version)


def state_version_at_lsn(layout: LakeLayout, table: str, lsn: int) -> int | None:
    """The newest version of `tables/<table>` that holds no event after `lsn` (None if even
    its first merge went past it)."""
    found = None
    for commit in history(layout, table, STATE):
        if commit.lsn_max is not None and commit.lsn_max > lsn:
            break
        found = commit.version
    return found


def register_duckdb(
    connection, layout: LakeLayout, table: str | None = None, kind: str = STATE, *, name: str | None = None, **when
) -> str:
    """Register `kind/table` (latest, or at `when`: `open_table`'s version= or as_of=) in a
    DuckDB connection; return the relation's name (default: the table name without schema,
    e.g. `sales_order`)."""
    delta = open_table(layout, kind, table, **when)
    dataset = delta.to_pyarrow_dataset(filesystem=layout.subtree(layout.uri(kind, table)))
    name = name or (table.partition(".")[2] or table if table else kind)
    connection.register(name, dataset)
    return name


class AsOfError(TotesError, ValueError):
    """The lake cannot be read as of that point; str() is one sentence saying why."""

    kind = Kind.CONFIGURATION


def _commit_times(layout: LakeLayout) -> pl.DataFrame:
    """(`_lsn`, `_commit_ts`) of every streamed event of every change log (snapshot rows have
    no commit time), one row per transaction."""
    frames = [
        pl.from_arrow(
            read_sql(open_table(layout, CHANGES, table), "SELECT _lsn, _commit_ts FROM t WHERE _commit_ts IS NOT NULL")
        )
        for table in layout.tables(CHANGES)
    ]
    frames = [f for f in frames if isinstance(f, pl.DataFrame) and f.height]
    if not frames:
        return pl.DataFrame(schema={"_lsn": pl.Int64, "_commit_ts": pl.Datetime("us", "UTC")})
    return pl.concat(frames).group_by("_lsn").agg(pl.col("_commit_ts").max()).sort("_lsn")


def _snapshot_lsn(layout: LakeLayout) -> int | None:
    lsns = [
        read_sql(open_table(layout, CHANGES, table), "SELECT min(_lsn) AS lsn FROM t WHERE _commit_ts IS NULL")
        .column("lsn")[0]
        .as_py()
        for table in layout.tables(CHANGES)
    ]
    return min((lsn for lsn in lsns if lsn is not None), default=None)


def lake_watermark(layout: LakeLayout) -> int | None:
    """The lake watermark: every event at or below it is in every change log (None: no
    marker was ever recorded)."""
    watermark = _watermark(layout)
    return None if watermark is None else watermark[0]


def _watermark(layout: LakeLayout) -> tuple[int, datetime] | None:
    """The lake watermark (min over shards of the newest marker each passed) and the earliest
    of those markers' recording times; None when no marker was ever recorded."""
    from lake.progress import Progress

    latest: dict[str, tuple[int, datetime]] = {}
    for row in Progress(layout).history().to_pylist():
        latest[row["shard"]] = (row["marker_lsn"], row["recorded_at"])
    if not latest:
        return None
    return min(m for m, _ in latest.values()), min(at for _, at in latest.values())


def _shown(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S.%f}"[:-3]


def _first_lake_commit(layout: LakeLayout) -> datetime:
    return min(
        datetime.fromtimestamp(
            min(c["timestamp"] for c in open_table(layout, CHANGES, t).history()) / 1000, tz=timezone.utc
        )
        for t in layout.tables(CHANGES)
    )


def lsn_at_time(layout: LakeLayout, moment: datetime) -> int:
    """The commit LSN of the last source transaction committed at or before `moment` (source
    time, from the events' `_commit_ts` in every change log); its state by LSN is the source's
    state at `moment`. A time before every streamed commit maps to the snapshot.

    Raise AsOfError when the lake may not hold every transaction up to `moment` yet: some
    event at or below the lake watermark must have committed after `moment` (the source had
    passed it, and every shard holds everything up to the watermark). In a quiet spell (no
    such event) the watermark must be at or past that LSN and every shard's newest marker
    recorded after `moment`: markers carry no source commit time, so the lake's clock stands
    in there (a transaction committed within the stream's lag before a marker could be missed). A lake without markers (written without a stream) counts as holding
    every event it has."""
    from change_events import format_lsn

    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    commits = _commit_times(layout)
    before = commits.filter(pl.col("_commit_ts") <= moment)
    snapshot = _snapshot_lsn(layout)
    if before.height:
        lsn = int(before["_lsn"].max())  # type: ignore[arg-type]
    elif snapshot is not None and moment >= _first_lake_commit(layout):
        lsn = snapshot  # the snapshot's own time is not recorded: it was written at the lake's start
    else:
        first = commits["_commit_ts"].min() if commits.height else _first_lake_commit(layout)
        snapshot_hint = "" if snapshot is None else f", or the snapshot's LSN {format_lsn(snapshot)}"
        raise AsOfError(
            f"that time is before the lake's first source commit ({_shown(first)} UTC)"
            f"{' and its snapshot was written later' if snapshot is not None else ''}",
            fix=f"give a later time{snapshot_hint}.",
        )
    watermark = _watermark(layout)
    if watermark is None:
        return lsn
    mark, recorded = watermark
    later = commits.filter((pl.col("_lsn") > lsn) & (pl.col("_lsn") <= mark))
    if later.height or (mark >= lsn and recorded >= moment):
        return lsn
    held = commits.filter(pl.col("_lsn") <= mark)
    reached = (
        f"its watermark {format_lsn(mark)} is the source as of {_shown(held['_commit_ts'][-1])} UTC"
        if held.height
        else f"its watermark {format_lsn(mark)} is not past the snapshot"
    )
    raise AsOfError(
        f"the lake has not caught up to that time yet ({reached} on every shard)",
        fix="give an earlier time, or wait for the pipeline.",
    )


def check_as_of(layout: LakeLayout, when, now: datetime | None = None) -> None:
    """Raise AsOfError when `when` (a version, a datetime, or ("lsn", LSN)) is outside what the
    lake holds: an LSN before its snapshot or past its newest event and marker, a time (source
    time) before its first commit, in the future or past what every shard holds (`lsn_at_time`),
    a version no table has reached."""
    from change_events import format_lsn
    from lake.progress import Progress

    tables = layout.tables(CHANGES)
    if not tables:
        raise AsOfError("the lake has no tables yet", fix="run the pipeline first.")
    if isinstance(when, tuple):
        lsn, bounds = when[1], []
        for table in tables:
            row = read_sql(open_table(layout, CHANGES, table), "SELECT min(_lsn) AS lo, max(_lsn) AS hi FROM t")
            lo, hi = row.column("lo")[0].as_py(), row.column("hi")[0].as_py()
            if lo is not None:
                bounds.append((lo, hi))
        if not bounds:
            raise AsOfError("the lake holds no events yet", fix="run the pipeline first.")
        first = min(lo for lo, _ in bounds)
        markers = Progress(layout).history().column("marker_lsn").to_pylist()
        last = max([hi for _, hi in bounds] + markers)
        if lsn < first:
            raise AsOfError(
                f"that LSN is older than the lake, which starts at {format_lsn(first)} (its snapshot)",
                fix=f"give an LSN from {format_lsn(first)} on.",
            )
        if lsn > last:
            raise AsOfError(
                f"the lake holds events up to {format_lsn(last)} only",
                fix="give an LSN up to that one, or wait for the pipeline to get there.",
            )
        return
    if isinstance(when, datetime):
        now = now or datetime.now(timezone.utc)
        if when > now:
            raise AsOfError(f"that time is in the future (it is {now:%Y-%m-%d %H:%M:%S} UTC now).")
        lsn_at_time(layout, when)
        return
    kind = STATE if layout.tables(STATE) else CHANGES
    newest = max(open_table(layout, kind, t).version() for t in layout.tables(kind))
    if when > newest:
        raise AsOfError(f"no lake table has version {when} (the newest version of any table is {newest}).")
