"""A scripted totesys for the warehouse tests, and the real snapshot as snapshot-read events.

`ScriptedSource` plays totesys and its reader: each `transaction()` gets the next commit LSN
and each change in it the next `seq`; values are the text forms pgoutput sends. It keeps the
current rows (the source's truth) and every row's history, and `write_lake` stores its events
with the lake's own writer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow.dataset as pads
from deltalake import write_deltalake

from change_events import ChangeEvent, Column, Op, TableSchema
from lake import LakeLayout, LakeWriter
from totesys.snapshots import read_table, snapshot_tables

TS3 = "timestamp(3) without time zone"
SOURCE_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "address": [
        ("address_id", "integer"),
        ("address_line_1", "text"),
        ("address_line_2", "text"),
        ("district", "text"),
        ("city", "text"),
        ("postal_code", "text"),
        ("country", "text"),
        ("phone", "text"),
        ("created_at", TS3),
        ("last_updated", TS3),
    ],
    "counterparty": [
        ("counterparty_id", "integer"),
        ("counterparty_legal_name", "text"),
        ("legal_address_id", "integer"),
        ("commercial_contact", "text"),
        ("delivery_contact", "text"),
        ("created_at", TS3),
        ("last_updated", TS3),
    ],
    "currency": [
        ("currency_id", "integer"),
        ("currency_code", "character varying(3)"),
        ("created_at", TS3),
        ("last_updated", TS3),
    ],
    "department": [
        ("department_id", "integer"),
        ("department_name", "text"),
        ("location", "text"),
        ("manager", "text"),
        ("created_at", TS3),
        ("last_updated", TS3),
    ],
    "design": [
        ("design_id", "integer"),
        ("created_at", TS3),
        ("design_name", "text"),
        ("file_location", "text"),
        ("file_name", "text"),
        ("last_updated", TS3),
    ],
    "staff": [
        ("staff_id", "integer"),
        ("first_name", "text"),
        ("last_name", "text"),
        ("department_id", "integer"),
        ("email_address", "text"),
        ("created_at", TS3),
        ("last_updated", TS3),
    ],
    "payment_type": [
        ("payment_type_id", "integer"),
        ("payment_type_name", '"PaymentTypeName"'),
        ("created_at", TS3),
        ("last_updated", TS3),
    ],
    "sales_order": [
        ("sales_order_id", "integer"),
        ("created_at", TS3),
        ("last_updated", TS3),
        ("design_id", "integer"),
        ("staff_id", "integer"),
        ("counterparty_id", "integer"),
        ("units_sold", "integer"),
        ("unit_price", "numeric(10,2)"),
        ("currency_id", "integer"),
        ("agreed_delivery_date", "text"),
        ("agreed_payment_date", "text"),
        ("agreed_delivery_location_id", "integer"),
    ],
    "purchase_order": [
        ("purchase_order_id", "integer"),
        ("created_at", TS3),
        ("last_updated", TS3),
        ("staff_id", "integer"),
        ("counterparty_id", "integer"),
        ("item_code", "text"),
        ("item_quantity", "integer"),
        ("item_unit_price", "numeric(10,2)"),
        ("currency_id", "integer"),
        ("agreed_delivery_date", "text"),
        ("agreed_payment_date", "text"),
        ("agreed_delivery_location_id", "integer"),
    ],
    "transaction": [
        ("transaction_id", "integer"),
        ("transaction_type", '"TransactionType"'),
        ("sales_order_id", "integer"),
        ("purchase_order_id", "integer"),
        ("created_at", TS3),
        ("last_updated", TS3),
    ],
    "payment": [
        ("payment_id", "integer"),
        ("created_at", TS3),
        ("last_updated", TS3),
        ("transaction_id", "integer"),
        ("counterparty_id", "integer"),
        ("payment_amount", "numeric(10,2)"),
        ("currency_id", "integer"),
        ("payment_type_id", "integer"),
        ("paid", "boolean"),
        ("payment_date", "text"),
        ("company_ac_number", "integer"),
        ("counterparty_ac_number", "integer"),
    ],
}
TABLE_ORDER = list(SOURCE_COLUMNS)


def source_schema(table: str) -> TableSchema:
    key = f"{table}_id"
    return TableSchema(f"public.{table}", tuple(Column(n, t, 0, -1, n == key) for n, t in SOURCE_COLUMNS[table]))


SCHEMAS = {table: source_schema(table) for table in SOURCE_COLUMNS}
Row = dict[str, str | None]


@dataclass
class ScriptedSource:
    """An in-memory totesys that records its own change events."""

    lsn: int = 0x1_0000_0000
    clock: datetime = datetime(2024, 11, 18, 9, 0, tzinfo=timezone.utc)
    rows: dict[str, dict[str, Row]] = field(default_factory=lambda: {t: {} for t in SOURCE_COLUMNS})
    history: dict[str, dict[str, list[Row | None]]] = field(default_factory=lambda: {t: {} for t in SOURCE_COLUMNS})
    """Every version of every row, None for a deletion, in commit order."""
    events: list[ChangeEvent] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)
    _seq: int = 0
    _snapshot: bool = False

    @contextmanager
    def transaction(self, snapshot: bool = False):
        self.lsn += 0x1000
        self.clock += timedelta(minutes=7, milliseconds=123)
        self._seq, self._snapshot = 0, snapshot
        yield self
        self.commits.append(self.lsn)

    def _event(self, table: str, op: Op, key: Row, after: Row | None = None, unchanged: tuple[str, ...] = ()) -> None:
        self.events.append(
            ChangeEvent(
                schema=SCHEMAS[table],
                op=op,
                lsn=self.lsn,
                seq=self._seq,
                xid=None if self._snapshot else self.lsn // 0x1000,
                commit_ts=None if self._snapshot else self.clock,
                key=key,
                after=after,
                unchanged=unchanged,
            )
        )
        self._seq += 1

    def _record(self, table: str, key: str, row: Row | None) -> None:
        self.history[table].setdefault(key, []).append(None if row is None else dict(row))

    def insert(self, table: str, **values: str | None) -> Row:
        row = {name: values.get(name) for name, _ in SOURCE_COLUMNS[table]}
        key = row[f"{table}_id"]
        assert key is not None and key not in self.rows[table], (table, key)
        self.rows[table][key] = row
        self._record(table, key, row)
        self._event(table, Op.SNAPSHOT if self._snapshot else Op.INSERT, {f"{table}_id": key}, dict(row))
        return row

    def update(self, table: str, key: str | int, unchanged: tuple[str, ...] = (), **changes: str | None) -> Row:
        key = str(key)
        row = self.rows[table][key]
        row.update(changes)
        self._record(table, key, row)
        after = {n: v for n, v in row.items() if n not in unchanged}
        self._event(table, Op.UPDATE, {f"{table}_id": key}, after, tuple(unchanged))
        return row

    def delete(self, table: str, key: str | int) -> None:
        key = str(key)
        del self.rows[table][key]
        self._record(table, key, None)
        self._event(table, Op.DELETE, {f"{table}_id": key})

    def truncate(self, table: str) -> None:
        for key in list(self.rows[table]):
            self._record(table, key, None)
        self.rows[table].clear()
        self._event(table, Op.TRUNCATE, {})

    def now(self, offset_ms: int = 0) -> str:
        ts = self.clock.replace(tzinfo=None) + timedelta(milliseconds=offset_ms)
        return ts.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def insert_staff(
    src: ScriptedSource, id_: int, first: str, last: str, email: str, department: int = 1, at: str | None = None
) -> Row:
    """Staff member `id_` of `department`, made and last updated `at` (the source's now if not given)."""
    at = at or src.now()
    return src.insert(
        "staff",
        staff_id=str(id_),
        first_name=first,
        last_name=last,
        department_id=str(department),
        email_address=email,
        created_at=at,
        last_updated=at,
    )


def write_lake(
    root: Path | str, events: list[ChangeEvent], shard: str = "shardId-000000000000", chunk: int = 50_000
) -> LakeLayout:
    """Store `events` in the lake at `root` with the lake's writer; return its layout."""
    writer = LakeWriter(root)
    for start in range(0, len(events), chunk):
        result = writer.write_batch(shard, events[start : start + chunk])
        assert not result.rejected, result.rejected
    return writer.layout


def duplicate_logged_events(layout: LakeLayout, table: str, where: pads.Expression | None = None) -> int:
    """Append to `changes/public.<table>` a second copy of the logged rows matching `where`
    (bypassing the writer's deduplication, as a buggy or racing writer could); return how many."""
    uri = layout.changes_uri(f"public.{table}")
    delta = layout.open(uri)
    assert delta is not None
    rows = delta.to_pyarrow_dataset(filesystem=layout.subtree(uri)).to_table(filter=where)
    if rows.num_rows:
        write_deltalake(delta, rows, mode="append")
    return rows.num_rows


# -- the real snapshot as snapshot-read events --------------------------------------------------


def _text_column(column: pl.Series, type_name: str) -> list[str | None]:
    dtype = column.dtype
    if dtype.is_float():
        column = column.fill_nan(None)
        if type_name.startswith("numeric"):
            return column.round(2).map_elements(lambda v: f"{v:.2f}", return_dtype=pl.String).to_list()
        return column.cast(pl.Int64).cast(pl.String).to_list()
    if isinstance(dtype, pl.Datetime):
        return column.dt.strftime("%Y-%m-%d %H:%M:%S%.3f").to_list()
    if dtype == pl.Boolean:
        return column.map_elements(lambda v: "t" if v else "f", return_dtype=pl.String).to_list()
    return column.cast(pl.String).to_list()


def snapshot_events(folder: Path, lsn: int) -> list[ChangeEvent]:
    """Every row of a recorded snapshot as an `op='r'` event at `lsn`, as the reader's initial
    snapshot emits them (one `seq` sequence over all tables)."""
    events: list[ChangeEvent] = []
    seq = 0
    for table, path in snapshot_tables(folder).items():
        frame = read_table(path)
        schema = SCHEMAS[table]
        names = [n for n in schema.column_names if n in frame.columns]
        columns = [_text_column(frame[n], dict(SOURCE_COLUMNS[table])[n]) for n in names]
        for values in zip(*columns):
            row = dict(zip(names, values))
            events.append(
                ChangeEvent(
                    schema=schema,
                    op=Op.SNAPSHOT,
                    lsn=lsn,
                    seq=seq,
                    xid=None,
                    commit_ts=None,
                    key={f"{table}_id": row[f"{table}_id"]},
                    after=row,
                )
            )
            seq += 1
    return events
