"""`tables/<table>`: the current state of one source table, merged by primary key.

The state table is a projection of the change log. After a shard appends to a table's log,
it merges the rows it appended (with `_batch` above what the state has consumed from that
shard) into the state, in one commit that also records, as app transactions, the shard's
consumed append number and high-water position. The commit rewrites the files that hold the
merged keys, one at a time (`lake.rewrite`: Delta's own MERGE holds every file it scans, so
its memory grew with the table), or is a Delta MERGE where that cannot (a schema change). So a crash between the log commit
and the merge is repaired by the next batch of that shard, which reads the missing appends
back from the log first.

Rules of the merge (guarantee 3, "order per row"):

- An event never overwrites a newer one: a row changes only when the incoming `(lsn, seq)`
  is greater than the row's `(_lsn, _seq)`.
- A delete leaves a tombstone (the key, `_deleted = true`, its position, other columns
  null), so a late older insert or update cannot resurrect the row. Readers of current
  state filter `NOT _deleted`.
- Unchanged-TOAST columns keep the row's previous value: the batch is first collapsed per
  key (`lake.collapse`), then the merge takes the target's value for columns no event of
  the batch carried.
- Late events (at or below the shard's state high-water: a retried put reordered them) are
  not folded into the row blindly: their keys are rebuilt from the whole change log, which
  already holds them, and the rebuilt row replaces the target's.
- A truncate at position P deletes every row older than P (later rows stay) and is
  remembered (app transactions `truncate:lsn/seq`): later-arriving events older than P are
  dropped.

Tables without a primary key have a change log only.

When: a merge may be put off and run beside the batches (`lake.merge_schedule`), so the state
may lag its log by a merge or two; every merge takes in all the shard's appends since.

Concurrency: two shards merging into one table race; the loser's commit fails with
CommitFailedError and the whole step (re-read positions, re-collapse, merge) runs again.
"""

from __future__ import annotations

import json
import time

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from lake.changelog import COMMIT_INFO_PREFIX, ChangeLog
from lake.collapse import collapse
from lake.delta_io import (
    ZERO,
    Position,
    ShardedTable,
    after_position,
    create_once,
    plain_types,
    position_transactions,
    quote_identifier,
    quote_literal,
    read_sql,
    retry_on_conflict,
)
from lake.layout import STATE
from lake.rewrite import rewrite_merge
from lake.schemas import STATE_META, data_columns, lake_schema, rewrite_with_types

TRUNCATE_APP = "truncate"
STATE_WRITER_APP = "state-writer"
"""An app transaction every commit to a state table carries (its version: the time in ms), so
that any two concurrent state commits conflict and the loser runs again: a merge that
rewrites files itself (`lake.rewrite`) is not checked by deltalake against rows another
writer inserted meanwhile."""
PRIMARY_KEY_PROPERTY = "totes.primaryKey"
"""Table property naming the key columns of a state table: a JSON list (tables written
before names could hold commas: the names comma-separated). See `key_columns`."""
_POSITION = ["_lsn", "_seq"]
MERGE_PIECE_ROWS = 100_000
"""The most change-log rows one merge takes in (whole appends, at least one): a merge holds
its rows, their collapse and DataFusion's join of them in memory, so a backlog put off is
merged in pieces of about this many rows, its memory bounded whatever the backlog's size
(bench/README.md, `load`). Each piece costs about a whole merge (see `lake.merge_schedule`)."""


def _after(position: Position) -> pl.Expr:
    return (pl.col("_lsn") > position.lsn) | ((pl.col("_lsn") == position.lsn) & (pl.col("_seq") > position.seq))


def _max_position(rows: pl.DataFrame) -> Position:
    if rows.height == 0:
        return ZERO
    last = rows.sort(_POSITION).row(-1, named=True)
    return Position(last["_lsn"], last["_seq"])


