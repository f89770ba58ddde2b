"""The publication and the replication slot: created when missing, verified when present.

Nothing here drops anything. A publication this reader creates is marked with a comment, so
a later run may add tables to it; one that somebody else created is only checked, and what
it lacks is reported with the statement that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2
from psycopg2 import errors, sql

from change_events import parse_lsn
from change_events.errors import Kind, TotesError

MANAGED_COMMENT = "managed by totes-cdc"


class SourceSetupError(TotesError, RuntimeError):
    """The source lacks something the reader needs; the message names the fix."""

    kind = Kind.SOURCE


class SlotLostError(SourceSetupError):
    """The reader's slot was invalidated or dropped: the WAL since it was last confirmed is
    gone. Recovery is one explicit run with --reset (see `Reader.prepare`)."""

    @classmethod
    def of_slot(cls, name: str, why: str) -> SlotLostError:
        """Slot `name` lost because it `why` ("is gone ...", "cannot stream ...")."""
        return cls(
            f"Replication slot {name!r} {why}, so the changes made since it was last confirmed cannot be read",
            fix="run the reader once with --reset to take a new snapshot from a new slot, which replaces every "
            "table downstream (rows deleted meanwhile go, nothing is doubled).",
        )


@dataclass(frozen=True)
class SlotState:
    name: str
    plugin: str
    database: str
    active: bool
    confirmed_flush_lsn: int | None
    wal_status: str | None = None
    invalidation_reason: str | None = None
    """Set once PostgreSQL invalidated the slot (17+; `wal_status = 'lost'` from 13)."""

    @property
    def lost(self) -> bool:
        """The slot can no longer stream: PostgreSQL removed WAL it needed (or invalidated it otherwise)."""
        return self.wal_status == "lost" or self.invalidation_reason is not None

    def why_lost(self) -> str:
        reason = self.invalidation_reason or "wal_removed"
        if reason == "wal_removed":
            return (
                "was invalidated by PostgreSQL (wal_removed: it held back more WAL than max_slot_wal_keep_size allows)"
            )
        return f"was invalidated by PostgreSQL ({reason})"


def _quoted_tables(conn, schema: str, tables, columns: dict[str, list[str]] | None = None) -> sql.Composable:
    """`schema.t, ...`, a table with a column list in `columns` as `schema.t (a, b)`."""
    columns = columns or {}
    return sql.SQL(", ").join(
        sql.SQL("{} ({})").format(sql.Identifier(schema, t), sql.SQL(", ").join(map(sql.Identifier, columns[t])))
        if t in columns
        else sql.Identifier(schema, t)
        for t in tables
    )


def _column_lists(cur, schema: str, tables, dropped: dict[str, frozenset[str]]) -> dict[str, list[str]]:
    """The column list to publish of every table with columns to drop (personal data), where
    the server has column lists (15+) and the table's replica identity is not FULL (a list
    must cover the replica identity; the reader drops those columns itself)."""
    if cur.connection.server_version < 150000:
        return {}
    lists = {}
    for table in tables:
        if not dropped.get(table):
            continue
        cur.execute(
            "SELECT c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, table),
        )
        found = cur.fetchone()
        if found is None or found[0] == "f":
            continue
        cur.execute(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
            "AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
            (sql.Identifier(schema, table).as_string(cur.connection),),
        )
        lists[table] = [name for (name,) in cur.fetchall() if name not in dropped[table]]
    return lists


def _sql(conn, statement: sql.Composable) -> str:
    """`statement` as text for an error message that tells the operator what to run."""
    return statement.as_string(conn)


def ensure_publication(
    conn, name: str, schema: str, tables: tuple[str, ...], dropped: dict[str, frozenset[str]] | None = None
) -> bool:
    """Make `name` publish every table of `tables`, without the `dropped` columns of a table
    where the server can (`_column_lists`); True when it had to be created."""
    dropped = dropped or {}
    with conn.cursor() as cur:
        lists = _column_lists(cur, schema, tables, dropped)
        cur.execute(
            "SELECT p.oid, obj_description(p.oid, 'pg_publication'), p.pubinsert AND p.pubupdate "
            "AND p.pubdelete AND p.pubtruncate FROM pg_publication p WHERE p.pubname = %s",
            (name,),
        )
        found = cur.fetchone()
        try:
            if found is None:
                cur.execute(
                    sql.SQL(
                        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate')"
                    ).format(sql.Identifier(name), _quoted_tables(conn, schema, tables, lists))
                )
                cur.execute(
                    sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
                        sql.Identifier(name), sql.Literal(MANAGED_COMMENT)
                    )
                )
                conn.commit()
                return True
            _, comment, publishes_everything = found
            cur.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s", (name, schema)
            )
            published = {t for (t,) in cur.fetchall()}
            missing = [t for t in tables if t not in published]
            if missing and comment == MANAGED_COMMENT:
                cur.execute(
                    sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                        sql.Identifier(name), _quoted_tables(conn, schema, missing, lists)
                    )
                )
                missing = []
            if comment == MANAGED_COMMENT and conn.server_version >= 150000:
                _update_column_lists(cur, name, schema, [t for t in tables if t in published], lists)
            conn.commit()
        except errors.InsufficientPrivilege as error:
            conn.rollback()
            raise SourceSetupError(
                f"The reader's role may not create or change publication {name!r} ({error.diag.message_primary})",
                fix=f"create it as the tables' owner with CREATE PUBLICATION {_sql(conn, sql.Identifier(name))} "
                f"FOR TABLE {_sql(conn, _quoted_tables(conn, schema, tables))}; or grant the role ownership.",
            ) from None
        except errors.UndefinedTable as error:
            conn.rollback()
            raise SourceSetupError(
                f"A table to publish does not exist ({error.diag.message_primary})",
                fix="create it or remove it from the reader's table list.",
            ) from None
    if missing:
        raise SourceSetupError(  # one string: the message ends with table names, whose last dot must stay
            f"Publication {name!r} does not publish {', '.join(missing)}: run "
            f"ALTER PUBLICATION {_sql(conn, sql.Identifier(name))} ADD TABLE "
            f"{_sql(conn, _quoted_tables(conn, schema, missing))};"
        )
    if not publishes_everything:
        raise SourceSetupError(
            f"Publication {name!r} does not publish every kind of change",
            fix=f"run ALTER PUBLICATION {_sql(conn, sql.Identifier(name))} "
            "SET (publish = 'insert, update, delete, truncate');",
        )
    return False


def _update_column_lists(cur, name: str, schema: str, tables, lists: dict[str, list[str]]) -> None:
    """Tables whose published columns differ from what the policy wants (a drop added or
    removed, a column added since) are published again with the right list, in the same
    transaction, so no change falls between."""
    cur.execute(
        "SELECT tablename, attnames FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s", (name, schema)
    )
    published = dict(cur.fetchall())
    stale = []
    for table in tables:
        if table in lists:
            wanted = lists[table]
        else:
            cur.execute(
                "SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = "
                "%s::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''",
                (sql.Identifier(schema, table).as_string(cur.connection),),
            )
            wanted = cur.fetchone()[0]
        if list(published.get(table) or []) != list(wanted):
            stale.append(table)
    for table in stale:
        cur.execute(
            sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(name), sql.Identifier(schema, table))
        )
        cur.execute(
            sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(name), _quoted_tables(cur.connection, schema, [table], lists)
            )
        )


def slot_state(conn, name: str) -> SlotState | None:
    with conn.cursor() as cur:
        # Through jsonb: wal_status and invalidation_reason are missing from older servers.
        cur.execute(
            "SELECT slot_name, plugin, database, active, confirmed_flush_lsn::text, "
            "to_jsonb(s) ->> 'wal_status', to_jsonb(s) ->> 'invalidation_reason' "
            "FROM pg_replication_slots AS s WHERE slot_name = %s",
            (name,),
        )
        row = cur.fetchone()
    conn.rollback()
    if row is None:
        return None
    slot_name, plugin, database, active, confirmed, wal_status, reason = row
    return SlotState(
        slot_name, plugin, database, active, parse_lsn(confirmed) if confirmed else None, wal_status, reason
    )


def drop_slot(conn, name: str) -> None:
    """Drop a slot the reader owns and can no longer use (invalidated, or a cut-off replacement)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    conn.commit()


