"""Create the totesys database and schema on any PostgreSQL server."""

from __future__ import annotations

from importlib import resources

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from cdc_reader.source import keepalive_params

# The 11 business tables, parents before children (the order inserts must follow).
TABLES: tuple[str, ...] = (
    "address",
    "counterparty",
    "currency",
    "department",
    "design",
    "staff",
    "payment_type",
    "sales_order",
    "purchase_order",
    "transaction",
    "payment",
)

DEFAULT_DATABASE = "totesys"


def schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


def with_database(dsn: str, dbname: str) -> str:
    """The same connection settings, pointed at another database."""
    return make_dsn(dsn, dbname=dbname)


def ensure_database(admin_dsn: str, dbname: str = DEFAULT_DATABASE) -> str:
    """Create `dbname` unless it exists; return a DSN for it."""
    conn = psycopg2.connect(admin_dsn, **keepalive_params(admin_dsn))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    finally:
        conn.close()
    return with_database(admin_dsn, dbname)


def has_schema(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.address') IS NOT NULL")
        return bool(cur.fetchone()[0])


def create_schema(dsn: str) -> bool:
    """Create the totesys tables unless they are there; True when they were created now."""
    conn = psycopg2.connect(dsn, **keepalive_params(dsn))
    try:
        with conn:
            if has_schema(conn):
                return False
            with conn.cursor() as cur:
                cur.execute(schema_sql())
        return True
    finally:
        conn.close()
