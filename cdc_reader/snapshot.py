"""The consistent initial snapshot: every published table read under the snapshot that the
slot exported when it was created, so snapshot rows and streamed changes neither overlap nor
leave a gap (DESIGN.md guarantee 2).

Tables are read with COPY (text format: the same value text pgoutput sends) and turned into
`op='r'` events stamped with the slot's consistent LSN, handed on in chunks so memory does
not grow with the table. Each row goes straight into its wire frame (an EncodedChange), as
streamed row changes do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Protocol

from psycopg2 import sql

from cdc_reader.personal_data import NO_POLICY, Policy
from change_events import TableSchema
from change_events.model import route_hash
from change_events.wire import HAS_AFTER, NO_TIME, NO_XID, EncodedChange, encode_row, frame_head

_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)")
NULL = "\\N"


def _unescape_one(match: re.Match) -> str:
    code = match.group(1)
    if code in _ESCAPES:
        return _ESCAPES[code]
    if code[0] == "x":
        return chr(int(code[1:], 16))
    if code[0].isdigit():
        return chr(int(code, 8))
    return code


def parse_copy_line(line: str) -> list[str | None]:
    """One line of COPY ... TO STDOUT (text format) as values; NULL as None."""
    values: list[str | None] = []
    for field in line.split("\t"):
        if field == NULL:
            values.append(None)
        elif "\\" in field:
            values.append(_ESCAPE.sub(_unescape_one, field))
        else:
            values.append(field)
    return values


class Progress(Protocol):
    def __call__(self, table: str, rows: int) -> None: ...


class _CopyRows:
    """A file-like sink for copy_expert that turns COPY output into rows, chunk by chunk."""

    def __init__(self, on_rows: Callable[[list[list[str | None]]], None], chunk_rows: int):
        self._on_rows = on_rows
        self._chunk_rows = chunk_rows
        self._partial = b""
        self._rows: list[list[str | None]] = []

    def write(self, data) -> int:
        if isinstance(data, str):
            data = data.encode("utf-8")
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._rows.append(parse_copy_line(line.decode("utf-8")))
        if len(self._rows) >= self._chunk_rows:
            self._flush()
        return len(data)

    def _flush(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            self._on_rows(rows)

    def close(self) -> None:
        if self._partial:
            raise ValueError("COPY output ended inside a row")
        self._flush()


def read_snapshot(
    conn,
    snapshot_name: str,
    schemas: Iterable[TableSchema],
    consistent_lsn: int,
    emit: Callable[[list[EncodedChange]], None],
    *,
    chunk_rows: int = 5_000,
    progress: Progress | None = None,
    first_seq: int = 0,
    policy: Policy = NO_POLICY,
) -> int:
    """COPY every table under the exported snapshot into `emit`; return the events emitted.

    `conn` must be a plain connection with no transaction open; the replication connection
    that exported `snapshot_name` must stay open and idle until this returns. Events are
    numbered from `first_seq` (lower ones may precede the snapshot at the same LSN).
    """
    seq = first_seq
    conn.rollback()
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
            for schema in schemas:
                rewrite = policy.rewrite(schema)  # personal data: masked, hashed, dropped
                leaving = schema if rewrite is None else rewrite.schema
                names = schema.column_names
                key_positions = [names.index(k) for k in schema.key_names]
                table_rows = 0

                def on_rows(
                    rows: list[list[str | None]],
                    schema=schema,
                    names=names,
                    key_positions=key_positions,
                    rewrite=rewrite,
                    leaving=leaving,
                ):
                    nonlocal seq, table_rows
                    events = []
                    for values in rows:
                        if len(values) != len(names):
                            raise ValueError(f"{schema.table}: COPY gave {len(values)} values for {len(names)} columns")
                        route = route_hash(schema.table, [values[i] for i in key_positions])
                        head = frame_head(b"r", consistent_lsn, seq, NO_XID, NO_TIME, HAS_AFTER)
                        if rewrite is not None:
                            values = rewrite.values(values)
                        events.append(EncodedChange(leaving, consistent_lsn, route, head + encode_row(values)))
                        seq += 1
                    table_rows += len(rows)
                    emit(events)
                    if progress is not None:
                        progress(schema.table, table_rows)

                namespace, _, table = schema.table.partition(".")
                copy = sql.SQL("COPY {} ({}) TO STDOUT").format(
                    sql.Identifier(namespace, table), sql.SQL(", ").join(map(sql.Identifier, names))
                )
                sink = _CopyRows(on_rows, chunk_rows)
                cur.copy_expert(copy.as_string(conn), sink)
                sink.close()
        conn.commit()
    finally:
        conn.rollback()
        conn.set_session(isolation_level="DEFAULT", readonly=False)
    return seq - first_seq
