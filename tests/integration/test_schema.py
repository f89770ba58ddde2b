"""The created totesys schema matches the reference (shared/reference/totesys-schema.md §2),
column by column, read back from the server's catalog rather than from our DDL."""

from __future__ import annotations

import psycopg2
import pytest

from totesys.schema import TABLES, create_schema

TS = "timestamp(3) without time zone"
STAMPS = [("created_at", TS, True), ("last_updated", TS, True)]

# (column, type as format_type() prints it, NOT NULL), in table order.
EXPECTED_COLUMNS: dict[str, list[tuple[str, str, bool]]] = {
    "address": [
        ("address_id", "integer", True),
        ("address_line_1", "text", True),
        ("address_line_2", "text", False),
        ("district", "text", False),
        ("city", "text", True),
        ("postal_code", "text", True),
        ("country", "text", True),
        ("phone", "text", True),
        *STAMPS,
    ],
    "counterparty": [
        ("counterparty_id", "integer", True),
        ("counterparty_legal_name", "text", True),
        ("legal_address_id", "integer", True),
        ("commercial_contact", "text", False),
        ("delivery_contact", "text", False),
        *STAMPS,
    ],
    "currency": [("currency_id", "integer", True), ("currency_code", "character varying(3)", True), *STAMPS],
    "department": [
        ("department_id", "integer", True),
        ("department_name", "text", True),
        ("location", "text", False),
        ("manager", "text", False),
        *STAMPS,
    ],
    "design": [
        ("design_id", "integer", True),
        ("created_at", TS, True),
        ("design_name", "text", True),
        ("file_location", "text", True),
        ("file_name", "text", True),
        ("last_updated", TS, True),
    ],
    "staff": [
        ("staff_id", "integer", True),
        ("first_name", "text", True),
        ("last_name", "text", True),
        ("department_id", "integer", True),
        ("email_address", "text", True),
        *STAMPS,
    ],
    "sales_order": [
        ("sales_order_id", "integer", True),
        *STAMPS,
        ("design_id", "integer", True),
        ("staff_id", "integer", True),
        ("counterparty_id", "integer", True),
        ("units_sold", "integer", True),
        ("unit_price", "numeric(10,2)", True),
        ("currency_id", "integer", True),
        ("agreed_delivery_date", "text", True),
        ("agreed_payment_date", "text", True),
        ("agreed_delivery_location_id", "integer", True),
    ],
    "purchase_order": [
        ("purchase_order_id", "integer", True),
        *STAMPS,
        ("staff_id", "integer", True),
        ("counterparty_id", "integer", True),
        ("item_code", "text", True),
        ("item_quantity", "integer", True),
        ("item_unit_price", "numeric(10,2)", True),
        ("currency_id", "integer", True),
        ("agreed_delivery_date", "text", True),
        ("agreed_payment_date", "text", True),
        ("agreed_delivery_location_id", "integer", True),
    ],
    "transaction": [
        ("transaction_id", "integer", True),
        ("transaction_type", '"TransactionType"', True),
        ("sales_order_id", "integer", False),
        ("purchase_order_id", "integer", False),
        *STAMPS,
    ],
    "payment": [
        ("payment_id", "integer", True),
        *STAMPS,
        ("transaction_id", "integer", True),
        ("counterparty_id", "integer", True),
        ("payment_amount", "numeric(10,2)", True),
        ("currency_id", "integer", True),
        ("payment_type_id", "integer", True),
        ("paid", "boolean", True),
        ("payment_date", "text", True),
        ("company_ac_number", "integer", True),
        ("counterparty_ac_number", "integer", True),
    ],
    "payment_type": [("payment_type_id", "integer", True), ("payment_type_name", '"PaymentTypeName"', True), *STAMPS],
}

