"""lake: the Delta Lake tables (change logs and current state), time travel and maintenance.

    changes/<schema.table>   append-only log of every change event, typed (lake.changelog)
    tables/<schema.table>    current state merged by primary key, with tombstones (lake.state)
    _progress                watermark markers passed per shard (lake.progress)
    _dead_letters            records that could not be stored, re-drivable (lake.dead_letters)

A stream processor needs one call: `LakeWriter(root).write_batch(shard, events, markers)`
(lake.writer). Reading as of a version, a time or an LSN, the history of a table and DuckDB
access are in lake.timetravel; compaction, checkpoints and vacuum in lake.maintenance. A
reader downstream reads the change logs between two LSNs through lake.change_feed (`ChangeFeed`).
"""

from change_events.lazy import lazy_exports

# Imported on first use (PEP 562): the command line loads only what a command needs, and
# importing one lake module (or the package) does not load Delta, Arrow and polars.
_EXPORTS = {
    "IncompatibleSchemaError": "lake.errors",
    "LakeError": "lake.errors",
    "UnapplicableEventsError": "lake.errors",
    "ValueConversionError": "lake.errors",
    "ChangeFeed": "lake.change_feed",
    "ChangeLog": "lake.change_feed",
    "LakeLayout": "lake.layout",
    "storage_options_from_env": "lake.layout",
    "LakeWriter": "lake.writer",
    "Rejected": "lake.writer",
    "TableWrite": "lake.writer",
    "WriteResult": "lake.writer",
}

__all__ = [
    "ChangeFeed",
    "ChangeLog",
    "IncompatibleSchemaError",
    "LakeError",
    "LakeLayout",
    "LakeWriter",
    "Rejected",
    "TableWrite",
    "UnapplicableEventsError",
    "ValueConversionError",
    "WriteResult",
    "storage_options_from_env",
]


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
