"""Readiness checks a source PostgreSQL must pass before change-data capture can work.

`run_checks(conn)` asks the catalog everything over one connection and returns one plain
`CheckResult` per finding: `ok`, `warning` (works, but worth a look) or `problem` (capture
cannot work until it is fixed). Every non-ok message is one sentence that names the fix.
Nothing here writes to the source: the checks only read settings and catalogs.

Here are the running of the checks and those of the server (version, WAL level, slots and
WAL senders free, the replication privilege) and of the slots already there; the publication's
and the tables' are in doctor_tables.py, the results and the helpers they share in
readiness.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg2

from cdc_reader.doctor_tables import check_publication, check_tables
from cdc_reader.readiness import CheckResult, Status, TableRef, is_ready, ident, literal
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

__all__ = ["CheckResult", "Status", "TableRef", "diagnose", "is_ready", "run_checks", "table_refs"]


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
        ("publication", lambda cur: check_publication(cur, publication, refs)),
        ("table", lambda cur: check_tables(cur, refs)),
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
    quoted = ident(cur, role)
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
                    f"(SELECT pg_drop_replication_slot({literal(cur, name)})) and let the reader start afresh.",
                    name,
                )
            )
        elif not active and retained > RETAINED_WAL_WARNING_BYTES:
            results.append(
                CheckResult(
                    "slot",
                    Status.WARNING,
                    f"Inactive {slot_type} slot {name!r}{where} retains {_size(retained)} of WAL: start "
                    f"the consumer that owns it, or drop it (SELECT pg_drop_replication_slot({literal(cur, name)})) "
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
