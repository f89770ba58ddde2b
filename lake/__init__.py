"""lake: the Delta Lake tables (change logs and current state), time travel and maintenance.

    changes/<schema.table>   append-only log of every change event, typed (lake.changelog)
    tables/<schema.table>    current state merged by primary key, with tombstones (lake.state)
    _progress                watermark markers passed per shard (lake.progress)
    _dead_letters            records that could not be stored, re-drivable (lake.dead_letters)

A stream processor needs one call: `LakeWriter(root).write_batch(shard, events, markers)`
(lake.writer). Reading as of a version, a time or an LSN, the history of a table and DuckDB
access are in lake.timetravel; compaction, checkpoints and vacuum in lake.maintenance.
"""

from lake.errors import IncompatibleSchemaError, LakeError, UnapplicableEventsError, ValueConversionError
from lake.layout import LakeLayout, storage_options_from_env
from lake.writer import LakeWriter, Rejected, TableWrite, WriteResult

__all__ = [
    "IncompatibleSchemaError", "LakeError", "LakeLayout", "LakeWriter", "Rejected", "TableWrite",
    "UnapplicableEventsError", "ValueConversionError", "WriteResult", "storage_options_from_env",
]
