"""The simulated Terrific Totes business, writing into a real totesys database.

Why one file (~750 lines): the history seeder and the live events share one world model and
one transaction discipline; the chaos kinds are the part to move out next.

`totesys.business` decides what happens; this module turns it into SQL:

* `seed_history` writes the static tables (once) and N days of past business with COPY in
  one transaction, explicit ids, then moves the serial sequences past them. It continues from
  whatever the database already holds: the history starts after the newest row there and ids
  continue, so running it twice never duplicates anything.
* `run_live` keeps the business going at about R events per second with wall-clock
  timestamps, one database transaction per event, until stopped. With `chaos=True` it also
  deletes rows, writes TOASTed values and updates other columns of those rows, imports
  thousands of rows in one transaction and, once, adds a column to sales_order.

Identifiers are always composed with psycopg2.sql.
"""

from __future__ import annotations

import bisect
import io
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from psycopg2 import sql
from psycopg2.extras import execute_values

from totesys import business
from totesys.business import Bundle, Existing, World
from cdc_reader.source import connect
from totesys.schema import TABLES, has_schema, schema_sql
from change_events.errors import Kind, TotesError

STATIC_TABLES = ("address", "counterparty", "currency", "department", "staff", "payment_type")
MOVING_TABLES = ("design", "sales_order", "purchase_order", "transaction", "payment")
WRITE_ORDER = TABLES  # parents before children

# Live events, relative weights (about the real mix of a working day).
LIVE_WEIGHTS = {
    "sales_order": business.SALES_PER_WORKING_DAY,
    "purchase_order": business.PURCHASES_PER_WORKING_DAY,
    "design": business.DESIGNS_PER_WORKING_DAY,
    "silent_update": 1.0,
    "settlement": 1.5,
}
SILENT_WEIGHTS = {
    "sales_order": business.SILENT_SALES_PER_WORKING_DAY,
    "purchase_order": business.SILENT_PURCHASES_PER_WORKING_DAY,
    "design": business.SILENT_DESIGNS_PER_WORKING_DAY,
}
# With chaos on, every CHAOS_EVERY-th event is a chaos event: each kind once, in this order
# (so a short run already shows all of them), then picked by weight. The column is added once.
CHAOS_EVERY = 8
CHAOS_FIRST = ("toast_insert", "delete_payment", "toast_update", "delete_sales_order", "add_column", "bulk_import")
CHAOS_WEIGHTS = {"delete_payment": 3, "delete_sales_order": 3, "toast_insert": 2, "toast_update": 2, "bulk_import": 0.5}
TOASTED_BYTES = 8000  # a file_location at least this long was written by toast_insert


class SimulatorError(TotesError, RuntimeError):
    """The simulator cannot work on this database; str() is one sentence that says why."""

    kind = Kind.SOURCE


def utc_now() -> datetime:
    """Wall-clock time as totesys stores it: naive UTC, millisecond precision."""
    return business.ms(datetime.now(timezone.utc).replace(tzinfo=None))


def primary_key(table: str) -> str:
    return f"{table}_id"


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveEvent:
    """One committed business event."""

    kind: str
    at: datetime
    rows: int
    detail: str = ""


@dataclass
class SimulatorStats:
    """Events done so far by kind, for summaries and a live events/s display.

    Written by the thread that runs the business and read by a display thread, so reads go
    through copies taken in single C-level calls (no "mutated during iteration").
    """

    by_kind: Counter = field(default_factory=Counter)
    events: int = 0
    rows: int = 0
    started: float = field(default_factory=time.monotonic)
    last: LiveEvent | None = None
    _recent: deque = field(default_factory=lambda: deque(maxlen=10_000), repr=False)

    def record(self, event: LiveEvent) -> None:
        self.by_kind[event.kind] += 1
        self.events += 1
        self.rows += event.rows
        self.last = event
        self._recent.append(time.monotonic())

    def counts(self) -> dict[str, int]:
        """Events by kind, most frequent first (a copy)."""
        return dict(self.by_kind.most_common())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def events_per_second(self, window: float = 10.0) -> float:
        """Rate over the last `window` seconds (or since the start, if that is shorter)."""
        now = time.monotonic()
        span = min(window, now - self.started)
        if span <= 0:
            return 0.0
        recent = tuple(self._recent)
        return (len(recent) - bisect.bisect_left(recent, now - span)) / span


