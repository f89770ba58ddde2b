"""The created totesys schema matches the reference (shared/reference/totesys-schema.md §2, as
`tests.schema_reference` reads it), column by column, read back from the server's catalog
rather than from our DDL."""

from __future__ import annotations

import psycopg2
import pytest

from totesys.schema import TABLES, create_schema


@pytest.fixture
def catalog(totesys_dsn):
    conn = psycopg2.connect(totesys_dsn)
    yield conn.cursor()
    conn.close()


def test_the_eleven_business_tables_and_prisma_bookkeeping_exist(catalog):
    catalog.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {name for (name,) in catalog.fetchall()} == set(TABLES) | {"_prisma_migrations"}


@pytest.mark.parametrize("table", TABLES)
def test_columns_match_reference_in_name_order_type_and_nullability(catalog, table, source_spec):
    catalog.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (f'public."{table}"',),
    )
    assert catalog.fetchall() == source_spec.tables[table]


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


def test_foreign_keys_and_their_actions(catalog, source_spec):
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
    assert set(catalog.fetchall()) == source_spec.foreign_keys


def test_enums_with_their_labels_in_order(catalog, source_spec):
    catalog.execute(
        "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_type t "
        "JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname"
    )
    assert dict(catalog.fetchall()) == source_spec.enums


def test_unique_indexes(catalog, source_spec):
    catalog.execute(
        "SELECT c.relname, a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.indisunique AND NOT i.indisprimary AND n.nspname = 'public'"
    )
    assert set(catalog.fetchall()) == source_spec.unique


def test_create_schema_is_idempotent(empty_database):
    assert create_schema(empty_database) is True
    assert create_schema(empty_database) is False
