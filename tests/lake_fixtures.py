"""Builders of totesys-like change events for the lake tests and the lake benchmark.

`Source` plays the database: each `transaction()` gets the next commit LSN, and each change
inside it the next `seq`, exactly as the reader stamps them. Values are the text forms
pgoutput sends (numeric(10,2) '3.50', timestamp(3) '2024-05-01 10:00:00.123', boolean 't').
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone


from change_events import ChangeEvent, Column, Op, TableSchema
from tests.scripted_source import source_schema
from lake import LakeLayout, LakeWriter
import json
from typer.testing import CliRunner
from totes_cli.app import app

TODAY = date(2024, 5, 1)
"""The day tests' writers pretend it is (snapshot rows are partitioned by the day written)."""


# The lake tests' tables are totesys's own (one list of columns: tests.scripted_source).
SALES_ORDER, PAYMENT, TRANSACTION, DESIGN = (
    source_schema(t) for t in ("sales_order", "payment", "transaction", "design")
)


def with_column(schema: TableSchema, name: str, type_name: str) -> TableSchema:
    """`schema` after `ALTER TABLE … ADD COLUMN name type_name`."""
    return replace(schema, columns=schema.columns + (Column(name, type_name, 0),))


def with_type(schema: TableSchema, name: str, type_name: str) -> TableSchema:
    """`schema` after `ALTER TABLE … ALTER COLUMN name TYPE type_name`."""
    return replace(
        schema, columns=tuple(replace(c, type_name=type_name) if c.name == name else c for c in schema.columns)
    )


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def sales_order_row(order_id: int, version: int = 0, moment: datetime | None = None) -> dict[str, str | None]:
    moment = moment or datetime(2024, 5, 1, 9, 0) + timedelta(minutes=order_id, seconds=version)
    return {
        "sales_order_id": str(order_id),
        "created_at": _ts(datetime(2024, 5, 1, 9, 0) + timedelta(minutes=order_id)),
        "last_updated": _ts(moment),
        "design_id": str(1 + order_id % 12),
        "staff_id": str(1 + order_id % 20),
        "counterparty_id": str(1 + order_id % 20),
        "units_sold": str(1000 + (order_id * 37 + version * 11) % 99000),
        "unit_price": f"{2 + (order_id + version) % 200 / 100:.2f}",
        "currency_id": str(1 + order_id % 3),
        "agreed_delivery_date": f"2024-06-{1 + order_id % 28:02d}",
        "agreed_payment_date": f"2024-07-{1 + (order_id + version) % 28:02d}",
        "agreed_delivery_location_id": str(1 + order_id % 30),
    }


def payment_row(payment_id: int, paid: bool = False) -> dict[str, str | None]:
    return {
        "payment_id": str(payment_id),
        "created_at": "2024-05-02 10:00:00.000",
        "last_updated": "2024-05-02 10:00:00.000",
        "transaction_id": str(payment_id),
        "counterparty_id": str(1 + payment_id % 20),
        "payment_amount": f"{100 + payment_id * 1.25:.2f}",
        "currency_id": "1",
        "payment_type_id": str(1 + payment_id % 4),
        "paid": "t" if paid else "f",
        "payment_date": "2024-05-20",
        "company_ac_number": "12345678",
        "counterparty_ac_number": "87654321",
    }


class Source:
    """Hands out events stamped like the reader does: commit LSN per transaction, seq inside."""

    def __init__(self, start_lsn: int = 0x1000000, commit_ts: datetime | None = None):
        self.lsn = start_lsn
        self.commit_ts = commit_ts or datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
        self.xid = 700
        self._tx: list[ChangeEvent] | None = None

    def snapshot(self, schema: TableSchema, rows: list[dict], start_seq: int = 0) -> list[ChangeEvent]:
        """Snapshot reads: all at the slot's consistent point (the current LSN)."""
        key = schema.key_names
        return [
            ChangeEvent(
                schema, Op.SNAPSHOT, self.lsn, start_seq + i, None, None, {k: row[k] for k in key}, after=dict(row)
            )
            for i, row in enumerate(rows)
        ]

    @contextmanager
    def transaction(self):
        """`with source.transaction() as tx:` → tx.insert/update/delete/truncate; tx.events."""
        self.lsn += 0x100
        self.xid += 1
        self.commit_ts += timedelta(seconds=1)
        tx = _Tx(self.lsn, self.xid, self.commit_ts)
        yield tx


class _Tx:
    def __init__(self, lsn: int, xid: int, commit_ts: datetime):
        self.lsn, self.xid, self.commit_ts = lsn, xid, commit_ts
        self.events: list[ChangeEvent] = []

    def _add(self, schema, op, key, after=None, before=None, unchanged=()) -> ChangeEvent:
        event = ChangeEvent(
            schema,
            op,
            self.lsn,
            len(self.events),
            self.xid,
            self.commit_ts,
            key,
            after=after,
            before=before,
            unchanged=tuple(unchanged),
        )
        self.events.append(event)
        return event

    def _key(self, schema, row):
        return {k: row[k] for k in schema.key_names}

    def insert(self, schema: TableSchema, row: dict) -> ChangeEvent:
        return self._add(schema, Op.INSERT, self._key(schema, row), after=dict(row))

    def update(self, schema: TableSchema, row: dict, unchanged: tuple[str, ...] = ()) -> ChangeEvent:
        after = {k: v for k, v in row.items() if k not in unchanged}
        return self._add(schema, Op.UPDATE, self._key(schema, row), after=after, unchanged=unchanged)

    def delete(self, schema: TableSchema, key: dict) -> ChangeEvent:
        return self._add(schema, Op.DELETE, dict(key), before=dict(key))

    def truncate(self, schema: TableSchema) -> ChangeEvent:
        return self._add(schema, Op.TRUNCATE, {})