@dataclass(frozen=True)
class HistoryReport:
    """What seed_history wrote."""

    seeded_static: bool
    start: datetime | None
    until: datetime
    rows: dict[str, int]
    silent_updates: int
    settled: int
    working_days: int


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
        counts = {t: _count(cur, t) for t in STATIC_TABLES}
        filled = [t for t, n in counts.items() if n]
        if len(filled) == len(STATIC_TABLES):
            if not _count(cur, "design"):  # static data from elsewhere, but no catalogue yet
                _copy_rows(cur, "design", business.static_tables(self.seed)["design"])
                _advance_sequence(cur, "design")
            return False
        if filled:
            raise SimulatorError(
                f"The static tables are only partly filled ({', '.join(filled)} have rows, "
                f"{', '.join(t for t in STATIC_TABLES if t not in filled)} are empty): "
                "empty them all or fill them all before simulating."
            )
        tables = business.static_tables(self.seed)
        if _count(cur, "design"):
            del tables["design"]
        for table in WRITE_ORDER:
            if table in tables:
                _copy_rows(cur, table, tables[table])
                _advance_sequence(cur, table)
        return True

    # -- history -------------------------------------------------------------------------
    def seed_history(self, days: float, until: datetime | None = None, *, progress: bool = False) -> HistoryReport:
        """Static tables (if missing) plus `days` days of business ending at `until`.

        On a database that already has rows the history starts after the newest of them, so
        nothing is duplicated and ids continue. One transaction: all of it or nothing.
        """
        until = business.ms(until or self.clock())
        conn = self.connection()
        with conn, conn.cursor() as cur:
            seeded = self._seed_static(cur)
            floor = _newest_row(cur)
            start = until - timedelta(days=days)
            if floor is not None and start <= floor:
                start = floor + timedelta(milliseconds=1)
            if days <= 0 or start > until:
                return HistoryReport(seeded, None, until, {}, 0, 0, 0)
            world = _load_world(cur)
            existing = Existing({t: _high_water(cur, t) for t in MOVING_TABLES})
            with _Progress(progress) as bar:
                task = bar.add("simulating business days", total=(until.date() - start.date()).days + 1)
                history = business.plan_history(
                    self.seed, world, start, until, existing, on_day=lambda done, total: bar.update(task, done)
                )
                total_rows = sum(len(rows) for rows in history.rows.values())
                write = bar.add("writing rows", total=total_rows) if total_rows else None
                for table in WRITE_ORDER:
                    rows = history.rows.get(table)
                    if rows:
                        _copy_rows(cur, table, rows)
                        _advance_sequence(cur, table)
                        if write is not None:
                            bar.advance(write, len(rows))
                for table, row_id, changes in history.existing_updates:
                    _update(cur, table, row_id, changes)
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
            live = _Live(cur, self.seed, chaos, chaos_every, started_at=self.clock(), run=self._live_runs)
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


# -- live events ------------------------------------------------------------------------


