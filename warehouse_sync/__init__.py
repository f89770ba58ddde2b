"""warehouse_sync: projects the lake's change logs into the star-schema warehouse.

    target = open_target("warehouse.duckdb")        # or a PostgreSQL DSN
    sync_once(lake_root, target, upto_lsn=lake_watermark)

- `schema`: the 11 tables of the spec (plus lineage columns on facts, source mirrors and the
  checkpoint), defined once and rendered as DuckDB or PostgreSQL DDL;
- `lake_source`: the change-log events between two LSNs;
- `replay`: events → complete row versions (unchanged-TOAST columns filled, deletes with their
  last values, truncates expanded);
- `transforms`: the spec's rules, rows in → dimension and fact rows out;
- `apply`: one sync = one warehouse transaction that also moves the checkpoint;
- `targets`: the thin DuckDB and PostgreSQL adapters; `checks`: invariants to verify.
"""

from warehouse_sync.apply import SyncResult, checkpoint_lsn, ensure_schema, sync_once
from warehouse_sync.checks import dangling_references, duplicate_current_rows
from warehouse_sync.targets import DuckDBTarget, PostgresTarget, Target, open_target

__all__ = [
    "DuckDBTarget", "PostgresTarget", "SyncResult", "Target", "checkpoint_lsn", "dangling_references",
    "duplicate_current_rows", "ensure_schema", "open_target", "sync_once",
]
