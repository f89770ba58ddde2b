"""Shared by the simulator's tests: a seeded history, fresh databases, the business rules as SQL
that counts the rows breaking each, and digests of whole tables."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import psycopg2
import pytest
from psycopg2 import sql

from totesys.schema import TABLES, with_database
from totesys.simulator import Simulator

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


def _payment_breaks_a_rule(order_table: str, amount: str, payment_type_id: int) -> str:
    """The payment of each order (`o`) of `order_table` pays `amount` to its counterparty in
    its currency on its agreed day, of its type, and it and its transaction are made with it."""
    return f"""
        SELECT count(*) FROM {order_table} o
        JOIN "transaction" t ON t.{order_table}_id = o.{order_table}_id
        JOIN payment p ON p.transaction_id = t.transaction_id
        WHERE p.payment_amount <> {amount}
           OR p.counterparty_id <> o.counterparty_id OR p.currency_id <> o.currency_id
           OR p.payment_date <> o.agreed_payment_date OR p.payment_type_id <> {payment_type_id}
           OR t.created_at <> o.created_at OR p.created_at <> o.created_at"""


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
    "sales payment breaks a rule": _payment_breaks_a_rule("sales_order", "o.units_sold * o.unit_price", 1),
    "purchase payment breaks a rule": _payment_breaks_a_rule(
        "purchase_order", "o.item_quantity * o.item_unit_price", 3
    ),
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
