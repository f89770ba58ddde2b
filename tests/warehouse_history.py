"""A mixed history of a small totesys, with sync points, and the lake and warehouse it makes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lake import LakeLayout
from tests.scripted_source import Row, ScriptedSource, insert_staff, write_lake


@dataclass
class History:
    source: ScriptedSource
    points: list[tuple[int, dict[str, dict[str, Row]]]]
    """Sync points: an LSN and a copy of the source's rows as of it."""
    kept: dict[str, set[str]]
    """Dimension rows the scenario expects kept after their source row is gone."""

    @property
    def final_lsn(self) -> int:
        return self.points[-1][0]


def _copy_rows(source: ScriptedSource) -> dict[str, dict[str, Row]]:
    return {t: {k: dict(r) for k, r in rows.items()} for t, rows in source.rows.items()}


_PARTY = dict(counterparty_id="1", currency_id="1")
"""Who a scripted order or payment is with, and its currency, where a step does not say."""
_ORDER = dict(staff_id="1", agreed_delivery_location_id="3")
_AGREED_DATES = dict(agreed_delivery_date="2024-11-25", agreed_payment_date="2024-11-22")
_ORDER_LINES = {
    "sales_order": dict(design_id="1", units_sold="1500", unit_price="2.75"),
    "purchase_order": dict(item_code="AB12CDE", item_quantity="17", item_unit_price="310.40"),
}
_PAYMENT = dict(payment_amount="4125.00", payment_type_id="1", paid="f", payment_date="2024-11-22")
_ACCOUNTS = dict(company_ac_number="12345678", counterparty_ac_number="87654321")


def _insert_now(src: ScriptedSource, table: str, id_: int, *defaults: dict, **values: str | None) -> Row:
    """Row `id_` of `table`, made and last updated now: the `defaults`, then `values` over them."""
    now = src.now()
    row = {f"{table}_id": str(id_), "created_at": now, "last_updated": now}
    for default in defaults:
        row.update(default)
    return src.insert(table, **{**row, **values})


def _order(src: ScriptedSource, table: str, id_: int, **values: str) -> Row:
    """Sales or purchase order `id_` (`table`)."""
    return _insert_now(src, table, id_, _PARTY, _ORDER, _AGREED_DATES, _ORDER_LINES[table], **values)


def _transaction(
    src: ScriptedSource, id_: int, sales_order: int | None = None, purchase_order: int | None = None
) -> Row:
    """The transaction of one sales order or of one purchase order."""
    return _insert_now(
        src,
        "transaction",
        id_,
        transaction_type="SALE" if sales_order is not None else "PURCHASE",
        sales_order_id=None if sales_order is None else str(sales_order),
        purchase_order_id=None if purchase_order is None else str(purchase_order),
    )


def _payment(src: ScriptedSource, id_: int, transaction: int, **values: str) -> Row:
    return _insert_now(src, "payment", id_, _PARTY, _PAYMENT, _ACCOUNTS, transaction_id=str(transaction), **values)