class _Live:
    """State of one live run: what exists, and which chaos kinds are still to show."""

    def __init__(self, cur, seed: int, chaos: bool, chaos_every: int, started_at: datetime, run: int = 0):
        # The seed alone: a live run's choices replay whatever the clock (its dates follow the clock).
        self.rng = random.Random(f"{seed}/live/{run}")  # nosec B311 # a seeded simulation must be reproducible
        self.world = _load_world(cur)
        self.sequences = {t: _sequence(cur, t) for t in MOVING_TABLES}
        self.chaos = chaos
        self.chaos_every = max(1, chaos_every)
        self.chaos_todo = list(CHAOS_FIRST)
        self.started_at = started_at
        cur.execute(
            "SELECT design_id FROM design WHERE octet_length(file_location) >= %s ORDER BY design_id", (TOASTED_BYTES,)
        )
        self.toasted = [r[0] for r in cur.fetchall()]
        if self.world.sales_extra_column:
            self.chaos_todo.remove("add_column")

    def step(self, cur, index: int, at: datetime) -> LiveEvent:
        if self.chaos and index % self.chaos_every == self.chaos_every - 1:
            kind = self.chaos_todo.pop(0) if self.chaos_todo else _weighted(self.rng, CHAOS_WEIGHTS)
        else:
            kind = _weighted(self.rng, LIVE_WEIGHTS)
        return getattr(self, f"_{kind}")(cur, at)

    # -- ordinary business ---------------------------------------------------------------
    def _bundles(self, cur, at: datetime, sales: int, purchases: int) -> int:
        """Orders with their transactions and payments, all stamped `at`; returns rows written."""
        so_ids = _next_ids(cur, self.sequences["sales_order"], sales)
        po_ids = _next_ids(cur, self.sequences["purchase_order"], purchases)
        tx_ids = iter(_next_ids(cur, self.sequences["transaction"], sales + purchases))
        pay_ids = iter(_next_ids(cur, self.sequences["payment"], sales + purchases))
        bundles: list[Bundle] = []
        for so_id in so_ids:
            bundles.append(business.sale_bundle(self.rng, self.world, at, so_id, next(tx_ids), next(pay_ids)))
        for po_id in po_ids:
            bundles.append(business.purchase_bundle(self.rng, self.world, at, po_id, next(tx_ids), next(pay_ids)))
        by_table: dict[str, list[dict]] = {}
        for bundle in bundles:
            for table, row in bundle.rows():
                by_table.setdefault(table, []).append(row)
        for table in WRITE_ORDER:
            if table in by_table:
                _insert_rows(cur, table, by_table[table])
        return 3 * len(bundles)

    def _sales_order(self, cur, at: datetime) -> LiveEvent:
        return LiveEvent("sales_order", at, self._bundles(cur, at, 1, 0))

    def _purchase_order(self, cur, at: datetime) -> LiveEvent:
        return LiveEvent("purchase_order", at, self._bundles(cur, at, 0, 1))

    def _design(self, cur, at: datetime, row: dict | None = None, kind: str = "design") -> LiveEvent:
        row = row or business.new_design(self.rng, at)
        row["design_id"] = _next_ids(cur, self.sequences["design"], 1)[0]
        _insert_rows(cur, "design", [row])
        self.world.design_ids.append(row["design_id"])
        return LiveEvent(kind, at, 1, f"design {row['design_id']}")

    def _silent_update(self, cur, at: datetime) -> LiveEvent:
        """Change an existing row in place without moving last_updated, as the real DB does."""
        table = _weighted(self.rng, SILENT_WEIGHTS)
        row_id = _random_id(cur, self.rng, table)
        if row_id is None or (table == "design" and row_id in self.toasted):
            # A TOASTed design keeps its big value: the chaos run is there to show it.
            return self._sales_order(cur, at)
        if table == "design":
            cur.execute("SELECT file_location FROM design WHERE design_id = %s", (row_id,))
            changes = business.silent_design_changes(self.rng, cur.fetchone()[0])
        else:
            changes = business.SILENT_CHANGES[table](self.rng, self.world, at)
        _update(cur, table, row_id, changes)
        return LiveEvent("silent_update", at, 1, f"{table} {row_id}: {', '.join(changes)}")

    def _settlement(self, cur, at: datetime) -> LiveEvent:
        """Pay what is due on working days up to today.

        Like the daily batch: a payment is paid if it was created before its due day's batch,
        or during this live run (live mode has no office hours), and before this moment.
        Payments due on a weekend stay unpaid. With nothing due, the business takes an order instead.
        """
        due = business.payable_dates(at.date())
        if due:
            cur.execute(
                "UPDATE payment SET paid = true, last_updated = %s "
                "WHERE NOT paid AND payment_date = ANY(%s) AND created_at < %s "
                "AND (created_at >= %s OR created_at < payment_date::date + %s::time)",
                (at, due, at, self.started_at, business.SETTLEMENT_TIME),
            )
            if cur.rowcount > 0:
                return LiveEvent("settlement", at, cur.rowcount, f"{cur.rowcount} payments paid")
        return self._sales_order(cur, at)

    # -- chaos ---------------------------------------------------------------------------
    def _delete(self, cur, at: datetime, table: str, kind: str) -> LiveEvent:
        row_id = _random_id(cur, self.rng, table)
        if row_id is None:
            return self._sales_order(cur, at)
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE {} = %s").format(sql.Identifier(table), sql.Identifier(primary_key(table))),
            (row_id,),
        )
        return LiveEvent(kind, at, cur.rowcount, f"{table} {row_id}")

    def _delete_payment(self, cur, at: datetime) -> LiveEvent:
        return self._delete(cur, at, "payment", "delete_payment")

    def _delete_sales_order(self, cur, at: datetime) -> LiveEvent:
        """transaction.sales_order_id is ON DELETE SET NULL: the delete cascades as an update."""
        return self._delete(cur, at, "sales_order", "delete_sales_order")

    def _toast_insert(self, cur, at: datetime) -> LiveEvent:
        """A design whose file_location is too big and too random to stay in the row."""
        row = business.new_design(self.rng, at)
        row["file_location"] = business.huge_text(self.rng)
        event = self._design(cur, at, row, kind="toast_insert")
        self.toasted.append(row["design_id"])
        return event

    def _toast_update(self, cur, at: datetime) -> LiveEvent:
        """Update other columns of a TOASTed row: the WAL then omits the unchanged big value."""
        if not self.toasted:
            return self._toast_insert(cur, at)
        design_id = self.rng.choice(self.toasted)
        fresh = business.new_design(self.rng, at)
        cur.execute(
            "UPDATE design SET design_name = %s, file_name = %s WHERE design_id = %s",
            (fresh["design_name"], fresh["file_name"], design_id),
        )
        if cur.rowcount == 0:
            self.toasted.remove(design_id)
            return self._toast_insert(cur, at)
        return LiveEvent("toast_update", at, 1, f"design {design_id}")

    def _add_column(self, cur, at: datetime) -> LiveEvent:
        """Once: a new nullable column on sales_order, filled in every later sales order."""
        if self.world.sales_extra_column:
            return self._toast_update(cur, at)
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(
                sql.Identifier(business.CHAOS_TABLE), sql.Identifier(business.CHAOS_COLUMN)
            )
        )
        self.world.sales_extra_column = business.CHAOS_COLUMN
        return LiveEvent("add_column", at, 0, f"{business.CHAOS_TABLE}.{business.CHAOS_COLUMN}")

    def _bulk_import(self, cur, at: datetime) -> LiveEvent:
        """A back-office import: a thousand orders and their payments in a single transaction."""
        sales = round(business.BULK_IMPORT_ORDERS * 0.7)
        rows = self._bundles(cur, at, sales, business.BULK_IMPORT_ORDERS - sales)
        return LiveEvent("bulk_import", at, rows, f"{business.BULK_IMPORT_ORDERS} orders")


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


