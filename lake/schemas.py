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
(`tests/{unit,integration,e2e}/test_identifiers.py`). Delta on Spark refuses names holding one of ` ,;{}()\n\t=`
in tables without column mapping (not tried here: no Spark on this machine); a Spark job
that needs such a table can copy it into a column-mapped one.

Schema evolution: columns added at the source are added to both tables (older rows read
null). A column whose source type changed takes `common_type(lake type, new type)`
(`lake.arrow_types`): a type that holds both the old values and the new ones, so a widened
source column (integer → bigint, numeric(10,2) → numeric(14,4), integer → numeric) widens
the lake column, a narrowed one (bigint → integer) keeps the wider lake column, and an
unrelated one (text → integer) falls back to text. Only a source column named like one of
the columns above raises IncompatibleSchemaError.

How a lake column widens (`rewrite_with_types`): deltalake 1.6.6 does not support Delta's
type widening (`delta.enableTypeWidening` is refused as an unknown property, and an append
of wider values fails to cast them down), so the table is rewritten: one overwrite commit
holding every row of the current version with the column cast to the wider type, with the
same partitioning, properties and app transactions (positions stay where they were). Every
earlier version stays readable as it was (time travel, `totes lake history`) until vacuum,
and every event stays in the current version too. A rewrite reads and writes the whole
table, which is fine for a change made once in a table's life. An append another shard
commits while the rewrite runs is kept (the overwrite removes only the files it read), its
narrower Parquet values read as the wider type.
"""

from __future__ import annotations

import logging

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake import Schema as DeltaSchema

from change_events import TableSchema
from lake.arrow_types import arrow_type, cast_column, common_type
from lake.delta_io import read_sql
from lake.errors import IncompatibleSchemaError

log = logging.getLogger("totes.lake")

UTC_MICROS = pa.timestamp("us", "UTC")

CHANGELOG_META = pa.schema(
    [
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
    ]
)
PARTITION_COLUMN = "_commit_date"

STATE_META = pa.schema(
    [
        ("_op", pa.string()),
        ("_lsn", pa.int64()),
        ("_seq", pa.int64()),
        ("_commit_ts", UTC_MICROS),
        ("_deleted", pa.bool_()),
    ]
)

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


def columns_to_widen(table: str, existing: pa.Schema | None, fields: list[pa.Field]) -> dict[str, pa.DataType]:
    """The lake columns of `existing` that must widen before rows of `fields` (a source
    schema's lake fields) can be written: name → the new type (`common_type`); {} when none.
    Raises IncompatibleSchemaError when a source column is named like a reserved column.
    New columns are fine; so are columns the source no longer has."""
    reserved = {f.name: ("reserved lake column", str(f.type)) for f in fields if f.name in RESERVED}
    if reserved:
        raise IncompatibleSchemaError(table, reserved)
    widened: dict[str, pa.DataType] = {}
    if existing is not None:
        for field in fields:
            if field.name not in existing.names:
                continue
            old = existing.field(field.name).type
            if old == field.type:
                continue
            wider = common_type(old, field.type)
            if _delta_type(pa.field(field.name, wider)) != _delta_type(pa.field(field.name, old)):
                widened[field.name] = wider
    return widened


def conform_rows(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """`rows` with every source column `schema` also has cast to its type there (`schema`
    holds every value of `rows`: `columns_to_widen` widened it first)."""
    wider = {
        name: schema.field(name).type
        for name in data_columns(rows.schema)
        if name in schema.names and rows.schema.field(name).type != schema.field(name).type
    }
    if not wider:
        return rows
    columns = [
        cast_column(rows.column(name), wider[name]) if name in wider else rows.column(name)
        for name in rows.column_names
    ]
    return pa.Table.from_arrays(columns, names=rows.column_names)


def rewrite_with_types(table: DeltaTable, types: dict[str, pa.DataType], what: str) -> None:
    """Rewrite the Delta table `table` with the columns in `types` widened (see the module
    docstring for why an overwrite); `what` names the table in the log."""
    old = pa.schema(table.schema())
    rows = read_sql(table, "SELECT * FROM t")
    rows = conform_rows(rows, pa.schema([f.with_type(types.get(f.name, f.type)) for f in old]))
    partitions = table.metadata().partition_columns or None
    changes = ", ".join(f"{name} {old.field(name).type} -> {type_}" for name, type_ in sorted(types.items()))
    write_deltalake(
        table,
        rows,
        mode="overwrite",
        schema_mode="overwrite",
        partition_by=partitions,
        commit_properties=CommitProperties(custom_metadata={"totes.schema_change": changes}),
    )
    table.update_incremental()
    log.info("%s: widened %s (rewrote %d rows at version %d)", what, changes, rows.num_rows, table.version())
