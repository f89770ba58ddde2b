"""The simulated Terrific Totes business, writing into a real totesys database.

`totesys.business` and `totesys.history` decide what happens; this module turns it into SQL
(with `totesys.table_sql`; the live events and chaos kinds are `totesys.live`):

* `seed_history` writes the static tables (once) and N days of past business with COPY in
  one transaction, explicit ids, then moves the serial sequences past them. It continues from
  whatever the database already holds: the history starts after the newest row there and ids
  continue, so running it twice never duplicates anything.
* `run_live` keeps the business going at about R events per second with wall-clock
  timestamps, one database transaction per event, until stopped. With `chaos=True` it also
  deletes rows, writes TOASTed values and updates other columns of those rows, imports
  thousands of rows in one transaction and, once, adds a column to sales_order.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from cdc_reader.source import connect
from totesys import facts
from totesys.history import Existing, plan_history
from totesys.live import CHAOS_EVERY, LiveEvent, LiveRun
from totesys.schema import has_schema, schema_sql
from totesys.simulator_report import HistoryReport, Progress, SimulatorStats, history_summary
from totesys.static_tables import static_tables
from totesys.table_sql import (
    MOVING_TABLES,
    STATIC_TABLES,
    WRITE_ORDER,
    SimulatorError,
    advance_sequence,
    copy_rows,
    count_rows,
    high_water,
    load_world,
    newest_row,
    update_row,
)

__all__ = ["HistoryReport", "LiveEvent", "Simulator", "SimulatorError", "SimulatorStats", "history_summary", "utc_now"]


def utc_now() -> datetime:
    """Wall-clock time as totesys stores it: naive UTC, millisecond precision."""
    return facts.ms(datetime.now(timezone.utc).replace(tzinfo=None))


# -- the simulator ------------------------------------------------------------------------


class Simulator:
    """The business, attached to one totesys database.

    `seed` makes the history reproducible: the same seed and `until` on an empty database
    write the same rows byte for byte. Live mode makes the same choices for the same seed
    too, stamped with the clock. Without a seed one is drawn at random (see `.seed`).
    """

    def __init__(self, dsn: str, seed: int | None = None, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.dsn = dsn
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.clock = clock
        self.stats = SimulatorStats()
        self._live_runs = 0
        self.created_schema = False
        self._conn = None

    # -- connection ----------------------------------------------------------------------
    def connection(self):
        """The simulator's connection; creates the totesys schema if the database lacks it."""
        if self._conn is None or self._conn.closed:
            conn = connect(self.dsn, application_name="totes-simulator")
            with conn:
                if not has_schema(conn):
                    with conn.cursor() as cur:
                        cur.execute(schema_sql())
                    self.created_schema = True
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- static tables -------------------------------------------------------------------
    def seed_static(self) -> bool:
        """Write the static tables unless they are there; True when written now."""
        conn = self.connection()
        with conn, conn.cursor() as cur:
            return self._seed_static(cur)

    def _seed_static(self, cur) -> bool:
        counts = {t: count_rows(cur, t) for t in STATIC_TABLES}
        filled = [t for t, n in counts.items() if n]
        if len(filled) == len(STATIC_TABLES):
            if not count_rows(cur, "design"):  # static data from elsewhere, but no catalogue yet
                copy_rows(cur, "design", static_tables(self.seed)["design"])
                advance_sequence(cur, "design")
            return False
        if filled:
            raise SimulatorError(
                f"The static tables are only partly filled ({', '.join(filled)} have rows, "
                f"{', '.join(t for t in STATIC_TABLES if t not in filled)} are empty)",
                fix="empty them all or fill them all before simulating.",
            )
        tables = static_tables(self.seed)
        if count_rows(cur, "design"):
            del tables["design"]
        for table in WRITE_ORDER:
            if table in tables:
                copy_rows(cur, table, tables[table])
                advance_sequence(cur, table)
        return True

    # -- history -------------------------------------------------------------------------
    def seed_history(self, days: float, until: datetime | None = None, *, progress: bool = False) -> HistoryReport:
        """Static tables (if missing) plus `days` days of business ending at `until`.

        On a database that already has rows the history starts after the newest of them, so
        nothing is duplicated and ids continue. One transaction: all of it or nothing.
        """
        until = facts.ms(until or self.clock())
        conn = self.connection()
        with conn, conn.cursor() as cur:
            seeded = self._seed_static(cur)
            floor = newest_row(cur)
            start = until - timedelta(days=days)
            if floor is not None and start <= floor:
                start = floor + timedelta(milliseconds=1)
            if days <= 0 or start > until:
                return HistoryReport(seeded, None, until, {}, 0, 0, 0)
            world = load_world(cur)
            existing = Existing({t: high_water(cur, t) for t in MOVING_TABLES})
            with Progress(progress) as bar:
                task = bar.add("simulating business days", total=(until.date() - start.date()).days + 1)
                history = plan_history(
                    self.seed, world, start, until, existing, on_day=lambda done, total: bar.update(task, done)
                )
                total_rows = sum(len(rows) for rows in history.rows.values())
                write = bar.add("writing rows", total=total_rows) if total_rows else None
                for table in WRITE_ORDER:
                    rows = history.rows.get(table)
                    if rows:
                        copy_rows(cur, table, rows)
                        advance_sequence(cur, table)
                        if write is not None:
                            bar.advance(write, len(rows))
                for table, row_id, changes in history.existing_updates:
                    update_row(cur, table, row_id, changes)
                settled_before = 0
                for moment, due in history.existing_settlements:
                    cur.execute(
                        "UPDATE payment SET paid = true, last_updated = %s "
                        "WHERE payment_date = %s AND NOT paid AND created_at < %s "
                        "AND payment_id <= %s",
                        (moment, due, moment, existing.max_id("payment")),
                    )
                    settled_before += cur.rowcount
            return HistoryReport(
                seeded_static=seeded,
                start=start,
                until=until,
                rows={t: len(r) for t, r in history.rows.items() if r},
                silent_updates=history.silent_updates,
                settled=history.settled + settled_before,
                working_days=history.working_days,
            )

    # -- live ----------------------------------------------------------------------------
    def run_live(
        self,
        rate: float,
        duration: float | None = None,
        events: int | None = None,
        chaos: bool = False,
        stop_event: threading.Event | None = None,
        on_event: Callable[[LiveEvent], None] | None = None,
        chaos_every: int = CHAOS_EVERY,
    ) -> SimulatorStats:
        """About `rate` events per second until stopped, `duration` seconds or `events` events.

        Business hours do not apply: events happen whenever this runs, stamped with the wall
        clock. Each event is one transaction; stopping (stop_event, Ctrl-C) never leaves one
        half done. Returns `self.stats`.
        """
        stop = stop_event or threading.Event()
        conn = self.connection()
        with conn, conn.cursor() as cur:
            self._seed_static(cur)
            live = LiveRun(cur, self.seed, chaos, chaos_every, started_at=self.clock(), run=self._live_runs)
            self._live_runs += 1
        interval = 1.0 / rate if rate and rate > 0 else 0.0
        t0 = time.monotonic()
        if self.stats.events == 0:
            self.stats.started = t0
        done = 0
        try:
            while not stop.is_set():
                if events is not None and done >= events:
                    break
                now = time.monotonic()
                if duration is not None and now - t0 >= duration:
                    break
                delay = t0 + done * interval - now
                if delay > 0:
                    if duration is not None:
                        delay = min(delay, t0 + duration - now)
                    if stop.wait(delay):
                        break
                    continue
                if delay < -1.0:  # fell behind (slow events): carry on at the rate, no burst
                    t0 = now - done * interval
                with conn, conn.cursor() as cur:
                    event = live.step(cur, done, self.clock())
                self.stats.record(event)
                done += 1
                if on_event is not None:
                    on_event(event)
        except KeyboardInterrupt:
            # The event's `with conn` already rolled back; make sure nothing is left open.
            try:
                if not conn.closed:
                    conn.rollback()
            except Exception:  # noqa: BLE001 - the connection may be unusable after an interrupt
                self.close()
        return self.stats
