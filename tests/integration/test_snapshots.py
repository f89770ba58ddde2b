"""The real totesys snapshots load into our schema with every constraint enforced."""

from __future__ import annotations

import psycopg2
import pytest

from totesys.snapshots import load_snapshot, read_table, snapshot_tables

SNAPSHOTS = ["snapshot_2024-05-16_aranparrish", "snapshot_2024-11-15_aidan-mooney", "snapshot_2025-02-25_torsatherley"]


def _rows(cur, query):
    cur.execute(query)
    return cur.fetchall()


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_snapshot_loads_with_every_constraint_checked(totesys_dsn, shared_snapshot, name):
    folder = shared_snapshot(name)
    loaded = load_snapshot(totesys_dsn, folder)
    files = snapshot_tables(folder)
    assert set(loaded) == set(files)
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        for table, path in files.items():
            cur.execute(f'SELECT count(*), count(DISTINCT {table}_id) FROM "{table}"')
            count, distinct = cur.fetchone()
            assert count == distinct == read_table(path).height, table
            # The ids continue after the loaded rows.
            cur.execute("SELECT pg_get_serial_sequence(%s, %s)", (f'"{table}"', f"{table}_id"))
            (sequence,) = cur.fetchone()
            cur.execute(f'SELECT nextval(%s), (SELECT max({table}_id) FROM "{table}")', (sequence,))
            following, highest = cur.fetchone()
            assert following == highest + 1


def test_full_snapshot_values_survive_exactly(totesys_dsn, shared_snapshot):
    """Money stays exact, NULL ids stay NULL, milliseconds are kept, and the real data obeys
    the business rules the simulator copies (so the rules are not our invention)."""
    load_snapshot(totesys_dsn, shared_snapshot("snapshot_2024-11-15_aidan-mooney"))
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        assert _rows(
            cur, "SELECT count(*) FROM transaction WHERE sales_order_id IS NULL AND purchase_order_id IS NULL"
        ) == [(0,)]
        assert _rows(
            cur, "SELECT count(*) FROM transaction WHERE transaction_type = 'SALE' AND sales_order_id IS NULL"
        ) == [(0,)]
        assert _rows(cur, "SELECT location FROM department WHERE department_name = 'Dispatch'") == [("Leds",)]
        mismatched = _rows(
            cur,
            """
            SELECT count(*) FROM payment p JOIN transaction t USING (transaction_id)
            JOIN sales_order s USING (sales_order_id)
            WHERE p.payment_amount <> s.units_sold * s.unit_price
               OR p.payment_date <> s.agreed_payment_date OR p.currency_id <> s.currency_id""",
        )
        assert mismatched == [(0,)]
        with_millis = _rows(
            cur, "SELECT count(*) FROM sales_order WHERE date_part('milliseconds', created_at)::int % 1000 <> 0"
        )
        assert with_millis[0][0] > 0
