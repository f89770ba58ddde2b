"""Readiness checks a source PostgreSQL must pass before change-data capture can work.

Why one file (~530 lines): one check per readiness rule, each small and independent, over
one catalog connection; the list reads best in one place.

`run_checks(conn)` asks the catalog everything over one connection and returns one plain
`CheckResult` per finding: `ok`, `warning` (works, but worth a look) or `problem` (capture
cannot work until it is fixed). Every non-ok message is one sentence that names the fix.
Nothing here writes to the source: the checks only read settings and catalogs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

import psycopg2
from psycopg2 import sql

from cdc_reader.source import connect
from change_events.names import PUBLICATION, SCHEMA, SLOT_PREFIX
from totesys.schema import TABLES

MIN_SERVER_VERSION = 140000
"""pgoutput with logical decoding messages (`messages = true`) needs PostgreSQL 14."""
RETAINED_WAL_WARNING_BYTES = 1024**3
"""An inactive slot holding back more WAL than this is worth a warning: the disk fills up."""
STATEMENT_TIMEOUT = "30s"
# Checks whose failure to run is a warning; any other check that cannot run is a problem,
# since capture may then fail on what it would have found.
_OPTIONAL_CHECKS = frozenset({"publication", "slot"})


class Status(StrEnum):
    OK = "ok"
    """the rule is met"""
    WARNING = "warning"
    """capture works, but this is worth a look (a foreign publication, a slot filling the disk)"""
    PROBLEM = "problem"
    """capture cannot work until this is fixed"""


@dataclass(frozen=True)
class CheckResult:
    check: str
    """What was checked: server_version, wal_level, replication_slots, wal_senders,
    replication_privilege, publication, table, table_privilege, slot."""
    status: Status
    message: str
    subject: str | None = None
    """What the result is about when a check runs once per object (a table, a slot)."""

    def to_dict(self) -> dict[str, str | None]:
        data = asdict(self)
        data["status"] = str(self.status)
        return data


@dataclass(frozen=True)
class TableRef:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def is_ready(results: Iterable[CheckResult]) -> bool:
    """True when no result is a problem (warnings do not block capture)."""
    return all(result.status is not Status.PROBLEM for result in results)


def table_refs(tables: Sequence[str] | None = None, schema: str = SCHEMA) -> list[TableRef]:
    """The tables to check: names in `schema`, or `schema.table` to name another schema."""
    refs: list[TableRef] = []
    for entry in TABLES if tables is None else tables:
        entry = entry.strip()
        if not entry:
            continue
        if "." in entry:
            table_schema, _, name = entry.partition(".")
            ref = TableRef(table_schema.strip(), name.strip())
        else:
            ref = TableRef(schema, entry)
        if ref not in refs:
            refs.append(ref)
    return refs


def diagnose(
    dsn: str, *, tables: Sequence[str] | None = None, schema: str = SCHEMA, publication: str = PUBLICATION
) -> list[CheckResult]:
    """Connect to `dsn` and run every check.

    Raises cdc_reader.source.SourceConnectionError (one sentence) when it cannot connect.
    """
    conn = connect(dsn, application_name="totes doctor")
    try:
        return run_checks(conn, tables=tables, schema=schema, publication=publication)
    finally:
        conn.close()


def run_checks(
    conn, *, tables: Sequence[str] | None = None, schema: str = SCHEMA, publication: str = PUBLICATION
) -> list[CheckResult]:
    """Every readiness check over one open connection (which is left in autocommit mode)."""
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('statement_timeout', %s, false)", (STATEMENT_TIMEOUT,))
    refs = table_refs(tables, schema)
    results: list[CheckResult] = []
    checks = (
        ("server_version", _check_server_version),
        ("wal_level", _check_wal_level),
        ("replication_slots", _check_replication_slots),
        ("wal_senders", _check_wal_senders),
        ("replication_privilege", _check_replication_privilege),
        ("publication", lambda cur: _check_publication(cur, publication, refs)),
        ("table", lambda cur: _check_tables(cur, refs)),
        ("slot", _check_slots),
    )
    for name, check in checks:
        try:
            with conn.cursor() as cur:
                results.extend(check(cur))
        except psycopg2.Error as error:
            # A catalog the role may not read, a server that went away: report it and go on.
            detail = (error.pgerror or str(error) or type(error).__name__).strip().splitlines()[0]
            detail = detail.removeprefix("ERROR:").strip()
            results.append(
                CheckResult(
                    name,
                    Status.WARNING if name in _OPTIONAL_CHECKS else Status.PROBLEM,
                    f"Could not check {name.replace('_', ' ')} ({detail}): "
                    "run totes doctor as a role that can read the server's settings and catalogs.",
                )
            )
            if conn.closed:
                break
    return results


# -- the checks ------------------------------------------------------------------------------


def _check_server_version(cur) -> list[CheckResult]:
    cur.execute("SELECT current_setting('server_version_num')::int, current_setting('server_version')")
    number, text = cur.fetchone()
    version = text.split()[0]
    if number < MIN_SERVER_VERSION:
        return [
            CheckResult(
                "server_version",
                Status.PROBLEM,
                f"PostgreSQL {version} is too old: upgrade to PostgreSQL 14 or newer "
                "(pgoutput with logical decoding messages needs 14+).",
            )
        ]
    return [CheckResult("server_version", Status.OK, f"PostgreSQL {version}.")]


def _is_rds(cur) -> bool:
    cur.execute(
        "SELECT current_setting('rds.logical_replication', true) IS NOT NULL "
        "OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_superuser')"
    )
    return bool(cur.fetchone()[0])


def _check_wal_level(cur) -> list[CheckResult]:
    cur.execute("SELECT current_setting('wal_level')")
    level = cur.fetchone()[0]
    if level == "logical":
        return [CheckResult("wal_level", Status.OK, "wal_level is logical.")]
    if _is_rds(cur):
        fix = "set rds.logical_replication = 1 in the instance's DB parameter group and reboot the instance."
    else:
        fix = (
            "run ALTER SYSTEM SET wal_level = logical (on RDS set rds.logical_replication = 1) and restart PostgreSQL."
        )
    return [CheckResult("wal_level", Status.PROBLEM, f"wal_level is {level!r}: {fix}")]


def _check_replication_slots(cur) -> list[CheckResult]:
    return _check_capacity(
        cur,
        "replication_slots",
        "SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)::int",
        "replication slots",
        "are in use: drop an unused one (SELECT pg_drop_replication_slot('NAME')) or raise max_replication_slots "
        "and restart PostgreSQL.",
    )


def _check_wal_senders(cur) -> list[CheckResult]:
    return _check_capacity(
        cur,
        "wal_senders",
        "SELECT current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)::int",
        "WAL senders",
        "are busy: stop an unused replication client or raise max_wal_senders and restart PostgreSQL.",
    )


def _check_capacity(cur, check: str, query: str, what: str, when_all_taken: str) -> list[CheckResult]:
    """A server limit capture takes one of (`query`: the limit, then how many are taken): it
    must be above 0 and not all taken. `check` is also the setting's name, after `max_`."""
    cur.execute(query)
    limit, used = cur.fetchone()
    if limit == 0:
        setting = f"max_{check}"
        return [
            CheckResult(
                check, Status.PROBLEM, f"{setting} is 0: run ALTER SYSTEM SET {setting} = 10 and restart PostgreSQL."
            )
        ]
    if used >= limit:
        return [CheckResult(check, Status.PROBLEM, f"All {limit} {what} {when_all_taken}")]
    return [CheckResult(check, Status.OK, f"{limit - used} of {limit} {what} free.")]


