"""The warehouse's statements in either dialect: CREATE (idempotent), ALTER of a widened mirror, row counts.

Every fact date column references dim_date, every id column its dimension. PostgreSQL
declares these foreign keys; DuckDB does not, and the sync checks them itself
(`checks.require_references`, set-based, in each slice's transaction, before it commits).
Why not in DuckDB: a DuckDB file has one writer (its file lock), the sync, so no other
writer can break them; DuckDB checks a declared key row by row in its ART index and keeps
each new row's nine index entries in memory until the commit, which made those checks about
half of every slice and most of a bulk load; and it cannot add a key to a table later
(no ALTER TABLE ... ADD FOREIGN KEY), so it could not be dropped for a bulk load and put
back. A warehouse file created with them keeps them (DuckDB cannot drop them either): it is
as correct, only slower. PostgreSQL additionally gets a partial unique index: at most one
`is_current` row per business key.
"""

from __future__ import annotations

from warehouse_sync.star_schema import BY_NAME, WAREHOUSE_TABLES
from warehouse_sync.sync_tables import CHECKPOINT, INTERNAL_TABLES
from warehouse_sync.table_model import DUCKDB, POSTGRES, Column, Table, quote_identifier, quote_literal, sql_type


def alter_column_type(table: Table, column: Column, dialect: str) -> str:
    """The statement that gives `table`'s `column` its (widened) type, in `dialect`."""
    return (
        f"ALTER TABLE {quote_identifier(table.name)} ALTER COLUMN {quote_identifier(column.name)} "
        f"TYPE {sql_type(column.type, dialect)}"
    )


def create_table(table: Table, dialect: str) -> list[str]:
    """CREATE statements (IF NOT EXISTS) for `table` in `dialect`, sequences and indexes included."""
    q = quote_identifier
    statements = []
    lines = []
    for column in table.columns:
        line = f"{q(column.name)} {sql_type(column.type, dialect)}"
        if column.type == "serial" and dialect == DUCKDB:
            statements.append(f"CREATE SEQUENCE IF NOT EXISTS {q(table.sequence)}")
            line += f" DEFAULT {next_value(table)}"
        if not column.nullable:
            line += " NOT NULL"
        lines.append(line)
    lines.append(f"CONSTRAINT {q(f'{table.name}_pkey')} PRIMARY KEY ({q(table.key)})")
    lines += [foreign_key_constraint(table, column) for column in declared_foreign_keys(table, dialect)]
    body = ",\n    ".join(lines)
    statements.append(f"CREATE TABLE IF NOT EXISTS {q(table.name)} (\n    {body}\n)")
    if dialect == POSTGRES:
        for index in table.indexes:
            unique, where = ("UNIQUE ", " WHERE is_current") if index.unique_current else ("", "")
            statements.append(
                f"CREATE {unique}INDEX IF NOT EXISTS {q(f'{table.name}_{index.suffix}')} "
                f"ON {q(table.name)} ({q(index.column)}){where}"
            )
    return statements


def declared_foreign_keys(table: Table, dialect: str) -> list[Column]:
    """The foreign keys `table` declares in `dialect`: all of them in PostgreSQL, none in DuckDB."""
    return table.foreign_keys if dialect == POSTGRES else []


def foreign_key_name(table: Table, column: Column) -> str:
    return f"{table.name}_{column.name}_fkey"


def foreign_key_constraint(table: Table, column: Column) -> str:
    """`CONSTRAINT ... FOREIGN KEY ... REFERENCES ...`: `column`'s key, as CREATE and ALTER declare it."""
    q = quote_identifier
    target = BY_NAME[column.references]
    return (
        f"CONSTRAINT {q(foreign_key_name(table, column))} FOREIGN KEY ({q(column.name)}) "
        f"REFERENCES {q(target.name)} ({q(target.key)})"
    )


def add_foreign_key(table: Table, column: Column) -> str:
    """PostgreSQL: declare `column`'s key again, which checks every row with one join."""
    return f"ALTER TABLE {quote_identifier(table.name)} ADD {foreign_key_constraint(table, column)}"


def drop_foreign_key(table: Table, column: Column) -> str:
    q = quote_identifier
    return f"ALTER TABLE {q(table.name)} DROP CONSTRAINT IF EXISTS {q(foreign_key_name(table, column))}"


def next_value(table: Table) -> str:
    """`nextval(...)` of the sequence behind `table`'s serial key (the sequence is named by
    a string that is itself parsed as an identifier: quoted, then a literal)."""
    return f"nextval({quote_literal(quote_identifier(table.sequence))})"


def schema_ddl(dialect: str) -> list[str]:
    """Every statement that creates the warehouse (idempotent), dimensions before facts."""
    statements = []
    for table in WAREHOUSE_TABLES + INTERNAL_TABLES:
        statements.extend(create_table(table, dialect))
    first_checkpoint = (
        f"INSERT INTO {quote_identifier(CHECKPOINT.name)} (id, lsn) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"  # nosec B608 # name quoted, constant values
    )
    statements.append(first_checkpoint)
    return statements


def row_counts_sql(names) -> str:
    """One query over both engines: each table of `names` as `t` and its row count as `n`."""
    return " UNION ALL ".join(
        f"SELECT {quote_literal(name)} AS t, count(*) AS n FROM {quote_identifier(name)}"  # nosec B608 # names quoted as identifiers and literals
        for name in names
    )