def check_slot(state: SlotState, database: str) -> None:
    """A slot we would resume from must be a pgoutput slot of this database."""
    if state.plugin != "pgoutput":
        raise SourceSetupError(
            f"Replication slot {state.name!r} uses plugin {state.plugin!r}, not pgoutput",
            fix="choose another slot name (--slot) or drop that slot if it is unused.",
        )
    if state.database != database:
        raise SourceSetupError(
            f"Replication slot {state.name!r} belongs to database {state.database!r}, not {database!r}",
            fix="choose another slot name (--slot).",
        )


@dataclass(frozen=True)
class NewSlot:
    """A slot just created, with the snapshot that sees exactly what precedes it."""

    consistent_lsn: int
    snapshot_name: str


def create_slot(replication_cursor, name: str, *, temporary: bool = False) -> NewSlot:
    """Create a pgoutput slot on a replication connection, exporting its snapshot.

    The snapshot stays usable only while that connection stays open and idle, so the caller
    reads the initial snapshot before it starts streaming on it. A `temporary` slot is
    dropped when its connection closes (used only for the snapshot it exports).
    """
    kind = sql.SQL("TEMPORARY LOGICAL" if temporary else "LOGICAL")
    try:
        replication_cursor.execute(
            sql.SQL("CREATE_REPLICATION_SLOT {} {} pgoutput (SNAPSHOT 'export')").format(sql.Identifier(name), kind)
        )
    except errors.DuplicateObject:
        raise SourceSetupError(f"Replication slot {name!r} already exists") from None
    except psycopg2.Error as error:
        raise SourceSetupError(explain_slot_error(name, error)) from None
    _, consistent_point, snapshot_name, _ = replication_cursor.fetchone()
    return NewSlot(parse_lsn(consistent_point), snapshot_name)


def explain_slot_error(name: str, error: psycopg2.Error) -> str:
    message = (getattr(error, "diag", None) and error.diag.message_primary) or str(error).strip()
    lowered = message.lower()
    if "wal_level" in lowered:
        return (
            "Logical decoding needs wal_level = logical: run ALTER SYSTEM SET wal_level = logical "
            "(on RDS set rds.logical_replication = 1) and restart PostgreSQL."
        )
    if "max_replication_slots" in lowered or "all replication slots are in use" in lowered:
        return "No free replication slot: raise max_replication_slots and restart PostgreSQL, or drop an unused slot."
    if (
        "permission" in lowered
        or "must be superuser or replication role" in lowered
        or "replication" in lowered
        and "role" in lowered
    ):
        return (
            "The reader's role may not replicate: run ALTER ROLE <role> WITH REPLICATION "
            "(on RDS: GRANT rds_replication TO <role>)."
        )
    return f"Could not create replication slot {name!r}: {message}"
