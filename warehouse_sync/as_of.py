"""A fact table as of a source LSN, from its lineage columns (one SQL text, both dialects).

Per business key, the newest version at or before the LSN, unless that version is the row's
deletion: the rows the source held then (`totes query --as-of`, `totes verify`)."""

from __future__ import annotations

from warehouse_sync.schema import Table, quote_identifier as q


def fact_rows_as_of(fact: Table, lsn: int, relation: str | None = None, where: str = "true") -> str:
    """SELECT of every column of `fact` (read from `relation`, default its own name) live at
    source LSN `lsn`, among the rows `where` selects (a predicate the calling code writes)."""
    relation = relation or q(fact.name)
    columns = ", ".join(q(name) for name in fact.names)
    return (
        f"SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY {q(fact.business_key or '')} "  # nosec B608 # names quoted by q(), the LSN is int(), `where` is code
        f"ORDER BY source_lsn DESC, source_seq DESC) AS _version FROM {relation} "
        f"WHERE source_lsn <= {int(lsn)} AND ({where})) AS versions WHERE _version = 1 AND NOT is_deleted"
    )
