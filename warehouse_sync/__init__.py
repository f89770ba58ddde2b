"""warehouse_sync: projects the lake's change logs into the star-schema warehouse.

    target = open_target("warehouse.duckdb")        # or a PostgreSQL DSN
    sync_once(lake_root, target, upto_lsn=lake_watermark)

- `schema`: the 11 tables of the spec (plus lineage columns on facts, source mirrors and the
  checkpoint), defined once and rendered as DuckDB or PostgreSQL DDL; one import for its parts:
  `star_schema` (§3), `sync_tables` (mirrors, checkpoint, rejects), `table_model` (types,
  quoting) and `ddl`;
- `lake_source`: the change-log events between two LSNs, as polars frames of the mirrors'
  types (read through the lake's port, `lake.change_feed`: this package drives no Delta);
- `replay`: events → complete row versions (unchanged-TOAST columns filled, deletes with their
  last values, truncates expanded);
- `transforms`: the spec's rules, rows in → dimension and fact rows out;
- `apply`: one sync = one warehouse transaction per slice, each moving the checkpoint
  (`position`); a slice's `steps` (their SQL in `sql`), after `lake_types` widened the mirrors;
- `slices`: where a large backlog is cut (whole transactions; snapshot reads also by key);
- `bulk` (and `bulk_source`): a fresh fact source's snapshot reads loaded in one statement per
  table, straight from the lake's files (the initial load);
- `targets`: the thin DuckDB and PostgreSQL adapters; `checks`: invariants to verify.
"""

from change_events.lazy import lazy_exports

# Imported on first use (PEP 562): the command line loads only what a command needs; the
# targets need DuckDB and polars, a DSN check does not.
_EXPORTS = {
    "SyncResult": "warehouse_sync.apply",
    "checkpoint_lsn": "warehouse_sync.position",
    "ensure_schema": "warehouse_sync.apply",
    "sync_once": "warehouse_sync.apply",
    "dangling_references": "warehouse_sync.checks",
    "duplicate_current_rows": "warehouse_sync.checks",
    "DuckDBTarget": "warehouse_sync.targets",
    "PostgresTarget": "warehouse_sync.targets",
    "Target": "warehouse_sync.targets",
    "open_target": "warehouse_sync.targets",
}

__all__ = [
    "DuckDBTarget",
    "PostgresTarget",
    "SyncResult",
    "Target",
    "checkpoint_lsn",
    "dangling_references",
    "duplicate_current_rows",
    "ensure_schema",
    "open_target",
    "sync_once",
]


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
