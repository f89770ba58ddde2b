"""Generated sales orders for the benchmarks (and the bulk tests): realistic rows from a row
number, inserted (then updated) in transactions of a set size, and the LSNs that bound them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg2

from change_events import parse_lsn

if TYPE_CHECKING:
    from bench.source import Source

END_MARKER_PREFIX = "totes-bench-end"


def query(dsn: str, statement, params=None):
    """One statement on its own autocommit connection; its rows, or None."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


COLUMNS = """created_at, last_updated, design_id, staff_id, counterparty_id,
    units_sold, unit_price, currency_id, agreed_delivery_date, agreed_payment_date,
    agreed_delivery_location_id"""
"""What a generated sales order sets: every column but its id, which the sequence gives."""

# Realistic sales_order rows from a row number `i`, referring to the seeded static data.
# session_replication_role = replica skips the foreign-key triggers (the ids are valid by
# construction); it changes nothing in the WAL that logical decoding reads.
INSERT = f"""
INSERT INTO sales_order ({COLUMNS})
SELECT t, t,
       (%(design)s::int[])[1 + (i * 7919) %% %(n_design)s],
       (%(staff)s::int[])[1 + (i * 104729) %% %(n_staff)s],
       (%(counterparty)s::int[])[1 + (i * 15485863) %% %(n_counterparty)s],
       1000 + (i * 37) %% 99000,
       round(2.0 + ((i * 13) %% 200) / 100.0, 2),
       (%(currency)s::int[])[1 + i %% %(n_currency)s],
       to_char(t + (3 + i %% 30) * interval '1 day', 'YYYY-MM-DD'),
       to_char(t + (10 + i %% 60) * interval '1 day', 'YYYY-MM-DD'),
       (%(address)s::int[])[1 + (i * 31) %% %(n_address)s]
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i,
     LATERAL (SELECT timestamp '2025-01-01 08:00' + i * interval '997 milliseconds' AS t) AS at
"""
COPY = f"""
INSERT INTO sales_order ({COLUMNS})
SELECT created_at, last_updated, design_id, staff_id, counterparty_id, %(units)s, %(price)s,
       currency_id, agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id
FROM sales_order WHERE sales_order_id %% %(every)s = %(remainder)s
"""
"""New sales orders amid the old ones: a copy of each whose id is `remainder` modulo `every`,
with units and a price of its own."""
UPDATE = """
UPDATE sales_order SET units_sold = units_sold + 1, unit_price = unit_price + 0.05,
       last_updated = last_updated + interval '3 days 2 hours'
WHERE sales_order_id BETWEEN %s AND %s
"""


@dataclass
class Load:
    inserts: int
    updates: int
    transactions: int
    seconds: float
    start_lsn: int
    marker_lsn: int
    end_lsn: int

    @property
    def events(self) -> int:
        return self.inserts + self.updates

    @property
    def wal_bytes(self) -> int:
        return self.end_lsn - self.start_lsn


def reference_ids(cur) -> dict:
    ids = {}
    for name, table in (
        ("design", "design"),
        ("staff", "staff"),
        ("counterparty", "counterparty"),
        ("currency", "currency"),
        ("address", "address"),
    ):
        cur.execute(f"SELECT array_agg({table}_id ORDER BY {table}_id) FROM {table}")
        values = cur.fetchone()[0]
        if not values:
            raise RuntimeError(f"no {table} rows: the static data was not seeded")
        ids[name], ids[f"n_{name}"] = values, len(values)
    return ids


def start_generating(cur) -> tuple[dict, int]:
    """Ready `cur` to insert generated sales orders: replica role, the static ids, the highest
    sales_order id so far."""
    cur.execute("SET session_replication_role = replica")
    ids = reference_ids(cur)
    cur.execute("SELECT coalesce(max(sales_order_id), 0) FROM sales_order")
    return ids, cur.fetchone()[0]


def generate_load(source: Source, start_lsn: int, rows: int, txn_rows: int, *, updates: bool = True) -> Load:
    """`rows` sales_order inserts (then as many updates) in transactions of `txn_rows`, then
    the end marker; one transaction of everything when txn_rows >= rows and not updates."""
    conn = psycopg2.connect(source.dsn)
    started = time.perf_counter()
    transactions = 0
    try:
        with conn.cursor() as cur:
            ids, base = start_generating(cur)
            conn.commit()
            cur.execute("SELECT last_value, is_called FROM sales_order_sales_order_id_seq")
            last_value, is_called = cur.fetchone()
            if (last_value if is_called else last_value - 1) != base:
                raise RuntimeError("sales_order's sequence is not at its highest id")
            for lo in range(1, rows + 1, txn_rows):
                hi = min(rows, lo + txn_rows - 1)
                cur.execute(INSERT, {**ids, "lo": base + lo, "hi": base + hi})
                conn.commit()
                transactions += 1
            if updates:
                for lo in range(1, rows + 1, txn_rows):
                    hi = min(rows, lo + txn_rows - 1)
                    cur.execute(UPDATE, (base + lo, base + hi))
                    if cur.rowcount != hi - lo + 1:
                        raise RuntimeError(f"updated {cur.rowcount} rows, not {hi - lo + 1}")
                    conn.commit()
                    transactions += 1
            # The message's end, where its transaction's commit record starts (or later, if
            # another backend wrote WAL in between): every load transaction commits before it.
            cur.execute("SELECT pg_logical_emit_message(true, %s, '')::text", (END_MARKER_PREFIX,))
            marker = parse_lsn(cur.fetchone()[0])
            conn.commit()
            cur.execute("SELECT pg_current_wal_lsn()::text")
            end = parse_lsn(cur.fetchone()[0])
            conn.commit()
    finally:
        conn.close()
    return Load(rows, rows if updates else 0, transactions, time.perf_counter() - started, start_lsn, marker, end)
