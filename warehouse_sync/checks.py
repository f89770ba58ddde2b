"""Invariants of a synced warehouse, as queries any engine runs.

- `dangling_references`: fact rows pointing at a dimension row that is not there (PostgreSQL's
  declared foreign keys forbid it, `require_references` does in DuckDB; this checks it
  without trusting either);
- `require_references`: the same check over a transaction's new fact rows, raising
  `MissingReference` (DuckDB declares no foreign keys: see `ddl`);
- `duplicate_current_rows`: business keys with more than one `is_current` row (PostgreSQL
  enforces it with a partial unique index; DuckDB has no partial indexes).
"""

from __future__ import annotations

import duckdb

from warehouse_sync.ddl import declared_foreign_keys
from warehouse_sync.schema import BY_NAME, FACTS, Column, Table, quote_identifier as q, quote_literal
from warehouse_sync.targets import Target


class MissingReference(duckdb.ConstraintException):
    """New fact rows point at a dimension row that is not there: the slice is not committed
    (what a declared foreign key would refuse, in DuckDB's words)."""


def _missing_sql(fact: Table, columns: list[Column], after: int | None = None) -> str:
    """One query: per foreign key in `columns`, the rows of `fact` (of record id > `after`)
    whose value no dimension row has (`n`) and the smallest such value as text (`example`). An
    anti-join per key over the rows asked about: the dimensions are small, built into hash
    tables once."""
    newer = "" if after is None else f" AND f.{q(fact.key)} > {int(after)}"
    return " UNION ALL ".join(
        f"SELECT {quote_literal(column.name)} AS c, count(*) AS n, CAST(min(f.{q(column.name)}) AS VARCHAR) AS example "  # nosec B608 # names quoted by q(), literals by quote_literal
        f"FROM {q(fact.name)} AS f WHERE NOT EXISTS (SELECT 1 FROM {q(BY_NAME[column.references].name)} AS d "
        f"WHERE d.{q(BY_NAME[column.references].key)} = f.{q(column.name)}){newer}"
        for column in columns
    )


def _missing(
    target: Target, fact: Table, columns: list[Column], after: int | None = None
) -> list[tuple[str, int, str]]:
    if not columns:
        return []
    found = target.query(_missing_sql(fact, columns, after))
    return [(c, int(n), example) for c, n, example in found.iter_rows() if n]


def dangling_references(target: Target) -> dict[str, int]:
    """`{"fact.column": rows}` for every foreign key that some fact row breaks."""
    return {f"{fact.name}.{column}": n for fact in FACTS for column, n, _ in _missing(target, fact, fact.foreign_keys)}


def require_references(target: Target, fact: Table, after: int) -> None:
    """Raise MissingReference when a row of `fact` with record id > `after` (those this
    transaction added) points at a dimension row that is not there, by a key the engine does
    not declare (and so does not check itself: DuckDB's, see `ddl`)."""
    declared = declared_foreign_keys(fact, target.dialect)
    missing = _missing(target, fact, [c for c in fact.foreign_keys if c not in declared], after)
    if missing:
        column, n, example = missing[0]
        dimension = BY_NAME[fact.column(column).references]
        raise MissingReference(
            f'Violates foreign key constraint because key "{column}: {example}" does not exist in the '
            f"referenced table {dimension.name} ({n} new {fact.name} row(s) with such a {column})"
        )


def duplicate_current_rows(target: Target) -> dict[str, int]:
    """`{fact: keys}` for every fact with business keys that have several current rows."""
    found = {}
    for fact in FACTS:
        count = target.query(
            f"SELECT count(*) AS n FROM (SELECT {q(fact.business_key)} FROM {q(fact.name)} WHERE is_current "  # nosec B608 # names quoted by q()
            f"GROUP BY {q(fact.business_key)} HAVING count(*) > 1) AS d"
        ).item()
        if count:
            found[fact.name] = int(count)
    return found
