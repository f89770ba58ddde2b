"""The reader acting on its per-table re-reads (lifecycle.Reread) while it streams: which
table to read next and on which path, and what to note when a re-read is handed on, fails,
or is durable downstream.

Paths: with a lake, a table goes straight into it (bulk_reread.py), whatever asked for it
(`--resnapshot` or a column type change); without one (`--durability kinesis`), and for
the recovery of a cut-off snapshot through the sink (never one of the lake's), it goes
through the stream chunk by chunk between watermarks (resnapshot.py). Every step is saved
with the state before the reader acts on it (`Reader._save`), so a re-read asked for once
is finished even by a reader killed in the middle of it. Part of `Reader` (a mixin).
"""

from __future__ import annotations

import logging

from cdc_reader import lifecycle
from cdc_reader.assembler import SchemaChange
from cdc_reader.resnapshot import IncrementalSnapshot

log = logging.getLogger("totes.reader")


class TableRereads:
    """Reader methods that drive the per-table re-reads."""

    def _next_reread(self, conn):
        """Start the first queued re-read: (its Reread, an IncrementalSnapshot or a started
        BulkReread), or None when none is queued."""
        queued = lifecycle.next_queued(self._state.table_rereads)
        if queued is None:
            return None
        rereads, reread = lifecycle.start(self._state.table_rereads, queued)
        self._save(table_rereads=rereads)
        schema = self._table_schema(conn, self.config.schema, reread.table)
        conn.commit()
        if self._rereads_in_bulk(reread):
            return reread, self._start_bulk_reread(schema)
        log.info("re-reading %s while streaming (%s)", schema.table, reread.why)
        return reread, IncrementalSnapshot(schema, self.config.snapshot_chunk_rows, self.resnapshot_hook)

    def _rereads_in_bulk(self, reread: lifecycle.Reread) -> bool:
        return self.lake is not None and reread.why != lifecycle.RECOVERY

    def _start_bulk_reread(self, schema):
        from cdc_reader.bulk_reread import BulkReread

        cfg = self.config
        return BulkReread(
            schema, self._connect, self.lake, cfg.slot, dsn=self.dsn, bulk=cfg.bulk, chunk_hook=self.bulk_chunk_hook
        ).start()

    def _reread_handed_on(self, reread: lifecycle.Reread, qualified: str) -> None:
        """Its last rows went to the sink after the transaction that ended at `_handed_over`
        (stream path), or are in the lake (bulk path)."""
        self.reread.append(qualified)
        self._save(table_rereads=lifecycle.handed_on(self._state.table_rereads, reread, self._handed_over))

    def _reread_failed(self, reread: lifecycle.Reread) -> None:
        """Read the table again, first (a re-read is idempotent)."""
        self._save(table_rereads=lifecycle.failed(self._state.table_rereads, reread))

    def _finish_bulk_reread(self, reread: lifecycle.Reread, bulk_reread, *, quietly: bool = False) -> None:
        """Wait for a bulk re-read; one that failed is tried again on the next connection."""
        table = bulk_reread.schema.table
        try:
            bulk_reread.join()
        except Exception as error:  # noqa: BLE001 - the table is read again
            self._reread_failed(reread)
            if not quietly:
                raise
            log.warning("re-reading %s into the lake failed (%s): it is read again", table, error)
            return
        self._reread_handed_on(reread, table)

    def _settle_rereads(self, durable: int) -> None:
        settled = lifecycle.settle(self._state.table_rereads, durable)
        if settled != self._state.table_rereads:
            self._save(table_rereads=settled)

    def _schema_changed(self, change: SchemaChange) -> None:
        """Note the table's new column types; after a type change that may have rewritten
        values no event will carry, read the table again (schema_changes.py), after any
        re-read of it already under way."""
        rereads = self._state.table_rereads
        if change.rewritten:
            columns = ", ".join(f"{c} {old} -> {new}" for c, (old, new) in sorted(change.rewritten.items()))
            log.warning(
                "%s changed type (%s), which may have rewritten its values without row changes: re-reading it",
                change.table,
                columns,
            )
            self.metrics.schema_rereads += 1
            rereads = lifecycle.queue(rereads, change.table.partition(".")[2], lifecycle.TYPE_CHANGE)
        self._save(table_rereads=rereads)  # and the column types