def state_writer() -> Transaction:
    """The `STATE_WRITER_APP` transaction of a commit to a state table."""
    return Transaction(STATE_WRITER_APP, time.time_ns() // 1_000_000)


def key_columns(value: str) -> list[str]:
    """The key columns a state table's PRIMARY_KEY_PROPERTY names."""
    return json.loads(value) if value.startswith("[") else value.split(",")


class StateTable(ShardedTable):
    """The current-state table of one source table."""

    kind = STATE

    def truncated_at(self) -> Position:
        return self.position(TRUNCATE_APP)

    def consumed(self, shard: str) -> int:
        """The shard's last change-log append merged into the state (0: none)."""
        return self.batch(shard)

    # -- the merge -----------------------------------------------------------------------
    def apply(self, shard: str, log: ChangeLog, keys: list[str], appended: pa.Table | None = None) -> int | None:
        """Merge the shard's log appends the state has not consumed yet. `appended` are the
        rows of the shard's latest append, if the caller still has them (saves a read).
        Returns the new state version, or None when there was nothing to do.

        Many appends behind are merged in pieces (`MERGE_PIECE_ROWS`), each one a commit that
        records what it consumed, so a crash between two pieces resumes after the last."""
        version = None
        while True:
            merged = retry_on_conflict(lambda: self._apply_once(shard, log, keys, appended))
            if merged is None:
                return version
            version, more = merged
            if not more:
                return version

    def _apply_once(
        self, shard: str, log: ChangeLog, keys: list[str], appended: pa.Table | None
    ) -> tuple[int, bool] | None:
        """One merge: the new state version and whether appends remain unconsumed after it."""
        target = self.refresh()
        consumed, appends = self.consumed(shard), log.appends(shard)
        if consumed >= appends:
            return None
        log_schema = pa.schema(log.delta.schema())
        columns = data_columns(log_schema)
        if target is not None:
            target = self._follow_log_types(target, log_schema)
        upto = appends
        if appended is not None and consumed == appends - 1 and appended.column("_batch")[0].as_py() == appends:
            rows = appended
        else:  # put off, or catching up after a failed merge: read the unconsumed appends back
            unconsumed = f"_shard = {quote_literal(shard)} AND _batch > {consumed}"
            upto = _piece_end(log, unconsumed, appends)
            rows = log.read(unconsumed + (f" AND _batch <= {upto}" if upto < appends else ""))
        rows = _align(pl.from_arrow(rows), columns, log_schema)

        truncated, high_water = self.truncated_at(), self.high_water(shard)
        truncate = max(truncated, _max_position(rows.filter(pl.col("_op") == "t")))
        source = self._merge_source(log, rows, keys, columns, log_schema, truncate, high_water)

        transactions = position_transactions(shard, max(high_water, _max_position(rows))) + [
            self.batch_transaction(shard, upto),
            state_writer(),
        ]
        wipe = truncate if truncate > truncated else None
        if wipe is not None:
            transactions += position_transactions(TRUNCATE_APP, wipe)
        properties = CommitProperties(
            app_transactions=transactions,
            custom_metadata={
                f"{COMMIT_INFO_PREFIX}operation": "MERGE",
                f"{COMMIT_INFO_PREFIX}shard": shard,
                f"{COMMIT_INFO_PREFIX}lsn_min": str(rows["_lsn"].min()),
                f"{COMMIT_INFO_PREFIX}lsn_max": str(rows["_lsn"].max()),
                f"{COMMIT_INFO_PREFIX}rows": str(source.num_rows),
            },
        )
        if target is None:
            target = self._create(source, columns, keys)
        before = target.version()
        if source.num_rows:
            self._merge(target, source, keys, columns, wipe, properties)
        elif wipe is not None:
            target.delete(predicate=f"NOT {after_position(wipe)}", commit_properties=properties)
        target.update_incremental()
        if target.version() == before:  # nothing changed, but the positions must be kept
            write_deltalake(
                target, pa.schema(target.schema()).empty_table(), mode="append", commit_properties=properties
            )
            target.update_incremental()
        return target.version(), upto < appends

    def _merge_source(
        self,
        log: ChangeLog,
        rows: pl.DataFrame,
        keys: list[str],
        columns: list[str],
        log_schema: pa.Schema,
        truncate: Position,
        high_water: Position,
    ) -> pa.Table:
        """One row per key to merge: rows a truncate wiped are dropped; keys with late rows
        (at or below the high-water) are rebuilt from the log; the others are collapsed."""
        data = rows.filter((pl.col("_op") != "t") & _after(truncate))
        late_keys = data.filter(~_after(high_water)).select(keys).unique()
        normal = collapse(data.join(late_keys, on=keys, how="anti"), keys, columns)
        sources = [normal.with_columns(pl.lit(False).alias("_rebuilt"))]
        if late_keys.height:
            history = _align(pl.from_arrow(self._key_history(log, keys, late_keys, truncate)), columns, log_schema)
            rebuilt = collapse(history.join(late_keys, on=keys, how="semi"), keys, columns, complete=True)
            sources.append(rebuilt.with_columns(pl.lit(True).alias("_rebuilt")))
        return plain_types(pl.concat(sources).to_arrow())

    def _follow_log_types(self, target: DeltaTable, log_schema: pa.Schema) -> DeltaTable:
        """Widen the state's columns the change log has widened (`lake.schemas`)."""
        state = lake_schema(target)
        widen = {
            name: log_schema.field(name).type
            for name in data_columns(state)
            if name in log_schema.names and state.field(name).type != log_schema.field(name).type
        }
        if widen:
            rewrite_with_types(target, widen, f"tables/{self.table}")
        return target

    def _create(self, source: pa.Table, columns: list[str], keys: list[str]) -> DeltaTable:
        fields = [source.schema.field(c) for c in columns] + list(STATE_META)
        create_once(self.layout, self.uri, pa.schema(fields), configuration={PRIMARY_KEY_PROPERTY: json.dumps(keys)})
        self.delta = None
        return self.refresh()

    def _merge(
        self,
        target: DeltaTable,
        source: pa.Table,
        keys: list[str],
        columns: list[str],
        wipe: Position | None,
        properties: CommitProperties,
    ) -> None:
        """Merge `source` (one row per key) into the state: by rewriting the files that hold
        its keys (`lake.rewrite`, memory of one file), else (a schema change) by Delta's MERGE."""
        if rewrite_merge(self.layout, self.uri, target, source, keys, wipe, properties):
            return
        q = quote_identifier
        existing = set(pa.schema(target.schema()).names)
        keep_target = "NOT t._deleted" + (f" AND {after_position(wipe, 't.')}" if wipe else "")
        updates = {}
        for column in columns:
            if column in keys:
                continue
            if column in existing:
                updates[q(column)] = (
                    f"CASE WHEN array_has(s._unchanged, {quote_literal(column)}) AND {keep_target} "
                    f"THEN t.{q(column)} ELSE s.{q(column)} END"
                )
            else:
                updates[q(column)] = f"s.{q(column)}"
        for column in STATE_META.names:
            updates[column] = f"s.{column}"
        inserts = {q(c): f"s.{q(c)}" for c in columns + STATE_META.names}
        newer = "(s._lsn > t._lsn OR (s._lsn = t._lsn AND (s._seq > t._seq OR (s._rebuilt AND s._seq = t._seq))))"
        merger = (
            target.merge(
                source,
                " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in keys),
                source_alias="s",
                target_alias="t",
                merge_schema=True,
                commit_properties=properties,
            )
            .when_matched_update(updates, predicate=newer)
            .when_not_matched_insert(inserts)
        )
        if wipe is not None:
            merger = merger.when_not_matched_by_source_delete(predicate=f"NOT {after_position(wipe, 't.')}")
        merger.execute()

    def _key_history(self, log: ChangeLog, keys: list[str], wanted: pl.DataFrame, truncate: Position) -> pa.Table:
        """Every change log row of the `wanted` keys after `truncate` (no truncates)."""
        where = f"_op <> 't' AND {after_position(truncate)}"
        if len(keys) == 1 and wanted.schema[keys[0]].is_integer():
            listed = ", ".join(str(v) for v in wanted[keys[0]].to_list())
            where += f" AND {quote_identifier(keys[0])} IN ({listed})"
        return log.read(where)


def _piece_end(log: ChangeLog, unconsumed: str, appends: int) -> int:
    """The last append of the first piece of the appends `unconsumed` (an SQL predicate)
    selects: whole appends up to MERGE_PIECE_ROWS rows, at least one; `appends` when they
    all fit. Counted in the log first (two columns read), so a piece's rows are all it reads."""
    per_append = f"SELECT _batch, count(*) AS n FROM t WHERE {unconsumed} GROUP BY _batch ORDER BY _batch"  # nosec B608 # a predicate the merge writes, never data
    counts = read_sql(log.delta, per_append)
    total, end = 0, None
    for batch, rows in zip(counts.column("_batch").to_pylist(), counts.column("n").to_pylist()):
        total += rows
        if end is not None and total > MERGE_PIECE_ROWS:
            return end
        end = batch
    return appends


def _align(rows: pl.DataFrame, columns: list[str], log_schema: pa.Schema) -> pl.DataFrame:
    """`rows` with every data column of the log (null where a row's schema lacked it)."""
    missing = [c for c in columns if c not in rows.columns]
    if not missing:
        return rows
    empty = pl.from_arrow(pa.table({c: pa.array([], log_schema.field(c).type) for c in missing}))
    return rows.with_columns(pl.lit(None, dtype=empty.schema[c]).alias(c) for c in missing)
