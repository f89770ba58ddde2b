"""`totes doctor`'s checks of what capture reads: the publication (does it exist and publish
the tables, or may this role create it) and every table (does it exist, is it a table, can
its updates and deletes be keyed, may this role read it). The server's and the slots' checks,
and the running of them all, are in doctor.py."""

from __future__ import annotations

from collections.abc import Sequence

from cdc_reader.readiness import CheckResult, Status, TableRef, current_role, ident, table_list


def check_publication(cur, publication: str, refs: Sequence[TableRef]) -> list[CheckResult]:
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
    quoted = ident(cur, publication)
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
                f"{table_list(cur, missing)}.",
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
            f"have a table owner run CREATE PUBLICATION {ident(cur, publication)} FOR TABLE "
            f"{table_list(cur, refs)}.",
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


def check_tables(cur, refs: Sequence[TableRef]) -> list[CheckResult]:
    if not refs:
        return [CheckResult("table", Status.PROBLEM, "No tables to check: name at least one table with --tables.")]
    cur.execute(_TABLE_QUERY, ([ref.schema for ref in refs], [ref.name for ref in refs]))
    results: list[CheckResult] = []
    unreadable: list[TableRef] = []
    for schema, name, exists, kind, identity, has_pk, has_identity_index, can_read in cur.fetchall():
        ref = TableRef(schema, name)
        table = ident(cur, schema, name)

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
        role = current_role(cur)
        names = ", ".join(map(str, unreadable))
        what = f"table {names}" if len(unreadable) == 1 else f"{len(unreadable)} tables ({names})"
        results.append(
            CheckResult(
                "table_privilege",
                Status.PROBLEM,
                f"Role {role!r} cannot read {what}, so the initial snapshot would fail: run GRANT SELECT "
                f"ON {table_list(cur, unreadable)} TO {ident(cur, role)}.",
            )
        )
    return results
