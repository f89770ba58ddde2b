"""From decoded pgoutput messages to change events: the pure core of streaming.

Each Insert/Update/Delete/Truncate becomes a `ChangeEvent` as soon as it arrives, stamped
with the commit LSN its Begin announced (`final_lsn`), so a transaction of a million rows
never has to sit in memory. The Commit that ends it yields `TransactionEnd`, which is what
lets the reader count the transaction as complete; logical decoding messages (heartbeats,
markers) come out as `LogicalMessage`.

Row changes have a fast path, `encoded(payload)`: pgoutput's row layout is the wire format's
(`change_events.wire`), so an Insert, an Update or a Delete becomes an `EncodedChange` by
copying its row bytes behind a frame header; only the key is read, to route the event. It
is the same event `feed` would give, and a test holds the two paths to that. A table with a
personal-data policy (`personal_data.py`) takes a slower branch of it that rewrites its row
bytes; the others copy them as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime

from cdc_reader import pgoutput as pg
from cdc_reader.personal_data import NO_POLICY, Policy, RowRewrite
from cdc_reader.schema_changes import rewritten_columns
from change_events import ChangeEvent, Column, Op, TableSchema
from change_events.model import route_hash, route_prefix
from change_events.wire import (
    BEFORE_FULL,
    BEFORE_KEY,
    HAS_AFTER,
    NO_XID,
    UNCHANGED,
    EncodedChange,
    frame_head,
    micros,
    row_values,
)


class AssemblyError(RuntimeError):
    """The message stream broke the protocol's rules (e.g. a change outside a transaction)."""


@dataclass(frozen=True, slots=True)
class TransactionEnd:
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime
    events: int


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    lsn: int
    prefix: str
    content: bytes
    transactional: bool


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """A Relation message whose column types differ from the last ones known for its table
    (or the first one of a table without any): `types` are the new column types, `rewritten`
    the columns whose change may have rewritten values (`schema_changes.rewritten_columns`),
    name → (old type, new type)."""

    table: str
    types: dict[str, str]
    rewritten: dict[str, tuple[str, str]]


Output = ChangeEvent | TransactionEnd | LogicalMessage | SchemaChange
TypeNamer = Callable[[int, int], str]
KeyLookup = Callable[[str, str], "tuple[str, ...] | None"]


_RELATION_ID = struct.Struct(">I").unpack_from
_LENGTH = struct.Struct(">i").unpack_from
_TAG_INSERT, _TAG_UPDATE, _TAG_DELETE, _NEW_ROW, _OLD_KEY = 0x49, 0x55, 0x44, 0x4E, 0x4B
_BEFORE_KEY_FLAGS, _BEFORE_FULL_FLAGS = BEFORE_KEY << 1, BEFORE_FULL << 1


@dataclass(frozen=True, slots=True)
class _Routing:
    """What the fast path needs of a relation: its schema and where its key columns are."""

    schema: TableSchema
    table: str
    key_indexes: tuple[int, ...]
    key_is_first_column: bool
    prefix_crc: int
    """CRC-32 of '<table>/', which the key's bytes continue into the route hash"""
    rewrite: RowRewrite | None
    """The table's personal-data policy, when it has one"""


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


