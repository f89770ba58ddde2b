"""Invariants of a synced warehouse, as queries any engine runs.

- `dangling_references`: fact rows pointing at a dimension row that is not there (the
  declared foreign keys forbid it on both engines; this checks it without trusting them);
- `duplicate_current_rows`: business keys with more than one `is_current` row (PostgreSQL
  enforces it with a partial unique index; DuckDB has no partial indexes).
"""

from __future__ import annotations

from warehouse_sync.schema import BY_NAME, FACTS
from warehouse_sync.targets import Target


def dangling_references(target: Target) -> dict[str, int]:
    """`{"fact.column": rows}` for every foreign key that some fact row breaks."""
    found = {}
    for fact in FACTS:
        for column in fact.foreign_keys:
            dimension = BY_NAME[column.references]
            count = target.query(
                f"SELECT count(*) AS n FROM {fact.name} AS f WHERE NOT EXISTS "
                f"(SELECT 1 FROM {dimension.name} AS d WHERE d.{dimension.key} = f.{column.name})").item()
            if count:
                found[f"{fact.name}.{column.name}"] = int(count)
    return found


def duplicate_current_rows(target: Target) -> dict[str, int]:
    """`{fact: keys}` for every fact with business keys that have several current rows."""
    found = {}
    for fact in FACTS:
        count = target.query(
            f"SELECT count(*) AS n FROM (SELECT {fact.business_key} FROM {fact.name} WHERE is_current "
            f"GROUP BY {fact.business_key} HAVING count(*) > 1) AS d").item()
        if count:
            found[fact.name] = int(count)
    return found
