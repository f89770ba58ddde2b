"""The Terrific Totes business as pure rules: rows in, rows out, no database.

Why one file (~610 lines): the business's rules for all 11 tables, each a small pure
function over the same seeded streams; split by table when it grows further.

Everything here is driven by `random.Random` streams derived from a seed (and, for the static
tables, a seeded Faker) plus the timestamps the caller passes, so the same seed and the same
clock give the same rows byte for byte. `totesys.simulator` turns these rows into SQL. The rules follow
shared/reference/totesys-schema.md sections 2 and 5 (how the real generator behaves).

Timestamps are naive datetimes in UTC with millisecond precision, like `timestamp(3)`.
Agreed dates and payment dates are TEXT `YYYY-MM-DD`, as in the real database.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from faker import Faker

# -- fixed facts of the business ------------------------------------------------------------

# The real database was seeded in one go on 2022-11-03; the second group of tables followed
# a moment later.
SEED_MOMENT = datetime(2022, 11, 3, 14, 20, 49, 962000)
SEED_MOMENT_PEOPLE = datetime(2022, 11, 3, 14, 20, 51, 563000)

# fmt: off
DEPARTMENT_NAMES = (
    "Sales", "Purchasing", "Production", "Dispatch", "Finance", "Facilities", "Communications",
    "HR",
)
# The source really stores Dispatch's location misspelt; downstream code has to cope with it.
DISPATCH_LOCATION = "Leds"
OFFICE_LOCATIONS = ("Manchester", "Leeds")
CURRENCY_CODES = ("GBP", "USD", "EUR")
PAYMENT_TYPE_NAMES = ("SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND")
SALES_RECEIPT, PURCHASE_PAYMENT = "SALES_RECEIPT", "PURCHASE_PAYMENT"
DESIGN_NAMES = (
    "Bronze", "Concrete", "Cotton", "Fresh", "Frozen", "Granite", "Metal", "Plastic", "Rubber",
    "Soft", "Steel", "Wooden",
)
# Design files live in ordinary Unix-style directories.
DIRECTORIES = (
    "/Applications", "/Library", "/Network", "/System", "/Users", "/bin", "/boot", "/boot/defaults",
    "/dev", "/etc", "/etc/defaults", "/etc/mail", "/etc/namedb", "/etc/periodic", "/etc/ppp",
    "/home", "/home/user", "/home/user/dir", "/lib", "/lost+found", "/media", "/mnt", "/net",
    "/opt", "/opt/bin", "/opt/include", "/opt/lib", "/opt/sbin", "/opt/share", "/private",
    "/private/tmp", "/private/var", "/proc", "/rescue", "/root", "/sbin", "/selinux", "/srv",
    "/sys", "/tmp", "/usr", "/usr/X11R6", "/usr/bin", "/usr/include", "/usr/lib", "/usr/libdata",  # nosec B108 # made-up file paths the simulator writes as text, never opened
    "/usr/libexec", "/usr/local/bin", "/usr/local/src", "/usr/obj", "/usr/ports", "/usr/sbin",
    "/usr/share", "/usr/src", "/var", "/var/log", "/var/mail", "/var/spool", "/var/tmp", "/var/yp",  # nosec B108 # made-up file paths the simulator writes as text, never opened
)
# fmt: on
EMAIL_DOMAIN = "terrifictotes.com"

STATIC_COUNTS = {"address": 30, "counterparty": 20, "staff": 20}
LEGAL_ADDRESSES = 14  # 20 counterparties share 14 legal addresses
INITIAL_DESIGNS = 10  # the catalogue the business started with

# Orders arrive Monday to Friday, 08:00-18:59; the generator wakes once a minute (about 10 s
# past it) and creates each kind of row with a small probability.
OPEN_HOUR, CLOSE_HOUR = 8, 19
MINUTES_PER_WORKING_DAY = (CLOSE_HOUR - OPEN_HOUR) * 60
SALES_PER_WORKING_DAY = 21.0
PURCHASES_PER_WORKING_DAY = 9.0
DESIGNS_PER_WORKING_DAY = 1.0
# Silent in-place updates (last_updated does NOT move), per working day.
SILENT_SALES_PER_WORKING_DAY = 0.4
SILENT_PURCHASES_PER_WORKING_DAY = 0.25
SILENT_DESIGNS_PER_WORKING_DAY = 0.35
# Each working day at 07:55:11 every unpaid payment due that day is marked paid. Payments due
# on a weekend, or created after that day's batch, are never paid: that is where the ~61 % of
# paid past-due payments comes from.
SETTLEMENT_TIME = time(7, 55, 11)

# Optional column that chaos mode adds once, then fills in every new sales order.
CHAOS_TABLE, CHAOS_COLUMN = "sales_order", "sales_channel"
SALES_CHANNELS = ("web", "phone", "email", "trade show", "marketplace")
HUGE_TEXT_BYTES = 12_000  # well past the 2 kB TOAST threshold and one 8 kB page
BULK_IMPORT_ORDERS = 1000


def ms(moment: datetime) -> datetime:
    """Truncate to milliseconds, the precision of timestamp(3)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def is_working_day(day: date) -> bool:
    return day.weekday() < 5


