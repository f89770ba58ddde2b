"""A whole stretch of business planned at once: new rows in their final state, and changes to older ones."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from totesys.business import SILENT_CHANGES, Bundle, World, new_design, purchase_bundle, sale_bundle
from totesys.facts import (
    DESIGNS_PER_WORKING_DAY,
    MINUTES_PER_WORKING_DAY,
    OPEN_HOUR,
    PURCHASES_PER_WORKING_DAY,
    SALES_PER_WORKING_DAY,
    SILENT_DESIGNS_PER_WORKING_DAY,
    SILENT_PURCHASES_PER_WORKING_DAY,
    SILENT_SALES_PER_WORKING_DAY,
    day_text,
    is_working_day,
    settlement_moment,
)


@dataclass
class Existing:
    """What the database already holds when a history is appended to it."""

    max_ids: dict[str, int] = field(default_factory=dict)  # sales_order, purchase_order, transaction, payment, design

    def max_id(self, table: str) -> int:
        return self.max_ids.get(table, 0)


@dataclass
class History:
    """A generated stretch of business: new rows (final state) plus changes to older rows."""

    start: datetime
    until: datetime
    rows: dict[str, list[dict]]
    # (table, id, {column: value}) for rows that were already in the database, in time order.
    existing_updates: list[tuple[str, int, dict]] = field(default_factory=list)
    # (moment, payment_date) batches that must also pay older unpaid payments due that day.
    existing_settlements: list[tuple[datetime, str]] = field(default_factory=list)
    silent_updates: int = 0
    settled: int = 0
    working_days: int = 0


class _HistoryState:
    """Rows created so far in this history, indexed the way the rules need them."""

    def __init__(self, world: World, existing: Existing):
        self.world = world
        self.existing = existing
        self.rows: dict[str, list[dict]] = {
            t: [] for t in ("design", "sales_order", "purchase_order", "transaction", "payment")
        }
        self.next_ids = {t: existing.max_id(t) + 1 for t in self.rows}
        self.unpaid_by_date: dict[str, list[dict]] = {}

    def take_id(self, table: str) -> int:
        value = self.next_ids[table]
        self.next_ids[table] = value + 1
        return value

    def add_order(self, make_bundle: Callable[..., Bundle], order_table: str, rng: random.Random, at: datetime) -> None:
        """A new order of `order_table` with its transaction and payment, on the next ids."""
        ids = self.take_id(order_table), self.take_id("transaction"), self.take_id("payment")
        self.add_bundle(make_bundle(rng, self.world, at, *ids))

    def add_bundle(self, bundle: Bundle) -> None:
        for table, row in bundle.rows():
            self.rows[table].append(row)
        self.unpaid_by_date.setdefault(bundle.payment["payment_date"], []).append(bundle.payment)

    def new_row(self, table: str, row_id: int) -> dict | None:
        """The row with this id if this history created it (ids are contiguous from max+1)."""
        index = row_id - self.existing.max_id(table) - 1
        return self.rows[table][index] if 0 <= index < len(self.rows[table]) else None


def plan_history(
    seed: int,
    world: World,
    start: datetime,
    until: datetime,
    existing: Existing | None = None,
    on_day: Callable[[int, int], None] | None = None,
) -> History:
    """Everything the business did between `start` and `until`, in the order it happened.

    What happens in a given minute depends only on the seed and that minute (each day has its
    own random stream, each busy minute its own), never on where the window starts. So a
    history written in several runs matches one written at once, and re-running over a
    stretch that is already there adds nothing. World.design_ids grows as designs are
    created; `on_day(done, total)` reports progress.
    """
    existing = existing or Existing()
    state = _HistoryState(world, existing)
    history = History(start=start, until=until, rows=state.rows)
    thresholds = [
        rate / MINUTES_PER_WORKING_DAY
        for rate in (
            DESIGNS_PER_WORKING_DAY,
            SALES_PER_WORKING_DAY,
            PURCHASES_PER_WORKING_DAY,
            SILENT_SALES_PER_WORKING_DAY,
            SILENT_PURCHASES_PER_WORKING_DAY,
            SILENT_DESIGNS_PER_WORKING_DAY,
        )
    ]
    silent_tables = ("sales_order", "purchase_order", "design")
    days = (until.date() - start.date()).days + 1
    for offset in range(days):
        day = start.date() + timedelta(days=offset)
        if on_day:
            on_day(offset, days)
        if not is_working_day(day):
            continue
        history.working_days += 1
        day_rng = random.Random(f"{seed}/day/{day.isoformat()}")  # nosec B311 # a seeded simulation must be reproducible
        batch_at = settlement_moment(day_rng, day)
        if start <= batch_at <= until:
            _settle(state, history, batch_at, day_text(day))
        opening = datetime.combine(day, time(OPEN_HOUR))
        for minute in range(MINUTES_PER_WORKING_DAY):
            # About 10 s past the minute; rows created in the same wake-up follow each other.
            # The draws are made whether or not the minute is in the window.
            at = opening + timedelta(minutes=minute, milliseconds=round(day_rng.gauss(10_000, 200)))
            hits = [day_rng.random() < p for p in thresholds]
            if at > until:
                break
            if at < start or not any(hits):
                continue
            rng = random.Random(f"{seed}/minute/{at.isoformat()}")  # nosec B311 # a seeded simulation must be reproducible
            design, sale, purchase = hits[:3]
            if design:
                row = new_design(rng, at, state.take_id("design"))
                state.rows["design"].append(row)
                world.design_ids.append(row["design_id"])
                at += timedelta(milliseconds=rng.randint(1, 5))
            if sale and at <= until:
                state.add_order(sale_bundle, "sales_order", rng, at)
                at += timedelta(milliseconds=rng.randint(1, 5))
            if purchase and at <= until:
                state.add_order(purchase_bundle, "purchase_order", rng, at)
            for table, hit in zip(silent_tables, hits[3:], strict=True):
                if hit:
                    _silent_update(rng, state, history, table, at)
    if on_day:
        on_day(days, days)
    return history


def _settle(state: _HistoryState, history: History, batch_at: datetime, due: str) -> None:
    # Payments created after today's batch (due the same day) stay unpaid for good.
    for payment in state.unpaid_by_date.pop(due, []):
        if payment["created_at"] < batch_at:
            payment["paid"] = True
            payment["last_updated"] = batch_at
            history.settled += 1
    if state.existing.max_id("payment"):
        history.existing_settlements.append((batch_at, due))


def _silent_update(rng: random.Random, state: _HistoryState, history: History, table: str, at: datetime) -> None:
    last_id = state.next_ids[table] - 1
    if last_id < 1:
        return
    row_id = rng.randint(1, last_id)
    row = state.new_row(table, row_id)
    changes = SILENT_CHANGES[table](rng, state.world, at)
    if row is not None:
        row.update(changes)
    else:
        history.existing_updates.append((table, row_id, changes))
    history.silent_updates += 1
