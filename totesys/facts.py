"""The fixed facts of the Terrific Totes business: its names, counts, daily rates and calendar.

They follow shared/reference/totesys-schema.md sections 2 and 5 (how the real generator behaves).
Timestamps are naive datetimes in UTC with millisecond precision, like `timestamp(3)`.
Agreed dates and payment dates are TEXT `YYYY-MM-DD`, as in the real database.
"""

from __future__ import annotations

import random
from datetime import date, datetime, time, timedelta

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