def day_text(day: date) -> str:
    return day.isoformat()


def settlement_moment(rng: random.Random, day: date) -> datetime:
    """When the day's payment batch runs: 07:55:11 and a fraction that varies per day."""
    return datetime.combine(day, SETTLEMENT_TIME) + timedelta(milliseconds=rng.randint(600, 900))


def payable_dates(today: date, lookback_days: int = 7) -> list[str]:
    """Working-day payment dates up to `today` that a settlement may still pay (newest first)."""
    days = (today - timedelta(days=n) for n in range(lookback_days + 1))
    return [day_text(d) for d in days if is_working_day(d)]


# -- the static tables --------------------------------------------------------------------


def static_tables(seed: int) -> dict[str, list[dict]]:
    """address, counterparty, currency, department, staff, payment_type and the first designs.

    Generated with Faker seeded by `seed` (so reproducible) and explicit ids from 1, in the
    shape section 2 of the reference describes (nullable columns NULL in the same share).
    """
    rng = random.Random(f"{seed}/static")  # nosec B311 # a seeded simulation must be reproducible
    fake = Faker("en_US")
    fake.seed_instance(seed)
    uk = Faker("en_GB")
    uk.seed_instance(seed)
    at, people_at = SEED_MOMENT, SEED_MOMENT_PEOPLE
    stamp = {"created_at": at, "last_updated": at}
    people_stamp = {"created_at": people_at, "last_updated": people_at}

    n_addresses = STATIC_COUNTS["address"]
    countries: list[str] = []
    while len(countries) < n_addresses - 1:  # 29 distinct countries, one of them twice
        country = fake.country()
        if country not in countries:
            countries.append(country)
    countries.append(rng.choice(countries))
    rng.shuffle(countries)
    with_line_2 = set(rng.sample(range(n_addresses), n_addresses // 3))
    with_district = set(rng.sample(range(n_addresses), n_addresses // 2 + 1))
    addresses = []
    for i in range(n_addresses):
        addresses.append(
            {
                "address_id": i + 1,
                "address_line_1": fake.street_address(),
                "address_line_2": fake.street_name() if i in with_line_2 else None,
                "district": uk.county() if i in with_district else None,
                "city": fake.city(),
                "postal_code": fake.zipcode_plus4() if rng.random() < 0.3 else fake.zipcode(),
                "country": countries[i],
                "phone": fake.numerify("#### ######"),
                **stamp,
            }
        )

    legal = rng.sample(range(1, n_addresses + 1), LEGAL_ADDRESSES)
    legal_ids = legal + [rng.choice(legal) for _ in range(STATIC_COUNTS["counterparty"] - len(legal))]
    rng.shuffle(legal_ids)
    names: set[str] = set()
    counterparties = []
    for i, address_id in enumerate(legal_ids):
        name = fake.company()
        while name in names:
            name = fake.company()
        names.add(name)
        counterparties.append(
            {
                "counterparty_id": i + 1,
                "counterparty_legal_name": name,
                "legal_address_id": address_id,
                "commercial_contact": fake.name() if rng.random() > 0.1 else None,
                "delivery_contact": fake.name() if rng.random() > 0.1 else None,
                **people_stamp,
            }
        )

    currencies = [{"currency_id": i + 1, "currency_code": code, **stamp} for i, code in enumerate(CURRENCY_CODES)]
    departments = [
        {
            "department_id": i + 1,
            "department_name": name,
            "location": DISPATCH_LOCATION if name == "Dispatch" else rng.choice(OFFICE_LOCATIONS),
            "manager": fake.name(),
            **stamp,
        }
        for i, name in enumerate(DEPARTMENT_NAMES)
    ]

    emails: set[str] = set()
    staff = []
    while len(staff) < STATIC_COUNTS["staff"]:
        first, last = fake.first_name(), fake.last_name()
        email = f"{_email_part(first)}.{_email_part(last)}@{EMAIL_DOMAIN}"
        if email in emails:
            continue
        emails.add(email)
        staff.append(
            {
                "staff_id": len(staff) + 1,
                "first_name": first,
                "last_name": last,
                "department_id": rng.randint(1, len(DEPARTMENT_NAMES)),
                "email_address": email,
                **people_stamp,
            }
        )

    payment_types = [
        {"payment_type_id": i + 1, "payment_type_name": name, **stamp} for i, name in enumerate(PAYMENT_TYPE_NAMES)
    ]
    designs = [new_design(rng, at, i + 1) for i in range(INITIAL_DESIGNS)]
    return {
        "address": addresses,
        "counterparty": counterparties,
        "currency": currencies,
        "department": departments,
        "design": designs,
        "staff": staff,
        "payment_type": payment_types,
    }


def _email_part(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch in string.ascii_lowercase)


# -- the moving tables --------------------------------------------------------------------


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
        "currency_id": rng.choice(world.currency_ids),
        "agreed_delivery_date": _date_after(rng, at, 7),
        "agreed_payment_date": _date_after(rng, at, 6),
        "agreed_delivery_location_id": rng.choice(world.address_ids),
    }
    if world.sales_extra_column:
        order[world.sales_extra_column] = rng.choice(SALES_CHANNELS)
    transaction = {
        "transaction_id": transaction_id,
        "transaction_type": "SALE",
        "sales_order_id": sales_order_id,
        "purchase_order_id": None,
        "created_at": at,
        "last_updated": at,
    }
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
        "currency_id": rng.choice(world.currency_ids),
        "agreed_delivery_date": _date_after(rng, at, 7),
        "agreed_payment_date": _date_after(rng, at, 6),
        "agreed_delivery_location_id": rng.choice(world.address_ids),
    }
    transaction = {
        "transaction_id": transaction_id,
        "transaction_type": "PURCHASE",
        "sales_order_id": None,
        "purchase_order_id": purchase_order_id,
        "created_at": at,
        "last_updated": at,
    }
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


# -- a whole history ----------------------------------------------------------------------


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
                state.add_bundle(
                    sale_bundle(
                        rng,
                        world,
                        at,
                        state.take_id("sales_order"),
                        state.take_id("transaction"),
                        state.take_id("payment"),
                    )
                )
                at += timedelta(milliseconds=rng.randint(1, 5))
            if purchase and at <= until:
                state.add_bundle(
                    purchase_bundle(
                        rng,
                        world,
                        at,
                        state.take_id("purchase_order"),
                        state.take_id("transaction"),
                        state.take_id("payment"),
                    )
                )
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
