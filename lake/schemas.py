"""The columns of the lake's tables, and which source schema changes they accept.

A change log row (`changes/<table>`) is the source row's typed columns followed by:

| column         | type                | meaning                                                  |
|----------------|---------------------|----------------------------------------------------------|
| `_op`          | string              | r snapshot, c insert, u update, d delete, t truncate     |
| `_lsn`, `_seq` | int64               | the event's position: commit LSN, ordinal in its transaction |
| `_xid`         | int64               | source transaction id (null for snapshot rows)           |
| `_commit_ts`   | timestamp(us, UTC)  | source commit time (null for snapshot rows)              |
| `_unchanged`   | list<string>        | columns the WAL did not carry (unchanged TOAST); their  |
|                |                     | cells in this row are empty and mean "unchanged", not NULL |
| `_before`      | string (JSON)       | the old key or old row the WAL carried, or null          |
| `_shard`       | string              | the stream shard the event came from                     |
| `_batch`       | int64               | per-shard append number (lets the state table catch up)  |
| `_commit_date` | date (partition)    | UTC date of `_commit_ts`; for snapshot rows, the day written |

Delete rows carry only the key columns; truncate rows no source column at all.

A state row (`tables/<table>`) is the source row's typed columns followed by `_op`, `_lsn`,
`_seq`, `_commit_ts` (of the event that made the row what it is) and `_deleted` (a tombstone:
the row's last event deleted it; readers of current state filter `NOT _deleted`).

Names: a source column keeps its name in the lake, whatever it holds (quotes, spaces,
backticks, unicode, SQL); every predicate and merge expression quotes it
(`lake.delta_io.quote_identifier`). The tables do not use Delta column mapping
(`delta.columnMapping.mode = name`): deltalake 1.6.6 creates and appends to such tables, but
refuses schema evolution on them ("Schema evolution on column-mapped tables is not yet
supported") and compaction ("Column mapping is not supported for write operation
'OPTIMIZE'"), its `to_pyarrow_dataset()` reads every column of them as null (it looks the
logical names up in Parquet files that hold the physical ones), and polars 2.1 refuses
reader version 2 altogether. Without it the names are stored as they are, in the Delta
schema and in the Parquet files, and deltalake, polars, pyarrow and DuckDB all read them
(`tests/test_identifiers.py`). Delta on Spark refuses names holding one of ` ,;{}()\n\t=`
in tables without column mapping (not tried here: no Spark on this machine); a Spark job
that needs such a table can copy it into a column-mapped one.

Schema evolution: columns added at the source are added to both tables (older rows read
null); a column whose lake type differs from what its new source type maps to raises
IncompatibleSchemaError, as does a source column named like one of the columns above.
"""

from __future__ import annotations

import pyarrow as pa
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema

from change_events import TableSchema
from lake.arrow_types import arrow_type
from lake.errors import IncompatibleSchemaError

UTC_MICROS = pa.timestamp("us", "UTC")

CHANGELOG_META = pa.schema([
    ("_op", pa.string()),
    ("_lsn", pa.int64()),
    ("_seq", pa.int64()),
    ("_xid", pa.int64()),
    ("_commit_ts", UTC_MICROS),
    ("_unchanged", pa.list_(pa.string())),
    ("_before", pa.string()),
    ("_shard", pa.string()),
    ("_batch", pa.int64()),
    ("_commit_date", pa.date32()),
])
PARTITION_COLUMN = "_commit_date"

STATE_META = pa.schema([
    ("_op", pa.string()),
    ("_lsn", pa.int64()),
    ("_seq", pa.int64()),
    ("_commit_ts", UTC_MICROS),
    ("_deleted", pa.bool_()),
])

RESERVED = frozenset(CHANGELOG_META.names) | frozenset(STATE_META.names)


def source_fields(schema: TableSchema) -> list[pa.Field]:
    """The lake fields of a source table's columns, in source order."""
    return [pa.field(column.name, arrow_type(column.type_name)) for column in schema.columns]


def data_columns(arrow_schema: pa.Schema) -> list[str]:
    """The source columns of a lake table's schema (everything but the `_` columns above)."""
    return [name for name in arrow_schema.names if name not in RESERVED]


def lake_schema(table: DeltaTable | None) -> pa.Schema | None:
    """The Arrow schema of a Delta table, or None when there is no table."""
    if table is None:
        return None
    return pa.schema(table.schema())


def _delta_type(field: pa.Field):
    return DeltaSchema.from_arrow(pa.schema([field])).fields[0].type


def check_compatible(table: str, existing: pa.Schema | None, fields: list[pa.Field]) -> None:
    """Raise IncompatibleSchemaError when `fields` (a source schema's lake fields) cannot be
    written into a table of schema `existing`: a column's type differs, or a name is reserved.
    New columns are fine; so are columns the source no longer has."""
    changes: dict[str, tuple[str, str]] = {}
    for field in fields:
        if field.name in RESERVED:
            changes[field.name] = ("reserved lake column", str(field.type))
    if existing is not None:
        for field in fields:
            if field.name in RESERVED or field.name not in existing.names:
                continue
            old = existing.field(field.name)
            if _delta_type(old) != _delta_type(field):
                changes[field.name] = (str(old.type), str(field.type))
    if changes:
        raise IncompatibleSchemaError(table, changes)