def _role(cur) -> str:
    cur.execute("SELECT current_user")
    return cur.fetchone()[0]


def _ident(cur, *names: str) -> str:
    return sql.Identifier(*names).as_string(cur.connection)


def _literal(cur, value: str) -> str:
    return sql.Literal(value).as_string(cur.connection)


def _check_replication_privilege(cur) -> list[CheckResult]:
    cur.execute(
        """
        SELECT r.rolname, r.rolsuper, r.rolreplication,
               COALESCE((SELECT pg_has_role(r.oid, rds.oid, 'MEMBER')
                         FROM pg_roles rds WHERE rds.rolname = 'rds_replication'), false),
               EXISTS (SELECT 1 FROM pg_roles rds WHERE rds.rolname = 'rds_replication')
        FROM pg_roles r WHERE r.rolname = current_user
        """
    )
    role, superuser, replication, rds_member, on_rds = cur.fetchone()
    if superuser:
        return [CheckResult("replication_privilege", Status.OK, f"Role {role!r} is a superuser.")]
    if replication:
        return [CheckResult("replication_privilege", Status.OK, f"Role {role!r} has the REPLICATION attribute.")]
    if rds_member:
        return [CheckResult("replication_privilege", Status.OK, f"Role {role!r} is a member of rds_replication.")]
    quoted = _ident(cur, role)
    fix = (
        f"GRANT rds_replication TO {quoted}"
        if on_rds
        else f"ALTER ROLE {quoted} WITH REPLICATION (on RDS: GRANT rds_replication TO {quoted})"
    )
    return [
        CheckResult(
            "replication_privilege",
            Status.PROBLEM,
            f"Role {role!r} may not open a replication connection: as a superuser run {fix}.",
        )
    ]


