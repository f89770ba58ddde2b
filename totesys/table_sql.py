"""The simulator's SQL on the totesys tables: ids, sequences, updates and bulk writes.

Identifiers are always composed with psycopg2.sql.
"""

from __future__ import annotations

import io
import random
from datetime import date, datetime

from psycopg2 import sql
from psycopg2.extras import execute_values

from change_events.errors import Kind, TotesError
from totesys.business import World
from totesys.facts import CHAOS_COLUMN, CHAOS_TABLE, PURCHASE_PAYMENT, SALES_RECEIPT
from totesys.schema import TABLES

STATIC_TABLES = ("address", "counterparty", "currency", "department", "staff", "payment_type")
MOVING_TABLES = ("design", "sales_order", "purchase_order", "transaction", "payment")
WRITE_ORDER = TABLES  # parents before children


class SimulatorError(TotesError, RuntimeError):
    """The simulator cannot work on this database; str() is one sentence that says why."""

    kind = Kind.SOURCE


def primary_key(table: str) -> str:
    return f"{table}_id"


def count_rows(cur, table: str) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return cur.fetchone()[0]


def ids_of(cur, table: str) -> list[int]:
    pk = sql.Identifier(primary_key(table))
    cur.execute(sql.SQL("SELECT {} FROM {} ORDER BY {}").format(pk, sql.Identifier(table), pk))
    return [r[0] for r in cur.fetchall()]


def has_column(cur, table: str, column: str) -> bool:
    cur.execute(
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s AND column_name = %s",
        (table, column),
    )
    return cur.fetchone() is not None


def load_world(cur) -> World:
    cur.execute("SELECT payment_type_name::text, payment_type_id FROM payment_type")
    types = dict(cur.fetchall())
    world = World(
        address_ids=ids_of(cur, "address"),
        counterparty_ids=ids_of(cur, "counterparty"),
        currency_ids=ids_of(cur, "currency"),
        staff_ids=ids_of(cur, "staff"),
        design_ids=ids_of(cur, "design"),
        sales_payment_type_id=types.get(SALES_RECEIPT, 1),
        purchase_payment_type_id=types.get(PURCHASE_PAYMENT, 3),
        sales_extra_column=(CHAOS_COLUMN if has_column(cur, CHAOS_TABLE, CHAOS_COLUMN) else None),
    )
    missing = [
        name
        for name, ids in (
            ("address", world.address_ids),
            ("counterparty", world.counterparty_ids),
            ("currency", world.currency_ids),
            ("staff", world.staff_ids),
            ("design", world.design_ids),
        )
        if not ids
    ]
    if missing:
        raise SimulatorError(f"Orders need rows in {', '.join(missing)}, which are empty.")
    return world


def newest_row(cur) -> datetime | None:
    """The latest moment any row was created or updated (history continues after it)."""
    parts = [
        sql.SQL("SELECT max(greatest(created_at, last_updated)) AS m FROM {}").format(sql.Identifier(t))
        for t in MOVING_TABLES
    ]
    cur.execute(sql.SQL("SELECT max(m) FROM ({}) AS newest").format(sql.SQL(" UNION ALL ").join(parts)))
    return cur.fetchone()[0]


def sequence_of(cur, table: str) -> str:
    cur.execute("SELECT pg_get_serial_sequence(%s, %s)", (sql.Identifier(table).as_string(cur), primary_key(table)))
    name = cur.fetchone()[0]
    if name is None:
        raise SimulatorError(f"Table {table} has no serial sequence on {primary_key(table)}.")
    return name


def high_water(cur, table: str) -> int:
    """The highest id ever handed out: max(id), or the sequence if rows were deleted since."""
    cur.execute(
        sql.SQL(
            "SELECT greatest(coalesce(max({}), 0), coalesce(pg_sequence_last_value(%s::regclass), 0)) FROM {}"
        ).format(sql.Identifier(primary_key(table)), sql.Identifier(table)),
        (sequence_of(cur, table),),
    )
    return cur.fetchone()[0]


def advance_sequence(cur, table: str) -> None:
    """After explicit ids: the next default id follows the largest one (never goes back)."""
    sequence = sequence_of(cur, table)
    cur.execute(
        sql.SQL(
            "SELECT setval(%(seq)s::regclass, greatest(coalesce(max({}), 0), "
            "coalesce(pg_sequence_last_value(%(seq)s::regclass), 0), 1)) FROM {}"
        ).format(sql.Identifier(primary_key(table)), sql.Identifier(table)),
        {"seq": sequence},
    )


def next_ids(cur, sequence: str, count: int) -> list[int]:
    if count <= 0:
        return []
    cur.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", (sequence, count))
    return [r[0] for r in cur.fetchall()]


def random_id(cur, rng: random.Random, table: str) -> int | None:
    """A uniformly drawn existing id (the next one up if the drawn id was deleted)."""
    pk, name = sql.Identifier(primary_key(table)), sql.Identifier(table)
    cur.execute(sql.SQL("SELECT max({}) FROM {}").format(pk, name))
    highest = cur.fetchone()[0]
    if highest is None:
        return None
    cur.execute(
        sql.SQL("SELECT {pk} FROM {t} WHERE {pk} >= %s ORDER BY {pk} LIMIT 1").format(pk=pk, t=name),
        (rng.randint(1, highest),),
    )
    row = cur.fetchone()
    return row[0] if row else None


def update_row(cur, table: str, row_id: int, changes: dict) -> None:
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(column)) for column in changes)
    cur.execute(
        sql.SQL("UPDATE {} SET {} WHERE {} = %s").format(
            sql.Identifier(table), assignments, sql.Identifier(primary_key(table))
        ),
        [*changes.values(), row_id],
    )


def _columns(rows: list[dict]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c) for c in rows[0])


def insert_rows(cur, table: str, rows: list[dict]) -> None:
    query = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(sql.Identifier(table), _columns(rows))
    execute_values(cur, query.as_string(cur), [tuple(r.values()) for r in rows], page_size=1000)


def copy_rows(cur, table: str, rows: list[dict]) -> None:
    """COPY from an in-memory buffer: the fast way to write a long history."""
    if not rows:
        return
    buffer = io.StringIO()
    buffer.writelines("\t".join(map(_copy_text, row.values())) + "\n" for row in rows)
    buffer.seek(0)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), _columns(rows))
    cur.copy_expert(statement.as_string(cur), buffer)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, date):
        return value.isoformat()
    return str(value).translate(_COPY_ESCAPES)