# -- comparing the lake with the reference semantics ------------------------------------------


def three_batches(root) -> list[int]:
    """A lake at `root` written by the stream processor in three batches: 5 orders, then 2
    updates, then a delete. Returns the first LSN of each batch."""
    from change_events import encode_events
    from lake.writer import LakeWriter
    from stream_processors.handler import StreamProcessor
    from tests.stream_helpers import kinesis_event

    source = Source()
    processor = StreamProcessor(LakeWriter(root))
    batches = [source.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 6)])]
    with source.transaction() as tx:
        tx.update(SALES_ORDER, sales_order_row(1, version=1))
        tx.update(SALES_ORDER, sales_order_row(2, version=1))
    batches.append(tx.events)
    with source.transaction() as tx:
        tx.delete(SALES_ORDER, {"sales_order_id": "3"})
    batches.append(tx.events)
    for n, events in enumerate(batches):
        processor.process(kinesis_event([encode_events(events)], start=1 + 10 * n))
    return [events[0].lsn for events in batches]


def typed_rows(schema: TableSchema, rows: list[dict[str, str | None]]) -> list[dict]:
    """Text rows → the typed values the lake stores (through the lake's own conversion)."""
    from lake.arrow_types import convert_column
    import pyarrow as pa

    if not rows:
        return []
    columns = {c.name: convert_column([r.get(c.name) for r in rows], c.type_name, c.name) for c in schema.columns}
    return pa.table(columns).to_pylist()


def expected_state(events: list[ChangeEvent], table: str) -> dict[tuple, dict]:
    """The reference current state of `table` (tests.reader_harness.apply_events), typed."""
    from tests.reader_harness import apply_events

    mine = [e for e in events if e.table == table]
    if not mine:
        return {}
    schema = max(mine, key=lambda e: e.event_id).schema
    rows = list(apply_events(mine).get(table, {}).values())
    full = [{c: row.get(c) for c in schema.column_names} for row in rows]
    keys = schema.key_names
    return {tuple(r[k] for k in keys): r for r in typed_rows(schema, full)}


def lake_state(layout, table: str, keys: tuple[str, ...], **when) -> dict[tuple, dict]:
    """The live rows of `tables/<table>`, source columns only, by key."""
    from lake.schemas import data_columns
    from lake.timetravel import current_state

    rows = current_state(layout, table, **when)
    columns = data_columns(rows.schema)
    return {tuple(r[k] for k in keys): {c: r[c] for c in columns} for r in rows.to_pylist()}


# Columns that depend on how events were batched, not on what they are.
BATCHING_COLUMNS = ("_batch",)


def table_snapshot(layout, kind: str, table: str) -> list[dict]:
    """Every row of a lake table, in a canonical order, without batching-only columns."""
    from lake.schemas import data_columns
    from lake.timetravel import read_table

    rows = read_table(layout, kind, table)
    order = ["_lsn", "_seq"] if kind == "changes" else data_columns(rows.schema)
    rows = rows.drop_columns([c for c in BATCHING_COLUMNS if c in rows.column_names])
    rows = rows.select(sorted(rows.column_names))
    return sorted(rows.to_pylist(), key=lambda r: tuple((v is None, str(v)) for v in (r[c] for c in order)))


SO, SO_KEY = SALES_ORDER.table, SALES_ORDER.key_names


def history() -> list:
    """One shard's events of sales_order: snapshot, updates (some with TOAST-unchanged
    columns), deletes, a re-insert, a truncate and life after it."""
    src = Source()
    events = src.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 5)])
    with src.transaction() as tx:
        tx.update(SALES_ORDER, sales_order_row(1, 1), unchanged=("agreed_payment_date",))
        tx.delete(SALES_ORDER, {"sales_order_id": "2"})
        tx.insert(SALES_ORDER, sales_order_row(5))
    events += tx.events
    with src.transaction() as tx:
        tx.update(SALES_ORDER, sales_order_row(1, 2), unchanged=("unit_price",))
        tx.insert(SALES_ORDER, sales_order_row(2, 3))
        tx.update(SALES_ORDER, sales_order_row(3, 1))
    events += tx.events
    with src.transaction() as tx:
        tx.delete(SALES_ORDER, {"sales_order_id": "5"})
        tx.update(SALES_ORDER, sales_order_row(4, 4), unchanged=("agreed_delivery_date",))
    events += tx.events
    with src.transaction() as tx:
        tx.truncate(SALES_ORDER)
    events += tx.events
    with src.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(6))
        tx.insert(SALES_ORDER, sales_order_row(3, 7))
    events += tx.events
    with src.transaction() as tx:
        tx.update(SALES_ORDER, sales_order_row(3, 8), unchanged=("unit_price", "agreed_delivery_date"))
        tx.update(SALES_ORDER, sales_order_row(6, 1))
    return events + tx.events


EVENTS = history()


def write(layout: LakeLayout, batches, shard: str = "s1") -> None:
    lake = LakeWriter(layout, today=lambda: TODAY)
    for batch in batches:
        lake.write_batch(shard, batch)


runner = CliRunner()


def count(path, table: str, as_of: str) -> int:
    result = runner.invoke(
        app,
        ["query", f"SELECT count(*) AS n FROM {table}", "--lake", str(path), "--as-of", as_of, "--format", "json"],
        catch_exceptions=False,
        env={"COLUMNS": "240"},
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]["n"]