def _publication_table_list(cur, refs: Sequence[TableRef]) -> str:
    return ", ".join(_ident(cur, ref.schema, ref.name) for ref in refs)


def _check_publication(cur, publication: str, refs: Sequence[TableRef]) -> list[CheckResult]:
    cur.execute(
        """
        SELECT p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
               pg_has_role(current_user, p.pubowner, 'USAGE'),
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
        FROM pg_publication p WHERE p.pubname = %s
        """,
        (publication,),
    )
    row = cur.fetchone()
    if row is None:
        return _check_can_create_publication(cur, publication, refs)
    all_tables, ins, upd, dele, trunc, owner, superuser = row
    quoted = _ident(cur, publication)
    results: list[CheckResult] = []
    missing_actions = [
        name for name, on in (("insert", ins), ("update", upd), ("delete", dele), ("truncate", trunc)) if not on
    ]
    if missing_actions:
        results.append(
            CheckResult(
                "publication",
                Status.WARNING,
                f"Publication {publication!r} does not publish {', '.join(missing_actions)}: "
                f"run ALTER PUBLICATION {quoted} SET (publish = 'insert, update, delete, truncate').",
            )
        )
    missing: list[TableRef] = []
    if not all_tables:
        cur.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))
        published = {TableRef(schema, name) for schema, name in cur.fetchall()}
        missing = [ref for ref in refs if ref not in published]
    if missing and not (owner or superuser):
        results.append(
            CheckResult(
                "publication",
                Status.WARNING,
                f"Publication {publication!r} does not publish {', '.join(map(str, missing))} and this "
                f"role cannot change it: as its owner run ALTER PUBLICATION {quoted} ADD TABLE "
                f"{_publication_table_list(cur, missing)}.",
            )
        )
    if not results:
        if all_tables:
            scope = "it publishes every table"
        elif missing:
            scope = f"this role can add the {len(missing)} checked tables it lacks"
        else:
            scope = "it publishes every checked table"
        results.append(CheckResult("publication", Status.OK, f"Publication {publication!r} exists; {scope}."))
    return results


def _check_can_create_publication(cur, publication: str, refs: Sequence[TableRef]) -> list[CheckResult]:
    cur.execute(
        """
        SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
               has_database_privilege(current_database(), 'CREATE'),
               current_database()
        """
    )
    superuser, can_create, database = cur.fetchone()
    if superuser:
        return [
            CheckResult(
                "publication", Status.OK, f"Publication {publication!r} does not exist yet; this role can create it."
            )
        ]
    cur.execute(
        """
        SELECT t.schema_name, t.table_name
        FROM unnest(%s::text[], %s::text[]) AS t(schema_name, table_name)
        JOIN pg_namespace n ON n.nspname = t.schema_name
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
        WHERE NOT pg_has_role(current_user, c.relowner, 'USAGE')
        """,
        ([ref.schema for ref in refs], [ref.name for ref in refs]),
    )
    not_owned = [TableRef(schema, name) for schema, name in cur.fetchall()]
    if can_create and not not_owned:
        return [
            CheckResult(
                "publication", Status.OK, f"Publication {publication!r} does not exist yet; this role can create it."
            )
        ]
    reasons = []
    if not can_create:
        reasons.append(f"CREATE on database {database!r}")
    if not_owned:
        reasons.append(f"ownership of {', '.join(map(str, not_owned))}")
    return [
        CheckResult(
            "publication",
            Status.WARNING,
            f"This role cannot create publication {publication!r} (it lacks {' and '.join(reasons)}): "
            f"have a table owner run CREATE PUBLICATION {_ident(cur, publication)} FOR TABLE "
            f"{_publication_table_list(cur, refs)}.",
        )
    ]


_TABLE_QUERY = """
SELECT t.schema_name, t.table_name, c.oid IS NOT NULL, c.relkind, c.relreplident,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident
                                         AND i.indisvalid AND i.indisready),
       CASE WHEN c.oid IS NULL THEN NULL ELSE has_table_privilege(c.oid, 'SELECT') END
FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(schema_name, table_name, ord)
LEFT JOIN pg_namespace n ON n.nspname = t.schema_name
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
ORDER BY t.ord
"""

_KIND_NAMES = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "an index",
    "c": "a composite type",
    "t": "a TOAST table",
}


