"""The live business: one event per transaction, weighted like a working day, with chaos on demand."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from psycopg2 import sql

from totesys import business, facts
from totesys.business import Bundle
from totesys.table_sql import (
    MOVING_TABLES,
    WRITE_ORDER,
    insert_rows,
    load_world,
    next_ids,
    primary_key,
    random_id,
    sequence_of,
    update_row,
)

# Live events, relative weights (about the real mix of a working day).
LIVE_WEIGHTS = {
    "sales_order": facts.SALES_PER_WORKING_DAY,
    "purchase_order": facts.PURCHASES_PER_WORKING_DAY,
    "design": facts.DESIGNS_PER_WORKING_DAY,
    "silent_update": 1.0,
    "settlement": 1.5,
}
SILENT_WEIGHTS = {
    "sales_order": facts.SILENT_SALES_PER_WORKING_DAY,
    "purchase_order": facts.SILENT_PURCHASES_PER_WORKING_DAY,
    "design": facts.SILENT_DESIGNS_PER_WORKING_DAY,
}
# With chaos on, every CHAOS_EVERY-th event is a chaos event: each kind once, in this order
# (so a short run already shows all of them), then picked by weight. The column is added once.
CHAOS_EVERY = 8
CHAOS_FIRST = ("toast_insert", "delete_payment", "toast_update", "delete_sales_order", "add_column", "bulk_import")
CHAOS_WEIGHTS = {"delete_payment": 3, "delete_sales_order": 3, "toast_insert": 2, "toast_update": 2, "bulk_import": 0.5}
TOASTED_BYTES = 8000  # a file_location at least this long was written by toast_insert


@dataclass(frozen=True)
class LiveEvent:
    """One committed business event."""

    kind: str
    at: datetime
    rows: int
    detail: str = ""


class LiveRun:
    """State of one live run: what exists, and which chaos kinds are still to show."""

    def __init__(self, cur, seed: int, chaos: bool, chaos_every: int, started_at: datetime, run: int = 0):
        # The seed alone: a live run's choices replay whatever the clock (its dates follow the clock).
        self.rng = random.Random(f"{seed}/live/{run}")  # nosec B311 # a seeded simulation must be reproducible
        self.world = load_world(cur)
        self.sequences = {t: sequence_of(cur, t) for t in MOVING_TABLES}
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
        so_ids = next_ids(cur, self.sequences["sales_order"], sales)
        po_ids = next_ids(cur, self.sequences["purchase_order"], purchases)
        tx_ids = iter(next_ids(cur, self.sequences["transaction"], sales + purchases))
        pay_ids = iter(next_ids(cur, self.sequences["payment"], sales + purchases))
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
                insert_rows(cur, table, by_table[table])
        return 3 * len(bundles)

    def _sales_order(self, cur, at: datetime) -> LiveEvent:
        return LiveEvent("sales_order", at, self._bundles(cur, at, 1, 0))

    def _purchase_order(self, cur, at: datetime) -> LiveEvent:
        return LiveEvent("purchase_order", at, self._bundles(cur, at, 0, 1))

    def _design(self, cur, at: datetime, row: dict | None = None, kind: str = "design") -> LiveEvent:
        row = row or business.new_design(self.rng, at)
        row["design_id"] = next_ids(cur, self.sequences["design"], 1)[0]
        insert_rows(cur, "design", [row])
        self.world.design_ids.append(row["design_id"])
        return LiveEvent(kind, at, 1, f"design {row['design_id']}")

    def _silent_update(self, cur, at: datetime) -> LiveEvent:
        """Change an existing row in place without moving last_updated, as the real DB does."""
        table = _weighted(self.rng, SILENT_WEIGHTS)
        row_id = random_id(cur, self.rng, table)
        if row_id is None or (table == "design" and row_id in self.toasted):
            # A TOASTed design keeps its big value: the chaos run is there to show it.
            return self._sales_order(cur, at)
        if table == "design":
            cur.execute("SELECT file_location FROM design WHERE design_id = %s", (row_id,))
            changes = business.silent_design_changes(self.rng, cur.fetchone()[0])
        else:
            changes = business.SILENT_CHANGES[table](self.rng, self.world, at)
        update_row(cur, table, row_id, changes)
        return LiveEvent("silent_update", at, 1, f"{table} {row_id}: {', '.join(changes)}")

    def _settlement(self, cur, at: datetime) -> LiveEvent:
        """Pay what is due on working days up to today.

        Like the daily batch: a payment is paid if it was created before its due day's batch,
        or during this live run (live mode has no office hours), and before this moment.
        Payments due on a weekend stay unpaid. With nothing due, the business takes an order instead.
        """
        due = facts.payable_dates(at.date())
        if due:
            cur.execute(
                "UPDATE payment SET paid = true, last_updated = %s "
                "WHERE NOT paid AND payment_date = ANY(%s) AND created_at < %s "
                "AND (created_at >= %s OR created_at < payment_date::date + %s::time)",
                (at, due, at, self.started_at, facts.SETTLEMENT_TIME),
            )
            if cur.rowcount > 0:
                return LiveEvent("settlement", at, cur.rowcount, f"{cur.rowcount} payments paid")
        return self._sales_order(cur, at)

    # -- chaos ---------------------------------------------------------------------------
    def _delete(self, cur, at: datetime, table: str, kind: str) -> LiveEvent:
        row_id = random_id(cur, self.rng, table)
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
                sql.Identifier(facts.CHAOS_TABLE), sql.Identifier(facts.CHAOS_COLUMN)
            )
        )
        self.world.sales_extra_column = facts.CHAOS_COLUMN
        return LiveEvent("add_column", at, 0, f"{facts.CHAOS_TABLE}.{facts.CHAOS_COLUMN}")

    def _bulk_import(self, cur, at: datetime) -> LiveEvent:
        """A back-office import: a thousand orders and their payments in a single transaction."""
        sales = round(facts.BULK_IMPORT_ORDERS * 0.7)
        rows = self._bundles(cur, at, sales, facts.BULK_IMPORT_ORDERS - sales)
        return LiveEvent("bulk_import", at, rows, f"{facts.BULK_IMPORT_ORDERS} orders")


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]
