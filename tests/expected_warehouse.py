"""An independent SQL rendition of §3/§4 of the schema reference, to compare the warehouse with.

Written in DuckDB SQL independently of `warehouse_sync` (it shares nothing with it but the spec):
typed views `s_<table>` over source rows, then one query per warehouse table.
"""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import polars as pl


from tests.scripted_source import SOURCE_COLUMNS, TS3, ScriptedSource


SOURCE_SQL_TYPES = {"integer": "INTEGER", "numeric(10,2)": "DECIMAL(10,2)", TS3: "TIMESTAMP", "boolean": "BOOLEAN"}


def typed_source_sql(table: str, relation: str) -> str:
    """SELECT over `relation` (text or natively typed columns of a source table) that types
    every column as the source does (PostgreSQL → DuckDB); float money is rounded to cents."""
    items = []
    for name, type_name in SOURCE_COLUMNS[table]:
        target = SOURCE_SQL_TYPES.get(type_name, "VARCHAR")
        value = name
        if target == "DECIMAL(10,2)":
            value = f"round(CAST({name} AS DOUBLE), 2)"
        if target == "INTEGER":
            value = f"CAST(nullif(CAST({name} AS DOUBLE), 'NaN'::DOUBLE) AS BIGINT)"
        if target == "BOOLEAN":
            value = f"CAST(CAST({name} AS VARCHAR) IN ('t', 'true') AS BOOLEAN)"
        items.append(f"CAST({value} AS {target}) AS {name}")
    return f"SELECT {', '.join(items)} FROM {relation}"


# Every fact's created_at and last_updated, each split into a date and a time.
FACT_STAMPS = """CAST(created_at AS DATE) AS created_date, CAST(created_at AS TIME) AS created_time,
               CAST(last_updated AS DATE) AS last_updated_date, CAST(last_updated AS TIME) AS last_updated_time"""
TEXT_DATES = ("agreed_delivery_date", "agreed_payment_date", "payment_date")
"""The source's dates kept as text (yyyy-mm-dd, §2), which the facts hold as DATE (§3.2)."""


def _fact_select(source: str, columns: str) -> str:
    """A fact's rows from its source table: the source's id, FACT_STAMPS, then `columns` (a
    comma-separated SELECT list), the TEXT_DATES among them cast to DATE."""
    items = [f"CAST({c} AS DATE) AS {c}" if c in TEXT_DATES else c for c in columns.split(", ")]
    return f"SELECT {source}_id, {FACT_STAMPS}, {', '.join(items)} FROM s_{source}"


EXPECTED_SQL = {
    "dim_staff": """
        SELECT s.staff_id, s.first_name, s.last_name, coalesce(d.department_name, '') AS department_name,
               coalesce(d.location, '') AS location, s.email_address
        FROM s_staff s LEFT JOIN s_department d ON d.department_id = s.department_id""",
    "dim_location": """
        SELECT address_id AS location_id, address_line_1, address_line_2, district, city, postal_code, country, phone
        FROM s_address""",
    "dim_design": "SELECT design_id, design_name, file_location, file_name FROM s_design",
    "dim_currency": """
        SELECT currency_id, currency_code,
               CASE currency_code WHEN 'GBP' THEN 'Pound Sterling' WHEN 'USD' THEN 'US Dollar'
                                  WHEN 'EUR' THEN 'Euro' ELSE currency_code END AS currency_name
        FROM s_currency""",
    "dim_counterparty": """
        SELECT c.counterparty_id, c.counterparty_legal_name,
               a.address_line_1 AS counterparty_legal_address_line_1,
               a.address_line_2 AS counterparty_legal_address_line_2,
               a.district AS counterparty_legal_district, a.city AS counterparty_legal_city,
               a.postal_code AS counterparty_legal_postal_code, a.country AS counterparty_legal_country,
               a.phone AS counterparty_legal_phone_number
        FROM s_counterparty c JOIN s_address a ON a.address_id = c.legal_address_id""",
    "dim_payment_type": "SELECT payment_type_id, payment_type_name FROM s_payment_type",
    "dim_transaction": "SELECT transaction_id, transaction_type, sales_order_id, purchase_order_id FROM s_transaction",
    "fact_sales_order": _fact_select(
        "sales_order",
        "staff_id AS sales_staff_id, counterparty_id, units_sold, unit_price, currency_id, design_id, "
        "agreed_payment_date, agreed_delivery_date, agreed_delivery_location_id",
    ),
    "fact_purchase_order": _fact_select(
        "purchase_order",
        "staff_id, counterparty_id, item_code, item_quantity, item_unit_price, currency_id, "
        "agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id",
    ),
    "fact_payment": _fact_select(
        "payment", "transaction_id, counterparty_id, payment_amount, currency_id, payment_type_id, paid, payment_date"
    ),
}
FACT_DATE_COLUMNS = {
    "fact_sales_order": ["created_date", "last_updated_date", "agreed_payment_date", "agreed_delivery_date"],
    "fact_purchase_order": ["created_date", "last_updated_date", "agreed_delivery_date", "agreed_payment_date"],
    "fact_payment": ["created_date", "last_updated_date", "payment_date"],
}