# (table, column, referenced table, referenced column, ON UPDATE, ON DELETE)
RESTRICT = ("CASCADE", "RESTRICT")
EXPECTED_FOREIGN_KEYS = {
    ("counterparty", "legal_address_id", "address", "address_id", *RESTRICT),
    ("staff", "department_id", "department", "department_id", *RESTRICT),
    ("sales_order", "design_id", "design", "design_id", *RESTRICT),
    ("sales_order", "staff_id", "staff", "staff_id", *RESTRICT),
    ("sales_order", "counterparty_id", "counterparty", "counterparty_id", *RESTRICT),
    ("sales_order", "currency_id", "currency", "currency_id", *RESTRICT),
    ("sales_order", "agreed_delivery_location_id", "address", "address_id", *RESTRICT),
    ("purchase_order", "staff_id", "staff", "staff_id", *RESTRICT),
    ("purchase_order", "counterparty_id", "counterparty", "counterparty_id", *RESTRICT),
    ("purchase_order", "currency_id", "currency", "currency_id", *RESTRICT),
    ("purchase_order", "agreed_delivery_location_id", "address", "address_id", *RESTRICT),
    ("transaction", "sales_order_id", "sales_order", "sales_order_id", "CASCADE", "SET NULL"),
    ("transaction", "purchase_order_id", "purchase_order", "purchase_order_id", "CASCADE", "SET NULL"),
    ("payment", "transaction_id", "transaction", "transaction_id", *RESTRICT),
    ("payment", "counterparty_id", "counterparty", "counterparty_id", *RESTRICT),
    ("payment", "currency_id", "currency", "currency_id", *RESTRICT),
    ("payment", "payment_type_id", "payment_type", "payment_type_id", *RESTRICT),
}

EXPECTED_ENUMS = {
    "PaymentTypeName": ["SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"],
    "TransactionType": ["SALE", "PURCHASE"],
}

EXPECTED_UNIQUE = {
    ("payment", "transaction_id"),
    ("transaction", "sales_order_id"),
    ("transaction", "purchase_order_id"),
}


@pytest.fixture
def catalog(totesys_dsn):
    conn = psycopg2.connect(totesys_dsn)
    yield conn.cursor()
    conn.close()


def test_the_eleven_business_tables_and_prisma_bookkeeping_exist(catalog):
    catalog.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {name for (name,) in catalog.fetchall()} == set(TABLES) | {"_prisma_migrations"}


@pytest.mark.parametrize("table", TABLES)
def test_columns_match_reference_in_name_order_type_and_nullability(catalog, table):
    catalog.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (f'public."{table}"',),
    )
    assert catalog.fetchall() == EXPECTED_COLUMNS[table]


@pytest.mark.parametrize("table", TABLES)
def test_primary_key_is_a_serial_table_id(catalog, table):
    catalog.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (f'public."{table}"',),
    )
    assert catalog.fetchall() == [(f"{table}_id",)]
    catalog.execute("SELECT pg_get_serial_sequence(%s, %s) IS NOT NULL", (f'public."{table}"', f"{table}_id"))
    assert catalog.fetchone() == (True,)


def test_timestamps_default_to_now_and_last_updated_has_no_default(catalog):
    catalog.execute(
        "SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attname IN ('created_at', 'last_updated')"
    )
    defaults = {(t, c): d for t, c, d in catalog.fetchall() if t in TABLES}
    assert len(defaults) == 2 * len(TABLES)
    for (table, column), default in defaults.items():
        if column == "created_at":
            assert default == "CURRENT_TIMESTAMP", table
        else:
            assert default is None, table


def test_foreign_keys_and_their_actions(catalog):
    catalog.execute(
        """
        SELECT src.relname, sa.attname, dst.relname, da.attname,
               CASE c.confupdtype WHEN 'c' THEN 'CASCADE' WHEN 'r' THEN 'RESTRICT' WHEN 'a' THEN 'NO ACTION'
                                  WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' END,
               CASE c.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'r' THEN 'RESTRICT' WHEN 'a' THEN 'NO ACTION'
                                  WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' END
        FROM pg_constraint c
        JOIN pg_class src ON src.oid = c.conrelid
        JOIN pg_class dst ON dst.oid = c.confrelid
        JOIN pg_attribute sa ON sa.attrelid = c.conrelid AND sa.attnum = c.conkey[1]
        JOIN pg_attribute da ON da.attrelid = c.confrelid AND da.attnum = c.confkey[1]
        WHERE c.contype = 'f'
        """
    )
    assert set(catalog.fetchall()) == EXPECTED_FOREIGN_KEYS


def test_enums_with_their_labels_in_order(catalog):
    catalog.execute(
        "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_type t "
        "JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname"
    )
    assert dict(catalog.fetchall()) == EXPECTED_ENUMS


def test_unique_indexes(catalog):
    catalog.execute(
        "SELECT c.relname, a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.indisunique AND NOT i.indisprimary AND n.nspname = 'public'"
    )
    assert set(catalog.fetchall()) == EXPECTED_UNIQUE


def test_create_schema_is_idempotent(empty_database):
    assert create_schema(empty_database) is True
    assert create_schema(empty_database) is False
