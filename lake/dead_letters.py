"""`_dead_letters`: records that could not be stored, with the reason (guarantee 8).

A processor puts here what it cannot use (a record that does not decode, events the lake
refused) and goes on with the rest of its shard. Each dead letter keeps the raw record bytes,
so nothing is lost: once the cause is fixed, `redrive` hands the records back to a callable
(e.g. "decode and `write_batch` again") and marks the ones it accepted as re-driven.

A dead letter's id is derived from where it came from (shard, sequence number, table,
reason), so a redelivered poison record is stored once. Adding is a merge that inserts
only unknown ids; writers racing on the table retry.
"""

from __future__ import annotations

import hashlib
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
from deltalake import DeltaTable

from change_events import encode_events
from lake.delta_io import create_once, quote_literal, read_sql, retry_on_conflict
from lake.layout import DEAD_LETTERS, LakeLayout


@dataclass(frozen=True)
class DeadLetter:
    id: str
    reason: str
    record: bytes
    shard: str | None
    sequence_number: str | None
    source_table: str | None
    failed_at: datetime
    redriven_at: datetime | None = None


_ARROW_TYPES = {str: pa.string(), bytes: pa.binary(), datetime: pa.timestamp("us", "UTC")}


def _arrow_schema(record: type) -> pa.Schema:
    """The table of a dataclass's records, so the fields are named once: a column a field, in
    their order, of the field's type (`T | None` as T; every column nullable)."""
    columns = []
    for name, hint in typing.get_type_hints(record).items():
        (type_,) = set(typing.get_args(hint) or (hint,)) - {type(None)}
        columns.append((name, _ARROW_TYPES[type_]))
    return pa.schema(columns)


SCHEMA = _arrow_schema(DeadLetter)


@dataclass
class RedriveReport:
    redriven: list[str]
    failed: dict[str, str]
    """id → why the handler refused it (the dead letter stays)."""


def dead_letter_id(shard: str | None, sequence_number: str | None, table: str | None, reason: str) -> str:
    text = "\x1f".join([shard or "", sequence_number or "", table or "", reason])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class DeadLetters:
    def __init__(self, layout: LakeLayout):
        self.layout = layout
        self.uri = layout.uri(DEAD_LETTERS)

    def add(
        self,
        reason: str,
        record: bytes,
        *,
        shard: str | None = None,
        sequence_number: str | None = None,
        table: str | None = None,
        failed_at: datetime | None = None,
    ) -> str:
        """Keep one record with the reason; returns its id (the same for a repeat)."""
        letter = DeadLetter(
            dead_letter_id(shard, sequence_number, table, reason),
            reason,
            bytes(record),
            shard,
            sequence_number,
            table,
            failed_at or datetime.now(timezone.utc),
        )
        self.add_many([letter])
        return letter.id

    def add_rejected(self, rejected, shard: str, sequence_number: str | None = None) -> str:
        """Keep events the lake refused (a `lake.writer.Rejected`) as one record in the
        stream's own format, so a re-drive can decode and write them again."""
        first = rejected.events[0]
        sequence_number = sequence_number or f"lsn {first.lsn}/{first.seq} +{len(rejected.events)}"
        return self.add(
            str(rejected.error),
            encode_events(rejected.events),
            shard=shard,
            sequence_number=sequence_number,
            table=rejected.table,
        )

    def add_many(self, letters: Iterable[DeadLetter]) -> None:
        rows = pa.Table.from_pylist([letter.__dict__ for letter in letters], schema=SCHEMA)
        if rows.num_rows == 0:
            return
        if self._table() is None:
            create_once(self.layout, self.uri, SCHEMA)

        def merge() -> None:
            table = self._table()
            table.merge(rows, "t.id = s.id", source_alias="s", target_alias="t").when_not_matched_insert_all().execute()

        retry_on_conflict(merge)

    def list(self, include_redriven: bool = False) -> list[DeadLetter]:
        """Dead letters, oldest first (only those not yet re-driven, by default)."""
        table = self._table()
        if table is None:
            return []
        where = "" if include_redriven else " WHERE redriven_at IS NULL"
        rows = read_sql(table, f"SELECT * FROM t{where} ORDER BY failed_at, id").cast(SCHEMA)  # nosec B608 # a constant predicate
        return [DeadLetter(**row) for row in rows.to_pylist()]

    def redrive(self, handler: Callable[[DeadLetter], object], ids: Iterable[str] | None = None) -> RedriveReport:
        """Hand each waiting dead letter (or those of `ids`) to `handler`; mark those it
        accepted (returned without raising) as re-driven."""
        wanted = None if ids is None else set(ids)
        report = RedriveReport([], {})
        for letter in self.list():
            if wanted is not None and letter.id not in wanted:
                continue
            try:
                handler(letter)
            except Exception as error:  # noqa: BLE001 - the reason is kept for the operator
                report.failed[letter.id] = f"{type(error).__name__}: {error}"
            else:
                report.redriven.append(letter.id)
        if report.redriven:
            listed = ", ".join(map(quote_literal, report.redriven))

            def mark() -> None:
                self._table().update(
                    predicate=f"id IN ({listed})", new_values={"redriven_at": datetime.now(timezone.utc)}
                )

            retry_on_conflict(mark)
        return report

    def _table(self) -> DeltaTable | None:
        return self.layout.open(self.uri)


def list_dead_letters(layout: LakeLayout, include_redriven: bool = False) -> list[DeadLetter]:
    return DeadLetters(layout).list(include_redriven)
