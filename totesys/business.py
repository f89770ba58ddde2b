"""The Terrific Totes business's moving tables as pure rules: rows in, rows out, no database.

Everything here is driven by `random.Random` streams derived from a seed plus the timestamps the
caller passes, so the same seed and the same clock give the same rows byte for byte.
`totesys.simulator` turns these rows into SQL; `totesys.static_tables` draws the static tables,
`totesys.history` a whole stretch of business, `totesys.facts` holds the names and rates.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from totesys.facts import DESIGN_NAMES, DIRECTORIES, HUGE_TEXT_BYTES, SALES_CHANNELS, day_text


@dataclass
class World:
    """What new rows may refer to: the ids that exist, and the optional chaos column."""

    address_ids: list[int]
    counterparty_ids: list[int]
    currency_ids: list[int]
    staff_ids: list[int]
    design_ids: list[int]
    sales_payment_type_id: int = 1
    purchase_payment_type_id: int = 3
    sales_extra_column: str | None = None


@dataclass
class Bundle:
    """An order with its transaction and payment: always written together, in one transaction."""

    order_table: str
    order: dict
    transaction: dict
    payment: dict

    def rows(self) -> list[tuple[str, dict]]:
        return [(self.order_table, self.order), ("transaction", self.transaction), ("payment", self.payment)]


def new_design(rng: random.Random, at: datetime, design_id: int | None = None) -> dict:
    name = rng.choice(DESIGN_NAMES)
    drawn = at.date() - timedelta(days=rng.randint(30, 800))
    suffix = "".join(rng.choices(string.ascii_lowercase + string.digits, k=4))
    return {
        "design_id": design_id,
        "created_at": at,
        "design_name": name,
        "file_location": rng.choice(DIRECTORIES),
        "file_name": f"{name.lower()}-{drawn:%Y%m%d}-{suffix}.json",
        "last_updated": at,
    }


def _date_after(rng: random.Random, at: datetime, max_days: int) -> str:
    """A date uniformly 0..max_days days after `at`, as the real 'agreed' dates are."""
    return day_text((at + timedelta(seconds=rng.uniform(0, max_days * 86400))).date())


def _account(rng: random.Random) -> int:
    return rng.randint(10_000_000, 99_999_999)


def _terms(rng: random.Random, world: World, at: datetime) -> dict:
    """The columns every order ends with: currency, agreed dates and delivery place (drawn in this order)."""
    return {
        "currency_id": rng.choice(world.currency_ids),
        "agreed_delivery_date": _date_after(rng, at, 7),
        "agreed_payment_date": _date_after(rng, at, 6),
        "agreed_delivery_location_id": rng.choice(world.address_ids),
    }


def _transaction(transaction_id: int | None, at: datetime, order_table: str, order_id: int | None) -> dict:
    """The SALE transaction of a sales order, or the PURCHASE one of a purchase order."""
    sale = order_table == "sales_order"
    return {
        "transaction_id": transaction_id,
        "transaction_type": "SALE" if sale else "PURCHASE",
        "sales_order_id": order_id if sale else None,
        "purchase_order_id": None if sale else order_id,
        "created_at": at,
        "last_updated": at,
    }


def _payment(rng, world: World, at, payment_id, transaction_id, order, amount, type_id) -> dict:
    return {
        "payment_id": payment_id,
        "created_at": at,
        "last_updated": at,
        "transaction_id": transaction_id,
        "counterparty_id": order["counterparty_id"],
        "payment_amount": amount,
        "currency_id": order["currency_id"],
        "payment_type_id": type_id,
        "paid": False,
        "payment_date": order["agreed_payment_date"],
        "company_ac_number": _account(rng),
        "counterparty_ac_number": _account(rng),
    }


def sale_bundle(
    rng: random.Random,
    world: World,
    at: datetime,
    sales_order_id: int | None,
    transaction_id: int | None,
    payment_id: int | None,
) -> Bundle:
    """A sales order, its SALE transaction and its SALES_RECEIPT payment, all stamped `at`."""
    order = {
        "sales_order_id": sales_order_id,
        "created_at": at,
        "last_updated": at,
        "design_id": rng.choice(world.design_ids),
        "staff_id": rng.choice(world.staff_ids),
        "counterparty_id": rng.choice(world.counterparty_ids),
        "units_sold": rng.randint(1000, 100_000),
        "unit_price": Decimal(rng.randint(200, 400)).scaleb(-2),
        **_terms(rng, world, at),
    }
    if world.sales_extra_column:
        order[world.sales_extra_column] = rng.choice(SALES_CHANNELS)
    transaction = _transaction(transaction_id, at, "sales_order", sales_order_id)
    amount = order["units_sold"] * order["unit_price"]
    payment = _payment(rng, world, at, payment_id, transaction_id, order, amount, world.sales_payment_type_id)
    return Bundle("sales_order", order, transaction, payment)


def purchase_bundle(
    rng: random.Random,
    world: World,
    at: datetime,
    purchase_order_id: int | None,
    transaction_id: int | None,
    payment_id: int | None,
) -> Bundle:
    """A purchase order, its PURCHASE transaction and its PURCHASE_PAYMENT payment."""
    order = {
        "purchase_order_id": purchase_order_id,
        "created_at": at,
        "last_updated": at,
        "staff_id": rng.choice(world.staff_ids),
        "counterparty_id": rng.choice(world.counterparty_ids),
        "item_code": item_code(rng),
        "item_quantity": rng.randint(1, 999),
        "item_unit_price": Decimal(rng.randint(300, 100_000)).scaleb(-2),
        **_terms(rng, world, at),
    }
    transaction = _transaction(transaction_id, at, "purchase_order", purchase_order_id)
    amount = order["item_quantity"] * order["item_unit_price"]
    payment = _payment(rng, world, at, payment_id, transaction_id, order, amount, world.purchase_payment_type_id)
    return Bundle("purchase_order", order, transaction, payment)


def item_code(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_uppercase + string.digits, k=7))


def _moved_delivery_date(rng: random.Random, at: datetime) -> str:
    """Silently moved delivery dates land around the time of the change, not the order."""
    return day_text(at.date() + timedelta(days=rng.randint(0, 30)))


def silent_sales_changes(rng: random.Random, world: World, at: datetime) -> dict:
    """One to two of the columns the real business edits in place (never amounts or parties)."""
    makers: dict[str, Callable[[], object]] = {
        "design_id": lambda: rng.choice(world.design_ids),
        "staff_id": lambda: rng.choice(world.staff_ids),
        "agreed_delivery_location_id": lambda: rng.choice(world.address_ids),
        "agreed_delivery_date": lambda: _moved_delivery_date(rng, at),
    }
    return {column: makers[column]() for column in rng.sample(sorted(makers), rng.randint(1, 2))}


def silent_purchase_changes(rng: random.Random, world: World, at: datetime) -> dict:
    makers: dict[str, Callable[[], object]] = {
        "staff_id": lambda: rng.choice(world.staff_ids),
        "item_code": lambda: item_code(rng),
        "agreed_delivery_date": lambda: _moved_delivery_date(rng, at),
        "agreed_delivery_location_id": lambda: rng.choice(world.address_ids),
    }
    return {column: makers[column]() for column in rng.sample(sorted(makers), rng.randint(1, 2))}


def silent_design_changes(rng: random.Random, current: str | None = None) -> dict:
    choices = [d for d in DIRECTORIES if d != current]
    return {"file_location": rng.choice(choices)}


SILENT_CHANGES = {
    "sales_order": lambda rng, world, at: silent_sales_changes(rng, world, at),
    "purchase_order": lambda rng, world, at: silent_purchase_changes(rng, world, at),
    "design": lambda rng, world, at: silent_design_changes(rng),
}


def huge_text(rng: random.Random, size: int = HUGE_TEXT_BYTES) -> str:
    """A directory-like path of random characters: incompressible, so TOAST keeps it out of line."""
    alphabet = string.ascii_letters + string.digits
    parts: list[str] = []
    total = 0
    while total < size:
        part = "".join(rng.choices(alphabet, k=rng.randint(8, 24)))
        parts.append(part)
        total += len(part) + 1
    return "/" + "/".join(parts)