# -- SQL helpers --------------------------------------------------------------------------


def _count(cur, table: str) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return cur.fetchone()[0]


def _ids(cur, table: str) -> list[int]:
    pk = sql.Identifier(primary_key(table))
    cur.execute(sql.SQL("SELECT {} FROM {} ORDER BY {}").format(pk, sql.Identifier(table), pk))
    return [r[0] for r in cur.fetchall()]


def _has_column(cur, table: str, column: str) -> bool:
    cur.execute(
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s AND column_name = %s",
        (table, column),
    )
    return cur.fetchone() is not None


def _load_world(cur) -> World:
    cur.execute("SELECT payment_type_name::text, payment_type_id FROM payment_type")
    types = dict(cur.fetchall())
    world = World(
        address_ids=_ids(cur, "address"),
        counterparty_ids=_ids(cur, "counterparty"),
        currency_ids=_ids(cur, "currency"),
        staff_ids=_ids(cur, "staff"),
        design_ids=_ids(cur, "design"),
        sales_payment_type_id=types.get(business.SALES_RECEIPT, 1),
        purchase_payment_type_id=types.get(business.PURCHASE_PAYMENT, 3),
        sales_extra_column=(
            business.CHAOS_COLUMN if _has_column(cur, business.CHAOS_TABLE, business.CHAOS_COLUMN) else None
        ),
    )
    missing = [
        name
        for name, ids in (
            ("address", world.address_ids),
            ("counterparty", world.counterparty_ids),
            ("currency", world.currency_ids),
            ("staff", world.staff_ids),
            ("design", world.design_ids),
        )
        if not ids
    ]
    if missing:
        raise SimulatorError(f"Orders need rows in {', '.join(missing)}, which are empty.")
    return world


