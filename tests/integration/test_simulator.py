"""The simulated business, checked by SQL over what it wrote (rules of the reference, §2 and §5).

One 60-day history is seeded once per module and read by many tests; tests that write get a
fresh database of their own.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone

import psycopg2
import pytest
from psycopg2 import sql
from typer.testing import CliRunner

from totes_cli.app import app
from totesys.schema import TABLES, with_database
from totesys.simulator import Simulator, SimulatorError, _Live

SEED = 20241115
UNTIL = datetime(2024, 11, 15, 14, 40, 0)  # a Friday afternoon
DAYS = 60
DEPARTMENTS = ["Sales", "Purchasing", "Production", "Dispatch", "Finance", "Facilities", "Communications", "HR"]
DESIGN_NAMES = {
    "Bronze",
    "Concrete",
    "Cotton",
    "Fresh",
    "Frozen",
    "Granite",
    "Metal",
    "Plastic",
    "Rubber",
    "Soft",
    "Steel",
    "Wooden",
}


# -- helpers ------------------------------------------------------------------------------


def rows(dsn: str, query, params=None) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def one(dsn: str, query, params=None):
    return rows(dsn, query, params)[0][0]


def execute(dsn: str, query, params=None) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
    finally:
        conn.close()


def new_database(admin_dsn: str, template: str) -> str:
    name = f"totes_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    conn.close()
    return name


def drop_database(admin_dsn: str, name: str) -> None:
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s", (name,))
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.close()


@pytest.fixture
def other_totesys_dsn(admin_dsn: str, _template: str):
    """A second fresh totesys database (for comparing two seedings)."""
    name = new_database(admin_dsn, _template)
    yield with_database(admin_dsn, name)
    drop_database(admin_dsn, name)


@pytest.fixture(scope="module")
def seeded(admin_dsn: str, _template: str):
    """60 days of history ending UNTIL with a fixed seed; read-only for the tests using it."""
    name = new_database(admin_dsn, _template)
    dsn = with_database(admin_dsn, name)
    with Simulator(dsn, seed=SEED) as simulator:
        report = simulator.seed_history(DAYS, until=UNTIL)
    yield dsn, report
    drop_database(admin_dsn, name)


# Each query counts the rows that break one rule; every count must be 0.
ORDER_RULES = {
    "sales order without its transaction": """
        SELECT count(*) FROM sales_order s
        WHERE (SELECT count(*) FROM "transaction" t
               WHERE t.sales_order_id = s.sales_order_id) <> 1""",
    "purchase order without its transaction": """
        SELECT count(*) FROM purchase_order o
        WHERE (SELECT count(*) FROM "transaction" t
               WHERE t.purchase_order_id = o.purchase_order_id) <> 1""",
    "transaction without exactly one payment": """
        SELECT count(*) FROM "transaction" t
        WHERE (SELECT count(*) FROM payment p WHERE p.transaction_id = t.transaction_id) <> 1""",
    "transaction type does not match its order ids": """
        SELECT count(*) FROM "transaction"
        WHERE NOT ((transaction_type = 'SALE'
                    AND sales_order_id IS NOT NULL AND purchase_order_id IS NULL)
                OR (transaction_type = 'PURCHASE'
                    AND purchase_order_id IS NOT NULL AND sales_order_id IS NULL))""",
    "sales payment breaks a rule": """
        SELECT count(*) FROM sales_order s
        JOIN "transaction" t ON t.sales_order_id = s.sales_order_id
        JOIN payment p ON p.transaction_id = t.transaction_id
        WHERE p.payment_amount <> s.units_sold * s.unit_price
           OR p.counterparty_id <> s.counterparty_id OR p.currency_id <> s.currency_id
           OR p.payment_date <> s.agreed_payment_date OR p.payment_type_id <> 1
           OR t.created_at <> s.created_at OR p.created_at <> s.created_at""",
    "purchase payment breaks a rule": """
        SELECT count(*) FROM purchase_order o
        JOIN "transaction" t ON t.purchase_order_id = o.purchase_order_id
        JOIN payment p ON p.transaction_id = t.transaction_id
        WHERE p.payment_amount <> o.item_quantity * o.item_unit_price
           OR p.counterparty_id <> o.counterparty_id OR p.currency_id <> o.currency_id
           OR p.payment_date <> o.agreed_payment_date OR p.payment_type_id <> 3
           OR t.created_at <> o.created_at OR p.created_at <> o.created_at""",
    "account number is not 8 digits": """
        SELECT count(*) FROM payment
        WHERE company_ac_number NOT BETWEEN 10000000 AND 99999999
           OR counterparty_ac_number NOT BETWEEN 10000000 AND 99999999""",
    "sales order value out of range": """
        SELECT count(*) FROM sales_order
        WHERE units_sold NOT BETWEEN 1000 AND 100000 OR unit_price NOT BETWEEN 2 AND 4""",
    "purchase order value out of range": """
        SELECT count(*) FROM purchase_order
        WHERE item_quantity NOT BETWEEN 1 AND 999 OR item_unit_price NOT BETWEEN 3 AND 1000
           OR item_code !~ '^[A-Z0-9]{7}$'""",
    "agreed payment date not 0-6 days after creation": """
        SELECT count(*) FROM (SELECT created_at, agreed_payment_date FROM sales_order
                              UNION ALL
                              SELECT created_at, agreed_payment_date FROM purchase_order) o
        WHERE agreed_payment_date !~ '^\\d{4}-\\d{2}-\\d{2}$'
           OR agreed_payment_date::date - created_at::date NOT BETWEEN 0 AND 6""",
    "delivery date is not a yyyy-mm-dd on or after creation": """
        SELECT count(*) FROM (SELECT created_at, agreed_delivery_date FROM sales_order
                              UNION ALL
                              SELECT created_at, agreed_delivery_date FROM purchase_order) o
        WHERE agreed_delivery_date !~ '^\\d{4}-\\d{2}-\\d{2}$'
           OR agreed_delivery_date::date < created_at::date""",
    "last_updated moved on an order, transaction or design": """
        SELECT (SELECT count(*) FROM sales_order WHERE last_updated <> created_at)
             + (SELECT count(*) FROM purchase_order WHERE last_updated <> created_at)
             + (SELECT count(*) FROM "transaction" WHERE last_updated <> created_at)
             + (SELECT count(*) FROM design WHERE last_updated <> created_at)""",
    "unpaid payment with last_updated moved": """
        SELECT count(*) FROM payment WHERE NOT paid AND last_updated <> created_at""",
    "paid payment not due on a working day or paid before creation or due date": """
        SELECT count(*) FROM payment
        WHERE paid AND (extract(isodow FROM payment_date::date) > 5 OR last_updated <= created_at
                        OR last_updated::date < payment_date::date)""",
    "design breaks a rule": """
        SELECT count(*) FROM design
        WHERE design_name NOT IN ('Bronze', 'Concrete', 'Cotton', 'Fresh', 'Frozen', 'Granite',
                                  'Metal', 'Plastic', 'Rubber', 'Soft', 'Steel', 'Wooden')
           OR file_name !~ ('^' || lower(design_name) || '-\\d{8}-[a-z0-9]{4}\\.json$')
           OR file_location !~ '^/'""",
}


def broken_rules(dsn: str) -> dict[str, int]:
    return {rule: n for rule, query in ORDER_RULES.items() if (n := one(dsn, query))}


def table_digests(dsn: str) -> dict[str, str]:
    """md5 of every row of every table, in key order."""
    digests = {}
    for table in TABLES:
        digests[table] = one(
            dsn,
            sql.SQL("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.{}), '')) FROM {} t").format(
                sql.Identifier(f"{table}_id"), sql.Identifier(table)
            ),
        )
    return digests


def working_days(start: datetime, end: datetime) -> int:
    days = (end.date() - start.date()).days + 1
    return sum(1 for n in range(days) if (start.date() + timedelta(days=n)).weekday() < 5)


# -- static tables ------------------------------------------------------------------------


def test_static_tables_have_the_real_shape(seeded):
    dsn, report = seeded
    assert report.seeded_static
    counts = {
        t: one(dsn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
        for t in ("address", "counterparty", "currency", "department", "staff", "payment_type")
    }
    assert counts == {"address": 30, "counterparty": 20, "currency": 3, "department": 8, "staff": 20, "payment_type": 4}
    assert rows(dsn, "SELECT currency_id, currency_code FROM currency ORDER BY 1") == [
        (1, "GBP"),
        (2, "USD"),
        (3, "EUR"),
    ]
    assert rows(dsn, "SELECT payment_type_id, payment_type_name::text FROM payment_type ORDER BY 1") == [
        (1, "SALES_RECEIPT"),
        (2, "SALES_REFUND"),
        (3, "PURCHASE_PAYMENT"),
        (4, "PURCHASE_REFUND"),
    ]
    departments = rows(dsn, "SELECT department_name, location FROM department ORDER BY department_id")
    assert [name for name, _ in departments] == DEPARTMENTS
    assert dict(departments)["Dispatch"] == "Leds"
    assert {loc for name, loc in departments if name != "Dispatch"} <= {"Manchester", "Leeds"}

    staff = rows(dsn, "SELECT first_name, last_name, email_address, department_id FROM staff")
    for first, last, email, department_id in staff:
        assert re.fullmatch(r"[a-z]+\.[a-z]+@terrifictotes\.com", email), email
        assert email.split("@")[0] == re.sub("[^a-z]", "", first.lower()) + "." + re.sub("[^a-z]", "", last.lower())
        assert 1 <= department_id <= 8
    assert len({email for _, _, email, _ in staff}) == 20

    line_2_null, district_null, countries, bad_phones = rows(
        dsn,
        """
        SELECT count(*) FILTER (WHERE address_line_2 IS NULL),
               count(*) FILTER (WHERE district IS NULL),
               count(DISTINCT country),
               count(*) FILTER (WHERE phone !~ '^\\d{4} \\d{6}$')
        FROM address""",
    )[0]
    assert 16 <= line_2_null <= 24  # about two thirds
    assert 11 <= district_null <= 19  # about half
    assert countries >= 27
    assert bad_phones == 0
    assert 10 <= one(dsn, "SELECT count(DISTINCT legal_address_id) FROM counterparty") < 20

    stamps = rows(
        dsn,
        """
        SELECT DISTINCT created_at, last_updated FROM (
            SELECT created_at, last_updated FROM address
            UNION ALL SELECT created_at, last_updated FROM counterparty
            UNION ALL SELECT created_at, last_updated FROM currency
            UNION ALL SELECT created_at, last_updated FROM department
            UNION ALL SELECT created_at, last_updated FROM staff
            UNION ALL SELECT created_at, last_updated FROM payment_type
        ) s""",
    )
    assert all(created == updated and created.date() == date(2022, 11, 3) for created, updated in stamps)


# -- orders, transactions, payments -------------------------------------------------------


def test_history_keeps_every_order_rule(seeded):
    dsn, _ = seeded
    assert one(dsn, "SELECT count(*) FROM sales_order") > 500
    assert one(dsn, "SELECT count(*) FROM purchase_order") > 200
    assert broken_rules(dsn) == {}


def test_history_orders_arrive_in_business_hours_about_ten_seconds_past_the_minute(seeded):
    dsn, _ = seeded
    outside = one(
        dsn,
        """
        SELECT count(*) FROM (
            SELECT created_at FROM sales_order UNION ALL SELECT created_at FROM purchase_order
            UNION ALL SELECT created_at FROM design WHERE created_at > '2022-11-04') o
        WHERE extract(isodow FROM created_at) > 5
           OR extract(hour FROM created_at) NOT BETWEEN 8 AND 18
           OR extract(second FROM created_at) NOT BETWEEN 9 AND 11 OR created_at > %s""",
        (UNTIL,),
    )
    assert outside == 0
    assert one(dsn, "SELECT min(created_at) FROM sales_order") >= UNTIL - timedelta(days=DAYS)


def test_history_rates_per_working_day(seeded):
    dsn, _ = seeded
    days = working_days(UNTIL - timedelta(days=DAYS), UNTIL)
    sales = one(dsn, "SELECT count(*) FROM sales_order") / days
    purchases = one(dsn, "SELECT count(*) FROM purchase_order") / days
    designs = one(dsn, "SELECT count(*) FROM design WHERE created_at > '2022-11-04'") / days
    assert 17 <= sales <= 25
    assert 6.5 <= purchases <= 11.5
    assert 0.4 <= designs <= 1.8
    assert one(dsn, "SELECT count(*) FROM design WHERE created_at < '2022-11-04'") == 10


def test_settlement_batch_pays_due_working_day_payments_at_07_55_11(seeded):
    dsn, _ = seeded
    paid, wrong_moment = rows(
        dsn,
        """
        SELECT count(*), count(*) FILTER (WHERE last_updated::date <> payment_date::date
                                           OR to_char(last_updated, 'HH24:MI:SS') <> '07:55:11')
        FROM payment WHERE paid""",
    )[0]
    assert paid > 0 and wrong_moment == 0
    # every batch pays all payments due that day that existed at 07:55:11
    missed = one(
        dsn,
        """
        SELECT count(*) FROM payment
        WHERE NOT paid AND extract(isodow FROM payment_date::date) <= 5
          AND payment_date::date + time '07:55:12' <= %s
          AND created_at < payment_date::date + time '07:55:11'""",
        (UNTIL,),
    )
    assert missed == 0
    share = one(dsn, "SELECT avg(paid::int) FROM payment WHERE payment_date::date < %s", (UNTIL.date(),))
    assert 0.50 <= share <= 0.72
    # nothing is paid before its due day's batch has run
    assert one(dsn, "SELECT count(*) FROM payment WHERE paid AND last_updated > %s", (UNTIL,)) == 0
    assert one(dsn, "SELECT count(*) FROM payment WHERE paid AND payment_date::date > %s", (UNTIL.date(),)) == 0


def test_silent_updates_change_rows_without_moving_last_updated(seeded):
    dsn, report = seeded
    assert report.silent_updates > 0
    moved = rows(
        dsn,
        """
        SELECT 'sales_order', created_at, last_updated FROM sales_order
        WHERE agreed_delivery_date::date - created_at::date > 7
        UNION ALL
        SELECT 'purchase_order', created_at, last_updated FROM purchase_order
        WHERE agreed_delivery_date::date - created_at::date > 7""",
    )
    assert sum(1 for table, _, _ in moved if table == "sales_order") >= 1
    assert len(moved) >= 2
    assert all(created == updated for _, created, updated in moved)
    # ...and the delivery dates of untouched orders stay within a week
    within_week = one(
        dsn,
        """SELECT avg((agreed_delivery_date::date - created_at::date BETWEEN 0 AND 7)::int)
                             FROM sales_order""",
    )
    assert within_week > 0.95


def test_same_seed_and_until_give_identical_databases(totesys_dsn, other_totesys_dsn):
    until = datetime(2024, 3, 1, 12, 0, 0, 123000)
    for dsn in (totesys_dsn, other_totesys_dsn):
        with Simulator(dsn, seed=7) as simulator:
            simulator.seed_history(20, until=until)
    first, second = table_digests(totesys_dsn), table_digests(other_totesys_dsn)
    assert first == second
    assert one(totesys_dsn, "SELECT count(*) FROM sales_order") > 100
    # a different seed is a different business
    execute(
        other_totesys_dsn,
        "TRUNCATE address, counterparty, currency, department, design, staff, "
        'payment_type, sales_order, purchase_order, "transaction", payment RESTART IDENTITY',
    )
    with Simulator(other_totesys_dsn, seed=8) as simulator:
        simulator.seed_history(20, until=until)
    different = table_digests(other_totesys_dsn)
    assert different["sales_order"] != first["sales_order"]
    assert different["address"] != first["address"]


def test_history_written_in_two_runs_equals_one_written_at_once(totesys_dsn, other_totesys_dsn):
    until = datetime(2024, 6, 14, 16, 0, 0)
    with Simulator(totesys_dsn, seed=9) as simulator:
        simulator.seed_history(30, until=until)
    with Simulator(other_totesys_dsn, seed=9) as simulator:
        simulator.seed_history(20, until=until - timedelta(days=10))
        second = simulator.seed_history(30, until=until)
    assert second.rows and not second.seeded_static
    assert table_digests(totesys_dsn) == table_digests(other_totesys_dsn)


def test_sequences_continue_after_the_seeded_ids(totesys_dsn):
    with Simulator(totesys_dsn, seed=3) as simulator:
        simulator.seed_history(10, until=UNTIL)
    for table in ("sales_order", "payment", "design", "currency"):
        assert one(
            totesys_dsn,
            sql.SQL("SELECT count(*) = max({}) FROM {}").format(sql.Identifier(f"{table}_id"), sql.Identifier(table)),
        ), f"{table} ids are not 1..N"
    top = one(totesys_dsn, "SELECT max(design_id) FROM design")
    new_id = one(
        totesys_dsn,
        "INSERT INTO design (design_name, file_location, file_name, last_updated) "
        "VALUES ('Steel', '/tmp', 'steel-20240101-abcd.json', now()) RETURNING design_id",
    )
    assert new_id == top + 1
    top = one(totesys_dsn, "SELECT max(sales_order_id) FROM sales_order")
    new_id = one(
        totesys_dsn,
        """
        INSERT INTO sales_order (last_updated, design_id, staff_id, counterparty_id, units_sold,
                                 unit_price, currency_id, agreed_delivery_date,
                                 agreed_payment_date, agreed_delivery_location_id)
        VALUES (now(), 1, 1, 1, 1000, 2.5, 1, '2024-11-20', '2024-11-20', 1)
        RETURNING sales_order_id""",
    )
    assert new_id == top + 1
    assert one(totesys_dsn, "SELECT nextval('currency_currency_id_seq')") == 4


def test_seeding_again_continues_from_the_database(totesys_dsn):
    first_until = datetime(2024, 10, 9, 11, 0, 0)
    with Simulator(totesys_dsn, seed=5) as simulator:
        simulator.seed_history(20, until=first_until)
    before = one(totesys_dsn, "SELECT max(created_at) FROM sales_order")
    counts_before = one(totesys_dsn, "SELECT count(*) FROM sales_order")
    with Simulator(totesys_dsn, seed=5) as simulator:
        report = simulator.seed_history(30, until=first_until + timedelta(days=10))
        assert not report.seeded_static
        assert report.start > before  # right after the newest row already there
        digests = table_digests(totesys_dsn)
        again = simulator.seed_history(30, until=first_until + timedelta(days=10))
        assert again.rows == {}  # the business of that stretch is already there
        assert table_digests(totesys_dsn) == digests
    assert one(totesys_dsn, "SELECT count(*) FROM address") == 30
    assert one(totesys_dsn, "SELECT count(*) FROM staff") == 20
    assert one(totesys_dsn, "SELECT count(*) FROM sales_order") > counts_before
    assert (
        one(totesys_dsn, "SELECT min(created_at) FROM sales_order WHERE sales_order_id > %s", (counts_before,)) > before
    )
    for table in ("sales_order", "purchase_order", "transaction", "payment", "design"):
        assert one(
            totesys_dsn,
            sql.SQL("SELECT count(*) = max({}) FROM {}").format(sql.Identifier(f"{table}_id"), sql.Identifier(table)),
        ), f"{table} ids have gaps or repeats"
    assert broken_rules(totesys_dsn) == {}
    # payments of the first run that fell due during the second were paid by its batches
    missed = one(
        totesys_dsn,
        """
        SELECT count(*) FROM payment
        WHERE NOT paid AND extract(isodow FROM payment_date::date) <= 5
          AND payment_date::date + time '07:55:12' <= %s
          AND created_at < payment_date::date + time '07:55:11'""",
        (first_until + timedelta(days=10),),
    )
    assert missed == 0
    assert (
        one(
            totesys_dsn,
            "SELECT count(*) FROM payment WHERE paid AND created_at < %s AND last_updated > %s",
            (first_until, first_until),
        )
        > 0
    )


def test_partly_filled_static_tables_are_refused(totesys_dsn):
    execute(totesys_dsn, "INSERT INTO currency (currency_code, last_updated) VALUES ('GBP', now())")
    with Simulator(totesys_dsn, seed=1) as simulator, pytest.raises(SimulatorError, match="partly filled"):
        simulator.seed_history(5, until=UNTIL)
    assert one(totesys_dsn, "SELECT count(*) FROM address") == 0


# -- live ---------------------------------------------------------------------------------


def test_live_events_are_committed_and_keep_every_rule(totesys_dsn):
    with Simulator(totesys_dsn, seed=11) as simulator:
        simulator.seed_history(10)  # up to now, so live rows follow the history
        before = one(totesys_dsn, 'SELECT count(*) FROM "transaction"')
        started = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=1)
        seen = []
        stats = simulator.run_live(rate=0, events=60, on_event=seen.append)
    assert stats.events == 60 == len(seen) == sum(stats.by_kind.values())
    assert stats.by_kind["sales_order"] > stats.by_kind["purchase_order"] > 0
    new = one(totesys_dsn, 'SELECT count(*) FROM "transaction" WHERE created_at >= %s', (started,))
    assert new == one(totesys_dsn, 'SELECT count(*) FROM "transaction"') - before
    assert new == stats.by_kind["sales_order"] + stats.by_kind["purchase_order"]
    assert broken_rules(totesys_dsn) == {}


def test_live_settlement_never_pays_a_payment_in_the_moment_it_was_created(totesys_dsn):
    """Live events can share a millisecond (the clock's precision): an order whose payment is
    due today and the settlement right after it. A payment is paid after it was created."""
    monday_midnight = datetime(2024, 11, 18)  # payments agreed "today" are due and payable
    ticks = iter(range(10**6))

    def clock():  # two events per millisecond
        return monday_midnight + timedelta(milliseconds=next(ticks) // 2)

    with Simulator(totesys_dsn, seed=21, clock=clock) as simulator:
        simulator.seed_static()
        stats = simulator.run_live(rate=0, events=150)
    assert stats.by_kind["settlement"] > 0
    assert one(totesys_dsn, "SELECT count(*) FROM payment WHERE payment_date = '2024-11-18'") > 0
    assert broken_rules(totesys_dsn) == {}


def test_live_events_follow_the_seed_alone(totesys_dsn, other_totesys_dsn):
    """The same seed gives the same live events whenever it runs (failures can be replayed)."""
    kinds = []
    for dsn, moment in ((totesys_dsn, datetime(2024, 11, 18, 9)), (other_totesys_dsn, datetime(2025, 3, 4, 15))):
        seen = []
        with Simulator(dsn, seed=22, clock=lambda moment=moment: moment) as simulator:
            simulator.seed_static()
            simulator.run_live(rate=0, events=40, on_event=seen.append)
        kinds.append([event.kind for event in seen])
    assert kinds[0] == kinds[1]


def test_silent_updates_leave_toasted_designs_out_of_line(totesys_dsn):
    """A silent design update moves file_location to an ordinary directory; on a TOASTed
    design that would end the TOAST case the chaos run exists to show."""
    with Simulator(totesys_dsn, seed=23) as simulator:
        simulator.seed_static()
        simulator.run_live(rate=0, events=1, chaos=True, chaos_every=1)  # toast_insert first
        toasted = one(totesys_dsn, "SELECT count(*) FROM design WHERE octet_length(file_location) > 8192")
        assert toasted == 1
        with simulator.connection() as conn, conn.cursor() as cur:
            live = _Live(cur, 23, chaos=False, chaos_every=8, started_at=datetime(2024, 11, 18, 9))
            for _ in range(300):
                live._silent_update(cur, datetime(2024, 11, 18, 9))
    assert one(totesys_dsn, "SELECT count(*) FROM design WHERE octet_length(file_location) > 8192") == 1


def test_live_paces_events_and_stops_on_request(totesys_dsn):
    with Simulator(totesys_dsn, seed=12) as simulator:
        simulator.seed_static()
        t0 = time.monotonic()
        stats = simulator.run_live(rate=40, duration=0.5)
        elapsed = time.monotonic() - t0
        assert 0.45 <= elapsed < 1.5
        assert 10 <= stats.events <= 25
        assert 10 <= stats.events_per_second() <= 100
        stop = threading.Event()
        count = []

        def on_event(event):
            count.append(event)
            if len(count) == 5:
                stop.set()

        simulator.run_live(rate=0, stop_event=stop, on_event=on_event)
        assert len(count) == 5
        # a restarted live run continues on the same database
    with Simulator(totesys_dsn, seed=12) as again:
        again.run_live(rate=0, events=5)
    assert broken_rules(totesys_dsn) == {}


def test_chaos_deletes_toasts_bulk_imports_and_adds_a_column(admin_dsn, _template, totesys_dsn):
    with Simulator(totesys_dsn, seed=13) as simulator:
        simulator.seed_history(10)
        execute(totesys_dsn, "SELECT pg_create_logical_replication_slot('simulator_test', 'test_decoding')")
        stats = simulator.run_live(rate=0, events=48, chaos=True)
    assert stats.events == 48

    # a deleted sales order left its transaction behind with sales_order_id set NULL by the FK
    assert (
        one(
            totesys_dsn,
            """SELECT count(*) FROM "transaction"
                              WHERE transaction_type = 'SALE' AND sales_order_id IS NULL""",
        )
        >= 1
    )
    # a deleted payment: one transaction has none now
    assert (
        one(
            totesys_dsn,
            """SELECT count(*) FROM "transaction" t
                              WHERE NOT EXISTS (SELECT 1 FROM payment p
                                                WHERE p.transaction_id = t.transaction_id)""",
        )
        >= 1
    )

    # a value stored out of line, uncompressed, in design's TOAST table
    size, stored = rows(
        totesys_dsn,
        """SELECT octet_length(file_location), pg_column_size(file_location)
                                        FROM design
                                        ORDER BY octet_length(file_location) DESC LIMIT 1""",
    )[0]
    assert size > 8192 and stored >= size
    toast = one(totesys_dsn, "SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'design'")
    assert one(totesys_dsn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*toast.split(".")))) > 0

    changes = [
        r[0] for r in rows(totesys_dsn, "SELECT data FROM pg_logical_slot_get_changes('simulator_test', NULL, NULL)")
    ]
    # a later update of other columns of that row: the WAL does not carry the unchanged big value
    assert any(
        c.startswith("table public.design: UPDATE:") and "file_location[text]:unchanged-toast-datum" in c
        for c in changes
    )
    # one transaction of at least 1000 rows (the bulk import)
    largest, current = 0, 0
    for change in changes:
        if change.startswith("BEGIN"):
            current = 0
        elif change.startswith("table "):
            current += 1
        elif change.startswith("COMMIT"):
            largest = max(largest, current)
    assert largest >= 1000
    assert (
        one(
            totesys_dsn,
            """
        SELECT max(n) FROM (SELECT created_at, count(*) AS n FROM (
            SELECT created_at FROM sales_order UNION ALL SELECT created_at FROM purchase_order
            UNION ALL SELECT created_at FROM "transaction"
            UNION ALL SELECT created_at FROM payment) r
            GROUP BY created_at) g""",
        )
        >= 1000
    )

    # exactly one column that the original schema does not have, filled in by later rows
    query = """SELECT table_name, column_name FROM information_schema.columns
               WHERE table_schema = 'public' AND table_name = ANY(%s)"""
    original = set(rows(with_database(admin_dsn, _template), query, (list(TABLES),)))
    added = set(rows(totesys_dsn, query, (list(TABLES),))) - original
    assert len(added) == 1
    ((table, column),) = added
    filled = one(
        totesys_dsn,
        sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(sql.Identifier(table), sql.Identifier(column)),
    )
    assert filled >= 1
    # surviving orders still follow the payment rules
    for rule in (
        "sales payment breaks a rule",
        "purchase payment breaks a rule",
        "last_updated moved on an order, transaction or design",
    ):
        assert one(totesys_dsn, ORDER_RULES[rule]) == 0, rule


# -- command line -------------------------------------------------------------------------


def test_cli_seeds_history_then_runs_live_events(totesys_dsn, monkeypatch):
    monkeypatch.setenv("TOTES_SOURCE_DSN", totesys_dsn)
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--history-days",
            "5",
            "--seed",
            "4",
            "--until",
            "2024-11-15T14:40:00",
            "--rate",
            "0",
            "--events",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sales_order" in result.stdout
    assert "live: 7 events" in result.stdout
    assert one(totesys_dsn, "SELECT max(created_at) FROM sales_order WHERE created_at < '2024-11-16'") <= UNTIL
    assert broken_rules(totesys_dsn) == {}


def test_cli_refuses_live_flags_without_rate_and_bad_until(totesys_dsn):
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--dsn", totesys_dsn, "--events", "3"])
    assert result.exit_code == 2
    assert "--rate" in result.stderr
    result = runner.invoke(app, ["simulate", "--dsn", totesys_dsn, "--until", "next tuesday"])
    assert result.exit_code == 2
    assert "ISO" in result.stderr
    assert one(totesys_dsn, "SELECT count(*) FROM address") == 0


def test_cli_reports_an_unreachable_database_in_one_sentence(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--dsn", f"postgresql://postgres@/totesys?host={tmp_path}&port=1"])
    assert result.exit_code == 2
    assert "Nothing answers" in result.stderr
    assert "Traceback" not in result.output
