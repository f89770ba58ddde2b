"""What the source looks like right now: row counts, newest change, WAL position, slots.

Read-only queries shared by `totes status` and the demo's live view.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg2 import sql

from totesys.schema import TABLES


@dataclass(frozen=True)
class SlotInfo:
    name: str
    active: bool
    retained_wal_bytes: int | None
    confirmed_flush_lsn: str | None


@dataclass(frozen=True)
class SourceSnapshot:
    """One reading of the source, taken in a single read-only transaction."""

    taken_at: datetime
    server_version: str
    wal_level: str
    wal_lsn: str
    wal_bytes: int
    row_counts: dict[str, int]
    latest_change: datetime | None
    slots: tuple[SlotInfo, ...]


def read_source(conn, tables: tuple[str, ...] = TABLES) -> SourceSnapshot:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT now(), current_setting('server_version'), current_setting('wal_level'), "
            "pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
        )
        taken_at, version, wal_level, lsn, wal_bytes = cur.fetchone()
        cur.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' AND relname = ANY(%s)",
            (list(tables),),
        )
        existing = {name for (name,) in cur.fetchall()}
        present = [t for t in tables if t in existing]
        counts: dict[str, int] = {}
        latest = None
        if present:
            parts = [
                sql.SQL("SELECT {name}, count(*), max(last_updated) FROM {table}").format(
                    name=sql.Literal(t), table=sql.Identifier(t)
                )
                for t in present
            ]
            cur.execute(sql.SQL(" UNION ALL ").join(parts))
            for table, count, newest in cur.fetchall():
                counts[table] = count
                if newest is not None and (latest is None or newest > latest):
                    latest = newest
        cur.execute(
            "SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
            "confirmed_flush_lsn::text FROM pg_replication_slots WHERE database = current_database() "
            "ORDER BY slot_name"
        )
        slots = tuple(SlotInfo(*row) for row in cur.fetchall())
    conn.rollback()
    return SourceSnapshot(taken_at, version, wal_level, lsn, wal_bytes, counts, latest, slots)