def _check_tables(cur, refs: Sequence[TableRef]) -> list[CheckResult]:
    if not refs:
        return [CheckResult("table", Status.PROBLEM, "No tables to check: name at least one table with --tables.")]
    cur.execute(_TABLE_QUERY, ([ref.schema for ref in refs], [ref.name for ref in refs]))
    results: list[CheckResult] = []
    unreadable: list[TableRef] = []
    for schema, name, exists, kind, identity, has_pk, has_identity_index, can_read in cur.fetchall():
        ref = TableRef(schema, name)
        table = _ident(cur, schema, name)

        def problem(message: str) -> None:
            results.append(CheckResult("table", Status.PROBLEM, message, str(ref)))

        if not exists:
            problem(
                f"Table {ref} does not exist: create it (for totesys: `totes source start` "
                "or totesys/schema.sql) or fix --schema/--tables."
            )
            continue
        if kind not in ("r", "p"):
            problem(
                f"{ref} is {_KIND_NAMES.get(kind, 'not a table')}, which logical replication "
                "cannot publish: name its underlying table instead."
            )
            continue
        if identity == "n":
            problem(
                f"Table {ref} has REPLICA IDENTITY NOTHING, so updates and deletes cannot be "
                f"captured: run ALTER TABLE {table} REPLICA IDENTITY DEFAULT (with a primary key) "
                "or REPLICA IDENTITY FULL."
            )
        elif identity == "d" and not has_pk:
            problem(
                f"Table {ref} has no primary key: add one (ALTER TABLE {table} ADD PRIMARY KEY "
                f"(...)) or set REPLICA IDENTITY FULL (ALTER TABLE {table} REPLICA IDENTITY FULL)."
            )
        elif identity == "i" and not has_identity_index:
            problem(
                f"Table {ref} uses REPLICA IDENTITY USING INDEX but that index is missing or "
                f"invalid: run ALTER TABLE {table} REPLICA IDENTITY DEFAULT (with a primary key) "
                "or REPLICA IDENTITY FULL."
            )
        if can_read is False:
            unreadable.append(ref)
        if not any(result.subject == str(ref) for result in results):
            key = {
                "d": "its primary key",
                "f": "the whole row (REPLICA IDENTITY FULL)",
                "i": "a replica identity index",
            }[identity]
            results.append(
                CheckResult("table", Status.OK, f"Table {ref} is ready; changes are keyed by {key}.", str(ref))
            )
    if unreadable:
        role = _role(cur)
        names = ", ".join(map(str, unreadable))
        what = f"table {names}" if len(unreadable) == 1 else f"{len(unreadable)} tables ({names})"
        results.append(
            CheckResult(
                "table_privilege",
                Status.PROBLEM,
                f"Role {role!r} cannot read {what}, so the initial snapshot would fail: run GRANT SELECT "
                f"ON {_publication_table_list(cur, unreadable)} TO {_ident(cur, role)}.",
            )
        )
    return results


def _check_slots(cur) -> list[CheckResult]:
    cur.execute(
        """
        SELECT slot_name, slot_type, database, active, wal_status,
               pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                    ELSE pg_current_wal_lsn() END, restart_lsn)::bigint
        FROM pg_replication_slots
        WHERE starts_with(slot_name, %s) OR (NOT active AND restart_lsn IS NOT NULL)
        ORDER BY slot_name
        """,
        (SLOT_PREFIX,),
    )
    results: list[CheckResult] = []
    for name, slot_type, database, active, wal_status, retained in cur.fetchall():
        ours = name.startswith(SLOT_PREFIX)
        retained = max(retained or 0, 0)
        where = f" on database {database!r}" if database else ""
        if wal_status == "lost":
            results.append(
                CheckResult(
                    "slot",
                    Status.WARNING,
                    f"Slot {name!r}{where} has lost WAL it needed and cannot stream again: drop it "
                    f"(SELECT pg_drop_replication_slot({_literal(cur, name)})) and let the reader start afresh.",
                    name,
                )
            )
        elif not active and retained > RETAINED_WAL_WARNING_BYTES:
            results.append(
                CheckResult(
                    "slot",
                    Status.WARNING,
                    f"Inactive {slot_type} slot {name!r}{where} retains {_size(retained)} of WAL: start "
                    f"the consumer that owns it, or drop it (SELECT pg_drop_replication_slot({_literal(cur, name)})) "
                    "if nothing uses it any more.",
                    name,
                )
            )
        elif ours:
            state = "active" if active else "inactive"
            results.append(
                CheckResult(
                    "slot", Status.OK, f"Slot {name!r}{where} is {state} and retains {_size(retained)} of WAL.", name
                )
            )
    return results


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            break
    return f"{value:.1f} {unit}"