def mixed_history() -> History:
    """A small totesys lived through inserts, updates (silent, projected and not), unchanged
    TOAST columns, a department rename, an address change, deletes, a truncate and dates
    outside the calendar; sync points every few transactions."""
    src = ScriptedSource()
    points = []

    def point() -> None:
        points.append((src.lsn, _copy_rows(src)))

    seeded = "2022-11-03 14:20:49.962"

    def insert_seeded(table: str, **values: str | None) -> None:
        """A row of the first snapshot, made and last updated when the shop opened."""
        src.insert(table, **values, created_at=seeded, last_updated=seeded)

    with src.transaction(snapshot=True):
        for i, (name, location) in enumerate([("Sales", "Manchester"), ("Dispatch", "Leds"), ("Finance", None)], 1):
            insert_seeded("department", department_id=str(i), department_name=name, location=location, manager=f"M{i}")
        for i in range(1, 5):
            insert_seeded(
                "address",
                address_id=str(i),
                address_line_1=f"{i} Tote Street",
                address_line_2=None if i % 2 else f"Flat {i}",
                district=None if i == 3 else "Avon",
                city=f"City {i}",
                postal_code=f"{i}0000",
                country="Ruritania",
                phone=f"0123 45678{i}",
            )
        for i, address in [(1, 1), (2, 2), (3, 2)]:
            insert_seeded(
                "counterparty",
                counterparty_id=str(i),
                counterparty_legal_name=f"Party {i} Ltd",
                legal_address_id=str(address),
                commercial_contact="Ann",
                delivery_contact="Bob",
            )
        for i, code in enumerate(["GBP", "USD", "EUR"], 1):
            insert_seeded("currency", currency_id=str(i), currency_code=code)
        for i in (1, 2):
            insert_seeded(
                "design",
                design_id=str(i),
                design_name=f"Design {i}",
                file_location="/usr/ports",
                file_name=f"d{i}-20221103-ab12.json",
            )
        for i, department in [(1, 1), (2, 2), (3, 3)]:
            insert_staff(src, i, f"First{i}", f"Last{i}", f"first{i}.last{i}@terrifictotes.com", department, at=seeded)
        for i, name in enumerate(["SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"], 1):
            insert_seeded("payment_type", payment_type_id=str(i), payment_type_name=name)
        for i in (1, 2, 3):
            _order(src, "sales_order", i, staff_id=str(i), counterparty_id=str(i), design_id=str(1 + i % 2))
            _transaction(src, i, sales_order=i)
            _payment(src, i, i, counterparty_id=str(i))
        for i in (1, 2):
            # purchase order 2 was agreed to be paid before the calendar starts
            _order(
                src,
                "purchase_order",
                i,
                staff_id="2",
                counterparty_id="2",
                **({"agreed_payment_date": "2022-10-15"} if i == 2 else {}),
            )
            _transaction(src, 3 + i, purchase_order=i)
            _payment(src, 3 + i, 3 + i, payment_type_id="3", counterparty_id="2")
    point()

    with src.transaction():  # a new sale
        sale_4 = dict(_order(src, "sales_order", 4, staff_id="2", counterparty_id="3", currency_id="2"))
        _transaction(src, 6, sales_order=4)
        _payment(src, 6, 6, counterparty_id="3", currency_id="2")
    with src.transaction():  # a projected update that moves last_updated
        src.update("sales_order", 1, units_sold="2500", last_updated=src.now())
    with src.transaction():  # a silent update: projected columns only, last_updated unchanged
        src.update("sales_order", 2, design_id="2", agreed_delivery_date="2024-12-31")
    point()

    with src.transaction():  # only non-projected columns change: no new fact row, same dimension
        src.update("payment", 1, company_ac_number="11112222")
        src.update("counterparty", 1, commercial_contact="Carol")
    with src.transaction():  # the WAL omits unchanged TOASTed values
        src.update("sales_order", 3, unchanged=("agreed_delivery_date", "agreed_payment_date"), units_sold="3999")
        src.update("design", 1, unchanged=("file_location", "file_name"), design_name="Design One")
    with src.transaction():  # a department rename reaches its staff
        src.update("department", 1, department_name="Sales & Marketing", last_updated=src.now())
    with src.transaction():  # an address change reaches locations and counterparties
        src.update("address", 2, city="New City", address_line_2=None, last_updated=src.now())
    point()

    with src.transaction():  # the morning payment batch
        src.update("payment", 2, paid="t", last_updated=src.now())
    with src.transaction():  # a cancelled sale, children first
        src.delete("payment", 6)
        src.delete("transaction", 6)
        src.delete("sales_order", 4)
    with src.transaction():  # a new employee sells
        insert_staff(src, 4, "Temp", "Worker", "temp.worker@terrifictotes.com", department=2)
        _order(src, "sales_order", 5, staff_id="4", design_id="2", agreed_delivery_date="2026-03-01")
    with src.transaction():  # ... and leaves: the sale moves, staff 4 is deleted (history still names them)
        src.update("sales_order", 5, staff_id="1", last_updated=src.now())
        src.delete("staff", 4)
    point()

    with src.transaction():  # a design that never sold comes and goes
        src.insert(
            "design",
            design_id="3",
            created_at=src.now(),
            design_name="Gone",
            file_location="/tmp",
            file_name="gone.json",
            last_updated=src.now(),
        )
    with src.transaction():
        src.delete("design", 3)
    with src.transaction():  # the payments table is emptied
        src.truncate("payment")
    with src.transaction():  # life goes on
        _payment(src, 7, 1, payment_amount="6875.00")
        src.update("sales_order", 1, units_sold="1500", last_updated=src.now())
    with src.transaction():  # an update that changes nothing
        src.update("sales_order", 2)
    with src.transaction():  # a deleted sale comes back with the same id and values
        src.insert("sales_order", **sale_4)
    point()
    return History(src, points, kept={"dim_staff": {"4"}, "dim_transaction": {"6"}})


def synced_history(home: Path) -> tuple[History, LakeLayout]:
    """The whole scripted history in a lake under `home`, and a DuckDB warehouse beside it
    (`home/warehouse.duckdb`) synced point by point to its end."""
    from warehouse_sync import sync_once
    from warehouse_sync.targets import open_target

    history = mixed_history()
    layout = write_lake(home / "lake", history.source.events)
    target = open_target(str(home / "warehouse.duckdb"))
    try:
        for lsn, _ in history.points:
            sync_once(layout, target, lsn)
    finally:
        target.close()
    return history, layout