class Assembler:
    """Feed it pgoutput messages in order; it yields what they mean.

    `type_name(oid, typmod)` names column types (Relation messages carry only oids);
    `primary_key(schema, table)` gives the key under REPLICA IDENTITY FULL, where pgoutput
    flags every column as part of the identity. `column_types` (table → column → type name)
    are the types last known, e.g. from before a restart; Relation messages that differ
    update it and come out as SchemaChange. `policy` says what of personal data leaves: its
    events carry the masked and hashed values, and no dropped column.
    """

    def __init__(
        self,
        type_name: TypeNamer,
        primary_key: KeyLookup,
        column_types: dict[str, dict[str, str]] | None = None,
        policy: Policy = NO_POLICY,
    ):
        self._type_name = type_name
        self._policy = policy
        self._rewrites: dict[int, RowRewrite | None] = {}
        self._primary_key = primary_key
        self.column_types = column_types if column_types is not None else {}
        self._schemas: dict[int, TableSchema] = {}
        self._routing: dict[int, _Routing] = {}
        self._begin: pg.Begin | None = None
        self._frame_begin: tuple[int, int, int] | None = None  # lsn, xid, commit micros
        self._seq = 0

    def schema(self, relation_id: int) -> TableSchema:
        try:
            return self._schemas[relation_id]
        except KeyError:
            raise AssemblyError(f"change for relation {relation_id} before its Relation message") from None

    def encoded(self, payload: bytes) -> EncodedChange | None:
        """The row change in `payload` as an EncodedChange, or None when the payload is
        anything else (or an Update carrying an old row): hand those to `feed`."""
        # Byte offsets of a v1 row change: tag 0, relation id 1-4, tuple marker ('N'/'K'/'O')
        # 5, the tuple from 6 (i16 column count 6-7, then the first column: kind 8, i32
        # length 9-12, text from 13). The tuple is the wire row as it is: payload[6:].
        tag = payload[0]
        if tag == _TAG_INSERT:
            op, flags = b"c", HAS_AFTER
        elif tag == _TAG_UPDATE and payload[5] == _NEW_ROW:
            op, flags = b"u", HAS_AFTER
        elif tag == _TAG_DELETE:
            op, flags = b"d", _BEFORE_KEY_FLAGS if payload[5] == _OLD_KEY else _BEFORE_FULL_FLAGS
        else:
            return None
        begin = self._frame_begin
        routing = self._routing.get(_RELATION_ID(payload, 1)[0])
        if begin is None or routing is None:
            return None  # `feed` says what is wrong
        lsn, xid, commit_us = begin
        if routing.key_is_first_column and payload[8] == 0x74:  # the usual key: one text value first
            route = zlib.crc32(payload[13 : 13 + _LENGTH(payload, 9)[0]], routing.prefix_crc)
        elif routing.key_indexes:
            key = row_values(payload, 6, routing.key_indexes)
            if UNCHANGED in key:
                key = [None if value is UNCHANGED else value for value in key]
            route = route_hash(routing.table, key)
        else:
            route = route_hash(routing.table, ())
        head = frame_head(op, lsn, self._seq, xid, commit_us, flags)
        frame = head + (payload[6:] if routing.rewrite is None else routing.rewrite.row_bytes(payload, 6))
        self._seq += 1
        return EncodedChange(routing.schema, lsn, route, frame)

    def feed(self, message: pg.PgoutputMessage) -> Iterator[Output]:
        kind = type(message)
        if kind is pg.Insert:
            schema = self.schema(message.relation_id)
            after, unchanged = self._row(schema, self._leaving(message.relation_id, message.new))
            yield self._event(schema, Op.INSERT, after, None, unchanged, after)
        elif kind is pg.Update:
            schema = self.schema(message.relation_id)
            after, unchanged = self._row(schema, self._leaving(message.relation_id, message.new))
            before = self._old(schema, self._leaving(message.relation_id, message.old), message.old_kind)
            yield self._event(schema, Op.UPDATE, after, before, unchanged, after)
        elif kind is pg.Delete:
            schema = self.schema(message.relation_id)
            before = self._old(schema, self._leaving(message.relation_id, message.old), message.old_kind)
            yield self._event(schema, Op.DELETE, None, before, (), before or {})
        elif kind is pg.Begin:
            if self._begin is not None:
                raise AssemblyError(f"Begin of xid {message.xid} inside xid {self._begin.xid}")
            self._begin, self._seq = message, 0
            self._frame_begin = (
                message.final_lsn,
                NO_XID if message.xid is None else message.xid,
                micros(message.commit_ts),
            )
        elif kind is pg.Commit:
            begin = self._require_transaction("Commit")
            self._begin = self._frame_begin = None
            yield TransactionEnd(begin.xid, message.commit_lsn, message.end_lsn, message.commit_ts, self._seq)
        elif kind is pg.Relation:
            sent = self._describe(message)
            rewrite = self._rewrites[message.relation_id] = self._policy.rewrite(sent)
            schema = self._schemas[message.relation_id] = sent if rewrite is None else rewrite.schema
            types = {c.name: c.type_name for c in schema.columns}
            known = self.column_types.get(schema.table)
            if known != types:
                self.column_types[schema.table] = types
                yield SchemaChange(schema.table, types, rewritten_columns(known, types) if known else {})
            keys = tuple(i for i, c in enumerate(sent.columns) if c.is_key)  # where they are in the bytes sent
            self._routing[message.relation_id] = _Routing(
                schema, schema.table, keys, keys == (0,), route_prefix(schema.table), rewrite
            )
        elif kind is pg.Truncate:
            for relation_id in message.relation_ids:
                yield self._event(self.schema(relation_id), Op.TRUNCATE, None, None, (), {})
        elif kind is pg.Message:
            yield LogicalMessage(message.lsn, message.prefix, message.content, message.transactional)
        elif kind in (pg.Type, pg.Origin):
            pass  # type names come from the catalog; origins do not change what happened
        else:
            raise AssemblyError(f"unexpected {kind.__name__} message: the reader streams with proto_version 1")

    def read_events(self, schema: TableSchema, rows: list[list[str | None]]) -> list[ChangeEvent]:
        """Rows re-read from the table, as `op='r'` events of the transaction being
        assembled (they take its commit LSN and the next sequence numbers)."""
        names = schema.column_names
        rewrite = self._policy.rewrite(schema)
        if rewrite is not None:
            schema, names = rewrite.schema, rewrite.schema.column_names
        events = []
        for values in rows:
            after = dict(zip(names, values if rewrite is None else rewrite.values(values), strict=True))
            events.append(self._event(schema, Op.SNAPSHOT, after, None, (), after))
        return events

    # -- internals ---------------------------------------------------------------------
    def _leaving(self, relation_id: int, values: pg.TupleData | None) -> pg.TupleData | None:
        """A row as the table's personal-data policy lets it leave."""
        rewrite = self._rewrites.get(relation_id)
        return values if rewrite is None or values is None else rewrite.tuple_data(values)

    def _require_transaction(self, what: str) -> pg.Begin:
        if self._begin is None:
            raise AssemblyError(f"{what} outside a transaction")
        return self._begin

    def _event(self, schema, op, after, before, unchanged, key_source) -> ChangeEvent:
        begin = self._require_transaction(op.name.lower())
        event = ChangeEvent(
            schema=schema,
            op=op,
            lsn=begin.final_lsn,
            seq=self._seq,
            xid=begin.xid,
            commit_ts=begin.commit_ts,
            key={k: key_source.get(k) for k in schema.key_names} if op is not Op.TRUNCATE else {},
            after=after,
            before=before,
            unchanged=unchanged,
        )
        self._seq += 1
        return event

    def _describe(self, relation: pg.Relation) -> TableSchema:
        keys: tuple[str, ...] | None
        if relation.replica_identity == "f":
            keys = self._primary_key(relation.namespace, relation.name) or ()
        else:
            keys = relation.key_columns
        return TableSchema(
            relation.qualified_name,
            tuple(
                Column(
                    c.name, self._type_name(c.type_oid, c.type_modifier), c.type_oid, c.type_modifier, c.name in keys
                )
                for c in relation.columns
            ),
        )

    @staticmethod
    def _row(schema: TableSchema, values: pg.TupleData) -> tuple[dict[str, str | None], tuple[str, ...]]:
        row: dict[str, str | None] = {}
        unchanged: list[str] = []
        for column, (kind, data) in zip(schema.columns, values, strict=True):
            if kind == pg.UNCHANGED_KIND:
                unchanged.append(column.name)
            else:
                row[column.name] = _text(data)
        return row, tuple(unchanged)

    def _old(self, schema: TableSchema, values: pg.TupleData | None, kind: str | None) -> dict | None:
        if values is None:
            return None
        row, _ = self._row(schema, values)
        if kind == "K":
            return {name: row.get(name) for name in schema.key_names}
        return row
