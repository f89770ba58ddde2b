"""The reader acting on its slot's snapshot lifecycle (lifecycle.py): prepare a slot to
stream from, take the snapshot (through the sink, or straight into the lake), resume one
cut off, make up for one cut off on the stream path, and note when it is durable.

Each step makes one lifecycle transition and saves the state before acting on what it
says (`Reader._save`), so a reader killed anywhere finds on restart the phase that says
what is left. Part of `Reader` (a mixin): it shares the reader's connection, sink and
position; the streaming loop and the per-table re-reads are in reader.py and rereads.py.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import psycopg2.extras

from cdc_reader import lifecycle
from cdc_reader.catalog import TableNotFound, read_table_schema
from cdc_reader.reader_state import ReaderState
from cdc_reader.snapshot import read_snapshot
from cdc_reader.source import database_name
from cdc_reader.source_setup import SlotLostError, check_slot, create_slot, drop_slot, ensure_publication, slot_state
from change_events import ChangeEvent, Op, format_lsn
from change_events.wire import EncodedChange

log = logging.getLogger("totes.reader")


class SnapshotPhases:
    """Reader methods that drive the slot's snapshot through its phases."""

    def prepare(self, conn) -> ReaderState:
        """Publication present, and a slot we can resume from (or none yet)."""
        cfg = self.config
        dropped = {}
        for table in (t for t in cfg.tables if f"{cfg.schema}.{t}" in cfg.personal_data.rules):
            try:  # a wrong rule is one sentence before anything is read; a missing table, below
                cfg.personal_data.check(read_table_schema(conn, cfg.schema, table))
            except TableNotFound:
                continue
            dropped[table] = cfg.personal_data.dropped(f"{cfg.schema}.{table}")
        ensure_publication(conn, cfg.publication, cfg.schema, cfg.tables, dropped=dropped)
        state = self._state
        slot = slot_state(conn, cfg.slot)
        if self._reset_pending:
            state, slot = self._reset(conn, state, slot)
        if slot is not None and slot.lost:
            raise SlotLostError.of_slot(cfg.slot, slot.why_lost())
        if slot is None and state.slot == cfg.slot and state.snapshot_lsn is None:
            # Killed while creating the slot, before it existed: nothing was read yet.
            phase = state.phase
            state = self._save(
                slot="",
                phase=lifecycle.slot_missing(phase)
                if isinstance(phase, lifecycle.SlotPending)
                else lifecycle.NoSlot(state.replaces_lost_slot),
            )
        if slot is None and state.slot == cfg.slot:
            # Even a cut-off snapshot may have rows downstream: a new one could leave rows
            # deleted in between alive there, so starting over is the operator's call.
            raise SlotLostError.of_slot(cfg.slot, "is gone (dropped, or invalidated for retaining too much WAL)")
        if (
            slot is not None
            and state.slot == cfg.slot
            and state.replaces_lost_slot
            and self._snapshot_cut_off(state)
            and not (isinstance(state.phase, lifecycle.Snapshotting) and state.phase.bulk)
        ):
            # A replacing snapshot through the sink cut off: take it again from a new slot.
            # Its truncates remove whatever of this one got downstream.
            log.warning("the replacing snapshot of slot %s was cut off: taking it again from a new slot", cfg.slot)
            drop_slot(conn, cfg.slot)
            state, slot = self._save(slot="", phase=lifecycle.reset(state.phase, slot_dropped=True)), None
        if slot is not None:
            check_slot(slot, database_name(self.dsn) or slot.database)
            if state.slot != cfg.slot:
                # Not created by this reader's state: resume from it, never drop it.
                log.info("resuming from existing slot %s", cfg.slot)
                state = self._save(slot=cfg.slot, phase=lifecycle.adopt())
            elif self._snapshot_cut_off(state):
                if isinstance(state.phase, lifecycle.SlotPending):
                    # Killed between creating the slot and noting where its snapshot stands:
                    # never confirmed, the slot still stands at its consistent point.
                    state = self._save(
                        phase=lifecycle.slot_created(state.phase, slot.confirmed_flush_lsn, bulk=self._bulk())
                    )
                if isinstance(state.phase, lifecycle.Snapshotting) and state.phase.bulk:
                    state = self._resume_bulk_snapshot(conn, state)
                else:
                    state = self._recover_snapshot(state)
            elif isinstance(state.phase, lifecycle.Recovering):
                log.warning(
                    "the snapshot of slot %s is being made up for: %d tables left to read again",
                    cfg.slot,
                    len([r for r in state.table_rereads if r.why == lifecycle.RECOVERY]),
                )
        return state

    def _reset(self, conn, state: ReaderState, slot):
        """`--reset`: a lost slot of ours is dropped, and the snapshot of the next one replaces
        every table downstream. A healthy slot is resumed from as its state says (a replacing
        snapshot cut off resumes, run again with `--reset` or not)."""
        self._reset_pending = False
        cfg = self.config
        if slot is not None and slot.lost:
            log.warning("dropping replication slot %s: it %s", cfg.slot, slot.why_lost())
            drop_slot(conn, cfg.slot)
            slot = None
        if slot is None:
            state = self._save(slot="", phase=lifecycle.reset(state.phase, slot_dropped=True))
            log.warning("starting over: a new slot, and a snapshot that replaces every table downstream")
        return state, slot

    def _snapshot_cut_off(self, state: ReaderState) -> bool:
        """Our slot's snapshot never reached the sink (or the lake) whole."""
        phase = state.phase
        if isinstance(phase, lifecycle.SlotPending):
            return True
        return isinstance(phase, lifecycle.Snapshotting) and (phase.bulk or self._handed_over < phase.lsn)

    def _recover_snapshot(self, state: ReaderState) -> ReaderState:
        """Keep the slot and read every table again while streaming from it.

        Part of the cut-off snapshot may be downstream already (stamped with the slot's
        consistent LSN), so a new snapshot from a new slot would leave rows deleted in
        between alive there. The slot was never confirmed past that LSN: streaming from it
        delivers every later change, deletes included, and the re-reads fill in the rows the
        snapshot never handed on. Nothing is confirmed until those re-reads are durable."""
        cfg = self.config
        tables = list(cfg.tables)
        log.warning(
            "the snapshot of slot %s was cut off before all of it was published: keeping the slot, "
            "streaming from %s and reading all %d tables again",
            cfg.slot,
            format_lsn(state.snapshot_lsn or 0),
            len(tables),
        )
        rereads = state.table_rereads
        for table in tables:
            rereads = lifecycle.queue(rereads, table, lifecycle.RECOVERY)
        return self._save(slot=cfg.slot, phase=lifecycle.cut_off(state.phase, tuple(tables)), table_rereads=rereads)

    def _settle_snapshot(self, state: ReaderState, durable: int) -> ReaderState:
        """The snapshot is done once it is durable downstream; only from then on is the slot
        confirmed. After a cut-off snapshot, that takes every recovery re-read being durable."""
        if lifecycle.snapshot_finished(state.phase) or state.snapshot_lsn is None:
            return state
        phase = lifecycle.durable(state.phase, durable, lifecycle.recovery_needed(state.table_rereads))
        if phase == state.phase:
            return state
        recovered = isinstance(state.phase, lifecycle.Recovering)
        state = self._save(slot=self.config.slot, phase=phase)
        if recovered:
            log.info(
                "every table was read again and is durable: the snapshot at %s is complete",
                format_lsn(state.snapshot_lsn),
            )
        else:
            log.info("snapshot at %s is durable", format_lsn(state.snapshot_lsn))
        return state

    def _bulk(self) -> bool:
        """Whether this slot's snapshot goes straight into the lake (bulk_snapshot.py), as
        it does whenever there is a lake. A snapshot that replaces a lost slot's tables sends
        only its truncates through the sink (`_replace_in_bulk`)."""
        return self.lake is not None

    def _snapshot(self, replication_cursor, conn) -> int:
        cfg = self.config
        replaces = self._state.replaces_lost_slot
        # Noted first, so a reader killed right after creating the slot knows the slot is its
        # own, with a snapshot still to make up for, rather than one to resume from as it is.
        pending = self._save(slot=cfg.slot, phase=lifecycle.note_slot(lifecycle.NoSlot(replaces)))
        bulk = self._bulk()
        new = create_slot(replication_cursor, cfg.slot)
        log.info(
            "slot %s created at %s; reading the snapshot%s",
            cfg.slot,
            format_lsn(new.consistent_lsn),
            " straight into the lake" if bulk else "",
        )
        schemas = [self._table_schema(conn, cfg.schema, t) for t in cfg.tables]
        conn.commit()
        self._column_types.clear()
        self._column_types.update({s.table: {c.name: c.type_name for c in s.columns} for s in schemas})
        if bulk:
            from cdc_reader.bulk_snapshot import plan_tables

            plans = plan_tables(conn, schemas, cfg.snapshot_chunk_pages)
            state = self._save(
                phase=lifecycle.slot_created(
                    pending.phase,
                    new.consistent_lsn,
                    bulk=True,
                    tables=tuple(p.schema.table for p in plans),
                    chunks=tuple(p.chunks for p in plans),
                    chunk_pages=cfg.snapshot_chunk_pages,
                )
            )
            if replaces:
                written_at = self._replace_in_bulk(conn, state.phase, plans)
            else:
                self._write_bulk(state.phase, plans, new.snapshot_name, new.consistent_lsn)
                self.sink.end_transaction(new.consistent_lsn)  # none of its events went this way
                written_at = new.consistent_lsn
            self._handed_over = new.consistent_lsn
            self._save(phase=lifecycle.written(state.phase, written_at))
            if written_at == new.consistent_lsn:  # else held below written_at, as after a resume
                self.sink.publish_watermark(new.consistent_lsn)
            return new.consistent_lsn

        state = self._save(phase=lifecycle.slot_created(pending.phase, new.consistent_lsn, bulk=False))
        first_seq = 0
        if replaces:
            # Everything downstream older than this snapshot goes; the snapshot's own rows
            # (later seq at the same LSN) stay. See replaces_lost_slot.
            self._add_truncates(schemas, new.consistent_lsn)
            first_seq = len(schemas)

        def emit(events: list[EncodedChange]) -> None:
            for event in events:
                self.sink.add(event)
            self.metrics.snapshot_events += len(events)

        read_snapshot(
            conn,
            new.snapshot_name,
            schemas,
            new.consistent_lsn,
            emit,
            chunk_rows=cfg.snapshot_chunk_rows,
            progress=self.snapshot_progress,
            first_seq=first_seq,
            policy=cfg.personal_data,
        )
        self.sink.end_transaction(new.consistent_lsn)
        self._handed_over = new.consistent_lsn
        self.sink.flush()
        # From here on a restart simply resumes from the slot; before, it resumes too but
        # reads every table again (`_recover_snapshot`).
        self._save(phase=lifecycle.written(state.phase))
        self.sink.publish_watermark(new.consistent_lsn)
        return new.consistent_lsn

    def _write_bulk(self, phase: lifecycle.Snapshotting, plans: list, snapshot_name: str, lsn: int) -> None:
        """The chunks of `plans` the lake lacks, read under `snapshot_name` and stamped `lsn`."""
        # The chunks are those the plan was made with (the phase notes them), whatever the settings say now.
        settings = replace(self.config.bulk, chunk_pages=phase.chunk_pages)
        bulk = settings.snapshot(self.dsn, self.lake, phase.lsn, plans, progress=self.snapshot_progress)
        bulk.chunk_hook = self.bulk_chunk_hook
        self.bulk_stats = bulk.stats
        written = bulk.run_under(snapshot_name, lsn)
        self.metrics.snapshot_events += bulk.stats.rows
        log.info("snapshot: %d chunks, %d rows written to the lake at %s", written, bulk.stats.rows, format_lsn(lsn))

    def _add_truncates(self, schemas: list, lsn: int) -> None:
        for seq, schema in enumerate(schemas):
            self.sink.add(ChangeEvent(schema, Op.TRUNCATE, lsn, seq, None, None, {}))

    def _replace_in_bulk(self, conn, phase: lifecycle.Snapshotting, plans: list) -> int:
        """A snapshot replacing a lost slot's tables, with a lake: a truncate of every table
        at the slot's consistent LSN L1 goes through the sink (flushed: it is not in the WAL,
        so a restart sends it again), and the rows straight into the lake, read under a
        temporary slot's snapshot at L2 > L1, as a resumed bulk snapshot's are (rows at L1
        would share their `(lsn, seq)` with the truncates). Downstream the truncates remove
        every row older than L1, a row deleted while no slot was reading among them; the
        rows at L2 are newer than them and than every change the stream brings between L1
        and L2. Returns L2: watermarks stay below it until the lake holds it all."""
        self._add_truncates([p.schema for p in plans], phase.lsn)
        self.sink.end_transaction(phase.lsn)
        self.sink.flush()
        self._handed_over = max(self._handed_over, phase.lsn)
        self._heartbeat(conn)  # a committed WAL record past L1, so L2 > L1
        return self._write_bulk_under_new_snapshot(phase, plans)

    def _write_bulk_under_new_snapshot(self, phase: lifecycle.Snapshotting, plans: list) -> int:
        """The chunks of `plans` the lake lacks, read under a new exported snapshot from a
        temporary slot and stamped with its LSN, which is returned."""
        cfg = self.config
        replication = self._connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
        try:
            temporary = create_slot(replication.cursor(), f"{cfg.slot}_resume", temporary=True)
            if temporary.consistent_lsn <= phase.lsn:
                raise RuntimeError(
                    f"a new snapshot at {format_lsn(temporary.consistent_lsn)} is not past the "
                    f"slot's {format_lsn(phase.lsn)}"
                )
            log.warning(
                "reading the chunks the lake lacks under a new snapshot at %s, then streaming from %s",
                format_lsn(temporary.consistent_lsn),
                format_lsn(phase.lsn),
            )
            self._write_bulk(phase, plans, temporary.snapshot_name, temporary.consistent_lsn)
        finally:
            replication.close()  # the temporary slot goes with its connection
        return temporary.consistent_lsn

    def _resume_bulk_snapshot(self, conn, state: ReaderState) -> ReaderState:
        """A bulk snapshot cut off (a kill): its exported snapshot is gone, the slot is not.
        The chunks the lake lacks are read under a new exported snapshot from a temporary
        slot, stamped with its LSN; the stream then starts from the slot's consistent point
        as before (bulk_snapshot.py says why that loses and doubles nothing)."""
        from cdc_reader.bulk_snapshot import TablePlan, plan_tables

        cfg = self.config
        phase = state.phase
        if phase.tables:
            by_name = {t: self._table_schema(conn, *t.split(".", 1)) for t in phase.tables}
            plans = [TablePlan(by_name[t], n) for t, n in zip(phase.tables, phase.chunks)]
        else:  # killed before the plan was noted: nothing was written under it
            plans = plan_tables(
                conn, [self._table_schema(conn, cfg.schema, t) for t in cfg.tables], cfg.snapshot_chunk_pages
            )
            phase = lifecycle.planned(
                phase, tuple(p.schema.table for p in plans), tuple(p.chunks for p in plans), cfg.snapshot_chunk_pages
            )
            self._save(phase=phase)
        conn.commit()
        self._column_types.update({p.schema.table: {c.name: c.type_name for c in p.schema.columns} for p in plans})
        log.warning("the snapshot of slot %s was cut off: resuming it", cfg.slot)
        if phase.replaces_lost_slot:
            written_at = self._replace_in_bulk(conn, phase, plans)
        else:
            written_at = self._write_bulk_under_new_snapshot(phase, plans)
        return self._save(slot=cfg.slot, phase=lifecycle.written(phase, written_at))
