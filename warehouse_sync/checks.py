"""Invariants of a synced warehouse, as queries any engine runs.

- `dangling_references`: fact rows pointing at a dimension row that is not there (the
  declared foreign keys forbid it on both engines; this checks it without trusting them);
- `duplicate_current_rows`: business keys with more than one `is_current` row (PostgreSQL
  enforces it with a partial unique index; DuckDB has no partial indexes).
"""

from __future__ import annotations

from warehouse_sync.schema import BY_NAME, FACTS, quote_identifier as q
from warehouse_sync.targets import Target


def dangling_references(target: Target) -> dict[str, int]:
    """`{"fact.column": rows}` for every foreign key that some fact row breaks."""
    found = {}
    for fact in FACTS:
        for column in fact.foreign_keys:
            dimension = BY_NAME[column.references]
            count = target.query(
                f"SELECT count(*) AS n FROM {q(fact.name)} AS f WHERE NOT EXISTS "  # nosec B608 # names quoted by q()
                f"(SELECT 1 FROM {q(dimension.name)} AS d WHERE d.{q(dimension.key)} = f.{q(column.name)})"
            ).item()
            if count:
                found[f"{fact.name}.{column.name}"] = int(count)
    return found


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