def _newest_row(cur) -> datetime | None:
    """The latest moment any row was created or updated (history continues after it)."""
    parts = [
        sql.SQL("SELECT max(greatest(created_at, last_updated)) AS m FROM {}").format(sql.Identifier(t))
        for t in MOVING_TABLES
    ]
    cur.execute(sql.SQL("SELECT max(m) FROM ({}) AS newest").format(sql.SQL(" UNION ALL ").join(parts)))
    return cur.fetchone()[0]


def _sequence(cur, table: str) -> str:
    cur.execute("SELECT pg_get_serial_sequence(%s, %s)", (sql.Identifier(table).as_string(cur), primary_key(table)))
    name = cur.fetchone()[0]
    if name is None:
        raise SimulatorError(f"Table {table} has no serial sequence on {primary_key(table)}.")
    return name


def _high_water(cur, table: str) -> int:
    """The highest id ever handed out: max(id), or the sequence if rows were deleted since."""
    cur.execute(
        sql.SQL(
            "SELECT greatest(coalesce(max({}), 0), coalesce(pg_sequence_last_value(%s::regclass), 0)) FROM {}"
        ).format(sql.Identifier(primary_key(table)), sql.Identifier(table)),
        (_sequence(cur, table),),
    )
    return cur.fetchone()[0]


def _advance_sequence(cur, table: str) -> None:
    """After explicit ids: the next default id follows the largest one (never goes back)."""
    sequence = _sequence(cur, table)
    cur.execute(
        sql.SQL(
            "SELECT setval(%(seq)s::regclass, greatest(coalesce(max({}), 0), "
            "coalesce(pg_sequence_last_value(%(seq)s::regclass), 0), 1)) FROM {}"
        ).format(sql.Identifier(primary_key(table)), sql.Identifier(table)),
        {"seq": sequence},
    )


def _next_ids(cur, sequence: str, count: int) -> list[int]:
    if count <= 0:
        return []
    cur.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", (sequence, count))
    return [r[0] for r in cur.fetchall()]


def _random_id(cur, rng: random.Random, table: str) -> int | None:
    """A uniformly drawn existing id (the next one up if the drawn id was deleted)."""
    pk, name = sql.Identifier(primary_key(table)), sql.Identifier(table)
    cur.execute(sql.SQL("SELECT max({}) FROM {}").format(pk, name))
    highest = cur.fetchone()[0]
    if highest is None:
        return None
    cur.execute(
        sql.SQL("SELECT {pk} FROM {t} WHERE {pk} >= %s ORDER BY {pk} LIMIT 1").format(pk=pk, t=name),
        (rng.randint(1, highest),),
    )
    row = cur.fetchone()
    return row[0] if row else None


def _update(cur, table: str, row_id: int, changes: dict) -> None:
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(column)) for column in changes)
    cur.execute(
        sql.SQL("UPDATE {} SET {} WHERE {} = %s").format(
            sql.Identifier(table), assignments, sql.Identifier(primary_key(table))
        ),
        [*changes.values(), row_id],
    )


def _columns(rows: list[dict]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c) for c in rows[0])


def _insert_rows(cur, table: str, rows: list[dict]) -> None:
    query = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(sql.Identifier(table), _columns(rows))
    execute_values(cur, query.as_string(cur), [tuple(r.values()) for r in rows], page_size=1000)


def _copy_rows(cur, table: str, rows: list[dict]) -> None:
    """COPY from an in-memory buffer: the fast way to write a long history."""
    if not rows:
        return
    buffer = io.StringIO()
    buffer.writelines("\t".join(map(_copy_text, row.values())) + "\n" for row in rows)
    buffer.seek(0)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), _columns(rows))
    cur.copy_expert(statement.as_string(cur), buffer)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value).translate(_COPY_ESCAPES)


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def add(self, description: str, total: int) -> int:
        return self._bar.add_task(description, total=total) if self._bar else 0

    def update(self, task: int, completed: int) -> None:
        if self._bar:
            self._bar.update(task, completed=completed)

    def advance(self, task: int, amount: int) -> None:
        if self._bar:
            self._bar.advance(task, amount)


def history_summary(report: HistoryReport) -> Iterable[tuple[str, int]]:
    """(table, rows added) in write order, for display."""
    return [(t, report.rows[t]) for t in WRITE_ORDER if report.rows.get(t)]