def expected_dim_date(connection: duckdb.DuckDBPyConnection, referenced: list[date], today: date) -> pl.DataFrame:
    """The calendar: 2022-11-01 to a year after `today` (or the latest referenced day), plus
    referenced days before it; ISO weekday, English names, quarter."""
    end = max([today + timedelta(days=366), *referenced])
    early = [d for d in referenced if d < date(2022, 11, 1)]
    connection.execute("CREATE OR REPLACE TEMP TABLE early_days (d DATE)")
    if early:
        connection.executemany("INSERT INTO early_days VALUES (?)", [(d,) for d in early])
    return pl.from_arrow(
        connection.sql(f"""
        WITH days AS (
            SELECT CAST(d AS DATE) AS d FROM generate_series(DATE '2022-11-01', DATE '{end}', INTERVAL 1 DAY) g(d)
            UNION SELECT d FROM early_days)
        SELECT d AS date_id, year(d) AS year, month(d) AS month, day(d) AS day, isodow(d) AS day_of_week,
               dayname(d) AS day_name, monthname(d) AS month_name, quarter(d) AS quarter
        FROM days ORDER BY d""").to_arrow_table()
    )


def source_connection(relations: dict[str, str]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a typed view `s_<table>` over each relation SQL given."""
    connection = duckdb.connect()
    for table, relation in relations.items():
        connection.execute(f"CREATE VIEW s_{table} AS {typed_source_sql(table, relation)}")
    return connection


def scripted_relations(connection: duckdb.DuckDBPyConnection, source: ScriptedSource) -> dict[str, str]:
    """Register the scripted source's current rows (text) in `connection`; return relations."""
    relations = {}
    for table, columns in SOURCE_COLUMNS.items():
        names = [n for n, _ in columns]
        frame = pl.DataFrame(
            [list(r.values()) for r in source.rows[table].values()], schema={n: pl.String for n in names}, orient="row"
        )
        connection.register(f"text_{table}", frame.to_arrow())
        relations[table] = f"text_{table}"
    return relations


def expected_tables(connection: duckdb.DuckDBPyConnection) -> dict[str, pl.DataFrame]:
    """Every non-date table of §3 from the `s_<table>` views (facts: the current rows)."""
    return {name: pl.from_arrow(connection.sql(query).to_arrow_table()) for name, query in EXPECTED_SQL.items()}


def scripted_expected(source: ScriptedSource) -> tuple[duckdb.DuckDBPyConnection, dict[str, pl.DataFrame]]:
    connection = duckdb.connect()
    for table, relation in scripted_relations(connection, source).items():
        connection.execute(f"CREATE VIEW s_{table} AS {typed_source_sql(table, relation)}")
    return connection, expected_tables(connection)
