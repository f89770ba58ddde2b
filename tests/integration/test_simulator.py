"""The simulated business, checked by SQL over what it wrote (rules of the reference, §2 and §5).

One 60-day history is seeded once per module and read by many tests; tests that write get a
fresh database of their own.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

import pytest
from psycopg2 import sql

from totesys.simulator import Simulator, SimulatorError
from tests.simulator_helpers import UNTIL, DAYS, DEPARTMENTS, rows, one, broken_rules, table_digests, working_days
from tests.e2e_helpers import execute


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


# Payments a settlement batch missed: unpaid, though made before the 07:55:11 batch of the
# working day they fall due, and that batch ran before %s.
MISSED_BY_THE_BATCHES = """
    SELECT count(*) FROM payment
    WHERE NOT paid AND extract(isodow FROM payment_date::date) <= 5
      AND payment_date::date + time '07:55:12' <= %s
      AND created_at < payment_date::date + time '07:55:11'"""


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
    missed = one(dsn, MISSED_BY_THE_BATCHES, (UNTIL,))
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
    missed = one(totesys_dsn, MISSED_BY_THE_BATCHES, (first_until + timedelta(days=10),))
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
