"""Table schemas as the change events carry them, read from the source's catalog.

The snapshot (COPY) and the stream (pgoutput Relation messages) must describe a table the
same way, so both build `TableSchema` here: columns in attribute order, without dropped or
generated columns. The key is the row's identity downstream: the replica-identity index when
one is set, else the primary key (also under REPLICA IDENTITY FULL, where pgoutput flags
every column as part of the identity).
"""

from __future__ import annotations

from change_events import Column, TableSchema


class TableNotFound(LookupError):
    pass


def qualified(schema: str, table: str) -> str:
    return f"{schema}.{table}"


def read_table_schema(conn, schema: str, table: str) -> TableSchema:
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid::int, a.atttypmod,
                   COALESCE(a.attnum = ANY(ri.indkey), false)
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                               AND a.attgenerated = ''
            LEFT JOIN LATERAL (
                SELECT i.indkey FROM pg_index i
                WHERE i.indrelid = c.oid
                  AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END
            ) ri ON true
            WHERE n.nspname = %s AND c.relname = %s
            ORDER BY a.attnum
            """,
            (schema, table),
        )
        rows = cur.fetchall()
    if not rows:
        raise TableNotFound(f"table {schema}.{table} does not exist")
    return TableSchema(qualified(schema, table), tuple(Column(*row) for row in rows))


class TypeNames:
    """format_type() of (type oid, typmod) pairs, cached: Relation messages carry only oids."""

    def __init__(self, conn):
        self._conn = conn
        self._cache: dict[tuple[int, int], str] = {}

    def __call__(self, type_oid: int, type_modifier: int) -> str:
        key = (type_oid, type_modifier)
        name = self._cache.get(key)
        if name is None:
            with self._conn.cursor() as cur:
                cur.execute("SELECT format_type(%s, %s)", (type_oid, type_modifier))
                name = self._cache[key] = cur.fetchone()[0]
            self._conn.rollback()
        return name
