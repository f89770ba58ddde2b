"""Builders for the warehouse tests: change logs in the lake, a scripted totesys, the real
snapshot as snapshot-read events, and an independent SQL rendition of §3/§4 to compare with.

`ScriptedSource` plays totesys and its reader: each `transaction()` gets the next commit LSN
and each change in it the next `seq`; values are the text forms pgoutput sends. It keeps the
current rows (the source's truth) and every row's history, and `write_lake` stores its events
with the lake's own writer.

`expected_warehouse` is the test's own transform of source rows, written in DuckDB SQL
independently of `warehouse_sync` (it shares nothing with it but the spec).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as pads
from deltalake import write_deltalake

from change_events import ChangeEvent, Column, Op, TableSchema
from lake import LakeLayout, LakeWriter
from totesys.snapshots import read_table, snapshot_tables
import csv
import pytest
from tests.conftest import make_scratch_dir
from warehouse_sync import sync_once
from warehouse_sync import DuckDBTarget
from warehouse_sync.schema import SOURCES
from warehouse_sync import dangling_references, duplicate_current_rows
from polars.testing import assert_frame_equal
from warehouse_sync.schema import BY_NAME, DIMENSIONS, FACTS, LINEAGE_NAMES, conform
from tests.conftest import SHARED_DATA

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


# -- the independent transform ----------------------------------------------------------------

SOURCE_SQL_TYPES = {"integer": "INTEGER", "numeric(10,2)": "DECIMAL(10,2)", TS3: "TIMESTAMP", "boolean": "BOOLEAN"}


def typed_source_sql(table: str, relation: str) -> str:
    """SELECT over `relation` (text or natively typed columns of a source table) that types
    every column as the source does (PostgreSQL → DuckDB); float money is rounded to cents."""
    items = []
    for name, type_name in SOURCE_COLUMNS[table]:
        target = SOURCE_SQL_TYPES.get(type_name, "VARCHAR")
        value = name
        if target == "DECIMAL(10,2)":
            value = f"round(CAST({name} AS DOUBLE), 2)"
        if target == "INTEGER":
            value = f"CAST(nullif(CAST({name} AS DOUBLE), 'NaN'::DOUBLE) AS BIGINT)"
        if target == "BOOLEAN":
            value = f"CAST(CAST({name} AS VARCHAR) IN ('t', 'true') AS BOOLEAN)"
        items.append(f"CAST({value} AS {target}) AS {name}")
    return f"SELECT {', '.join(items)} FROM {relation}"


EXPECTED_SQL = {
    "dim_staff": """
        SELECT s.staff_id, s.first_name, s.last_name, coalesce(d.department_name, '') AS department_name,
               coalesce(d.location, '') AS location, s.email_address
        FROM s_staff s LEFT JOIN s_department d ON d.department_id = s.department_id""",
    "dim_location": """
        SELECT address_id AS location_id, address_line_1, address_line_2, district, city, postal_code, country, phone
        FROM s_address""",
    "dim_design": "SELECT design_id, design_name, file_location, file_name FROM s_design",
    "dim_currency": """
        SELECT currency_id, currency_code,
               CASE currency_code WHEN 'GBP' THEN 'Pound Sterling' WHEN 'USD' THEN 'US Dollar'
                                  WHEN 'EUR' THEN 'Euro' ELSE currency_code END AS currency_name
        FROM s_currency""",
    "dim_counterparty": """
        SELECT c.counterparty_id, c.counterparty_legal_name,
               a.address_line_1 AS counterparty_legal_address_line_1,
               a.address_line_2 AS counterparty_legal_address_line_2,
               a.district AS counterparty_legal_district, a.city AS counterparty_legal_city,
               a.postal_code AS counterparty_legal_postal_code, a.country AS counterparty_legal_country,
               a.phone AS counterparty_legal_phone_number
        FROM s_counterparty c JOIN s_address a ON a.address_id = c.legal_address_id""",
    "dim_payment_type": "SELECT payment_type_id, payment_type_name FROM s_payment_type",
    "dim_transaction": "SELECT transaction_id, transaction_type, sales_order_id, purchase_order_id FROM s_transaction",
    "fact_sales_order": """
        SELECT sales_order_id, CAST(created_at AS DATE) AS created_date, CAST(created_at AS TIME) AS created_time,
               CAST(last_updated AS DATE) AS last_updated_date, CAST(last_updated AS TIME) AS last_updated_time,
               staff_id AS sales_staff_id, counterparty_id, units_sold, unit_price, currency_id, design_id,
               CAST(agreed_payment_date AS DATE) AS agreed_payment_date,
               CAST(agreed_delivery_date AS DATE) AS agreed_delivery_date, agreed_delivery_location_id
        FROM s_sales_order""",
    "fact_purchase_order": """
        SELECT purchase_order_id, CAST(created_at AS DATE) AS created_date, CAST(created_at AS TIME) AS created_time,
               CAST(last_updated AS DATE) AS last_updated_date, CAST(last_updated AS TIME) AS last_updated_time,
               staff_id, counterparty_id, item_code, item_quantity, item_unit_price, currency_id,
               CAST(agreed_delivery_date AS DATE) AS agreed_delivery_date,
               CAST(agreed_payment_date AS DATE) AS agreed_payment_date, agreed_delivery_location_id
        FROM s_purchase_order""",
    "fact_payment": """
        SELECT payment_id, CAST(created_at AS DATE) AS created_date, CAST(created_at AS TIME) AS created_time,
               CAST(last_updated AS DATE) AS last_updated_date, CAST(last_updated AS TIME) AS last_updated_time,
               transaction_id, counterparty_id, payment_amount, currency_id, payment_type_id, paid,
               CAST(payment_date AS DATE) AS payment_date
        FROM s_payment""",
}
FACT_DATE_COLUMNS = {
    "fact_sales_order": ["created_date", "last_updated_date", "agreed_payment_date", "agreed_delivery_date"],
    "fact_purchase_order": ["created_date", "last_updated_date", "agreed_delivery_date", "agreed_payment_date"],
    "fact_payment": ["created_date", "last_updated_date", "payment_date"],
}


def expected_dim_date(connection: duckdb.DuckDBPyConnection, referenced: list[date], today: date) -> pl.DataFrame:
    """The calendar: 2022-11-01 to a year after `today` (or the latest referenced day), plus
    referenced days before it; ISO weekday, English names, quarter."""
    end = max([today + timedelta(days=366), *referenced])
    early = [d for d in referenced if d < date(2022, 11, 1)]
    connection.execute("CREATE OR REPLACE TEMP TABLE early_days (d DATE)")
    if early:
        connection.executemany("INSERT INTO early_days VALUES (?)", [(d,) for d in early])
    return pl.from_arrow(
        connection.sql(f"""
        WITH days AS (
            SELECT CAST(d AS DATE) AS d FROM generate_series(DATE '2022-11-01', DATE '{end}', INTERVAL 1 DAY) g(d)
            UNION SELECT d FROM early_days)
        SELECT d AS date_id, year(d) AS year, month(d) AS month, day(d) AS day, isodow(d) AS day_of_week,
               dayname(d) AS day_name, monthname(d) AS month_name, quarter(d) AS quarter
        FROM days ORDER BY d""").to_arrow_table()
    )


def source_connection(relations: dict[str, str]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a typed view `s_<table>` over each relation SQL given."""
    connection = duckdb.connect()
    for table, relation in relations.items():
        connection.execute(f"CREATE VIEW s_{table} AS {typed_source_sql(table, relation)}")
    return connection


def scripted_relations(connection: duckdb.DuckDBPyConnection, source: ScriptedSource) -> dict[str, str]:
    """Register the scripted source's current rows (text) in `connection`; return relations."""
    relations = {}
    for table, columns in SOURCE_COLUMNS.items():
        names = [n for n, _ in columns]
        frame = pl.DataFrame(
            [list(r.values()) for r in source.rows[table].values()], schema={n: pl.String for n in names}, orient="row"
        )
        connection.register(f"text_{table}", frame.to_arrow())
        relations[table] = f"text_{table}"
    return relations


def expected_tables(connection: duckdb.DuckDBPyConnection) -> dict[str, pl.DataFrame]:
    """Every non-date table of §3 from the `s_<table>` views (facts: the current rows)."""
    return {name: pl.from_arrow(connection.sql(query).to_arrow_table()) for name, query in EXPECTED_SQL.items()}


def scripted_expected(source: ScriptedSource) -> tuple[duckdb.DuckDBPyConnection, dict[str, pl.DataFrame]]:
    connection = duckdb.connect()
    for table, relation in scripted_relations(connection, source).items():
        connection.execute(f"CREATE VIEW s_{table} AS {typed_source_sql(table, relation)}")
    return connection, expected_tables(connection)


# -- a mixed history ---------------------------------------------------------------------------


@dataclass
class History:
    source: ScriptedSource
    points: list[tuple[int, dict[str, dict[str, Row]]]]
    """Sync points: an LSN and a copy of the source's rows as of it."""
    kept: dict[str, set[str]]
    """Dimension rows the scenario expects kept after their source row is gone."""

    @property
    def final_lsn(self) -> int:
        return self.points[-1][0]


def _copy_rows(source: ScriptedSource) -> dict[str, dict[str, Row]]:
    return {t: {k: dict(r) for k, r in rows.items()} for t, rows in source.rows.items()}


def _order(src: ScriptedSource, table: str, id_: int, **values: str) -> Row:
    now = src.now()
    common = dict(
        created_at=now,
        last_updated=now,
        staff_id="1",
        counterparty_id="1",
        currency_id="1",
        agreed_delivery_date="2024-11-25",
        agreed_payment_date="2024-11-22",
        agreed_delivery_location_id="3",
    )
    if table == "sales_order":
        common.update(design_id="1", units_sold="1500", unit_price="2.75")
    else:
        common.update(item_code="AB12CDE", item_quantity="17", item_unit_price="310.40")
    common.update(values)
    return src.insert(table, **{f"{table}_id": str(id_)}, **common)


def _payment(src: ScriptedSource, id_: int, transaction: int, **values: str) -> Row:
    now = src.now()
    row = dict(
        payment_id=str(id_),
        created_at=now,
        last_updated=now,
        transaction_id=str(transaction),
        counterparty_id="1",
        payment_amount="4125.00",
        currency_id="1",
        payment_type_id="1",
        paid="f",
        payment_date="2024-11-22",
        company_ac_number="12345678",
        counterparty_ac_number="87654321",
    )
    row.update(values)
    return src.insert("payment", **row)


def mixed_history() -> History:
    """A small totesys lived through inserts, updates (silent, projected and not), unchanged
    TOAST columns, a department rename, an address change, deletes, a truncate and dates
    outside the calendar; sync points every few transactions."""
    src = ScriptedSource()
    points = []

    def point() -> None:
        points.append((src.lsn, _copy_rows(src)))

    seeded = "2022-11-03 14:20:49.962"
    with src.transaction(snapshot=True):
        for i, (name, location) in enumerate([("Sales", "Manchester"), ("Dispatch", "Leds"), ("Finance", None)], 1):
            src.insert(
                "department",
                department_id=str(i),
                department_name=name,
                location=location,
                manager=f"M{i}",
                created_at=seeded,
                last_updated=seeded,
            )
        for i in range(1, 5):
            src.insert(
                "address",
                address_id=str(i),
                address_line_1=f"{i} Tote Street",
                address_line_2=None if i % 2 else f"Flat {i}",
                district=None if i == 3 else "Avon",
                city=f"City {i}",
                postal_code=f"{i}0000",
                country="Ruritania",
                phone=f"0123 45678{i}",
                created_at=seeded,
                last_updated=seeded,
            )
        for i, address in [(1, 1), (2, 2), (3, 2)]:
            src.insert(
                "counterparty",
                counterparty_id=str(i),
                counterparty_legal_name=f"Party {i} Ltd",
                legal_address_id=str(address),
                commercial_contact="Ann",
                delivery_contact="Bob",
                created_at=seeded,
                last_updated=seeded,
            )
        for i, code in enumerate(["GBP", "USD", "EUR"], 1):
            src.insert("currency", currency_id=str(i), currency_code=code, created_at=seeded, last_updated=seeded)
        for i in (1, 2):
            src.insert(
                "design",
                design_id=str(i),
                created_at=seeded,
                design_name=f"Design {i}",
                file_location="/usr/ports",
                file_name=f"d{i}-20221103-ab12.json",
                last_updated=seeded,
            )
        for i, department in [(1, 1), (2, 2), (3, 3)]:
            src.insert(
                "staff",
                staff_id=str(i),
                first_name=f"First{i}",
                last_name=f"Last{i}",
                department_id=str(department),
                email_address=f"first{i}.last{i}@terrifictotes.com",
                created_at=seeded,
                last_updated=seeded,
            )
        for i, name in enumerate(["SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND"], 1):
            src.insert(
                "payment_type", payment_type_id=str(i), payment_type_name=name, created_at=seeded, last_updated=seeded
            )
        for i in (1, 2, 3):
            _order(src, "sales_order", i, staff_id=str(i), counterparty_id=str(i), design_id=str(1 + i % 2))
            src.insert(
                "transaction",
                transaction_id=str(i),
                transaction_type="SALE",
                sales_order_id=str(i),
                purchase_order_id=None,
                created_at=src.now(),
                last_updated=src.now(),
            )
            _payment(src, i, i, counterparty_id=str(i))
        for i in (1, 2):
            # purchase order 2 was agreed to be paid before the calendar starts
            _order(
                src,
                "purchase_order",
                i,
                staff_id="2",
                counterparty_id="2",
                **({"agreed_payment_date": "2022-10-15"} if i == 2 else {}),
            )
            src.insert(
                "transaction",
                transaction_id=str(3 + i),
                transaction_type="PURCHASE",
                sales_order_id=None,
                purchase_order_id=str(i),
                created_at=src.now(),
                last_updated=src.now(),
            )
            _payment(src, 3 + i, 3 + i, payment_type_id="3", counterparty_id="2")
    point()

    with src.transaction():  # a new sale
        sale_4 = dict(_order(src, "sales_order", 4, staff_id="2", counterparty_id="3", currency_id="2"))
        src.insert(
            "transaction",
            transaction_id="6",
            transaction_type="SALE",
            sales_order_id="4",
            purchase_order_id=None,
            created_at=src.now(),
            last_updated=src.now(),
        )
        _payment(src, 6, 6, counterparty_id="3", currency_id="2")
    with src.transaction():  # a projected update that moves last_updated
        src.update("sales_order", 1, units_sold="2500", last_updated=src.now())
    with src.transaction():  # a silent update: projected columns only, last_updated unchanged
        src.update("sales_order", 2, design_id="2", agreed_delivery_date="2024-12-31")
    point()

    with src.transaction():  # only non-projected columns change: no new fact row, same dimension
        src.update("payment", 1, company_ac_number="11112222")
        src.update("counterparty", 1, commercial_contact="Carol")
    with src.transaction():  # the WAL omits unchanged TOASTed values
        src.update("sales_order", 3, unchanged=("agreed_delivery_date", "agreed_payment_date"), units_sold="3999")
        src.update("design", 1, unchanged=("file_location", "file_name"), design_name="Design One")
    with src.transaction():  # a department rename reaches its staff
        src.update("department", 1, department_name="Sales & Marketing", last_updated=src.now())
    with src.transaction():  # an address change reaches locations and counterparties
        src.update("address", 2, city="New City", address_line_2=None, last_updated=src.now())
    point()

    with src.transaction():  # the morning payment batch
        src.update("payment", 2, paid="t", last_updated=src.now())
    with src.transaction():  # a cancelled sale, children first
        src.delete("payment", 6)
        src.delete("transaction", 6)
        src.delete("sales_order", 4)
    with src.transaction():  # a new employee sells
        src.insert(
            "staff",
            staff_id="4",
            first_name="Temp",
            last_name="Worker",
            department_id="2",
            email_address="temp.worker@terrifictotes.com",
            created_at=src.now(),
            last_updated=src.now(),
        )
        _order(src, "sales_order", 5, staff_id="4", design_id="2", agreed_delivery_date="2026-03-01")
    with src.transaction():  # ... and leaves: the sale moves, staff 4 is deleted (history still names them)
        src.update("sales_order", 5, staff_id="1", last_updated=src.now())
        src.delete("staff", 4)
    point()

    with src.transaction():  # a design that never sold comes and goes
        src.insert(
            "design",
            design_id="3",
            created_at=src.now(),
            design_name="Gone",
            file_location="/tmp",
            file_name="gone.json",
            last_updated=src.now(),
        )
    with src.transaction():
        src.delete("design", 3)
    with src.transaction():  # the payments table is emptied
        src.truncate("payment")
    with src.transaction():  # life goes on
        _payment(src, 7, 1, payment_amount="6875.00")
        src.update("sales_order", 1, units_sold="1500", last_updated=src.now())
    with src.transaction():  # an update that changes nothing
        src.update("sales_order", 2)
    with src.transaction():  # a deleted sale comes back with the same id and values
        src.insert("sales_order", **sale_4)
    point()
    return History(src, points, kept={"dim_staff": {"4"}, "dim_transaction": {"6"}})


# -- reading a warehouse back ------------------------------------------------------------------


def synced_history(home: Path) -> tuple[History, LakeLayout]:
    """The whole scripted history in a lake under `home`, and a DuckDB warehouse beside it
    (`home/warehouse.duckdb`) synced point by point to its end."""
    from warehouse_sync import sync_once
    from warehouse_sync.targets import open_target

    history = mixed_history()
    layout = write_lake(home / "lake", history.source.events)
    target = open_target(str(home / "warehouse.duckdb"))
    try:
        for lsn, _ in history.points:
            sync_once(layout, target, lsn)
    finally:
        target.close()
    return history, layout


def read_table_sorted(target, name: str) -> pl.DataFrame:
    """One warehouse table, every column, in key order, in the schema's polars types."""
    from warehouse_sync.schema import BY_NAME, INTERNAL_TABLES, conform

    table = BY_NAME.get(name) or next(t for t in INTERNAL_TABLES if t.name == name)
    frame = target.query(f"SELECT {', '.join(table.names)} FROM {name} ORDER BY {table.key}")
    return conform(frame, table.polars_schema)


def dump_warehouse(target) -> dict[str, pl.DataFrame]:
    """Every table the sync writes (the star schema, the mirrors and the checkpoint)."""
    from warehouse_sync.schema import INTERNAL_TABLES, WAREHOUSE_TABLES

    return {t.name: read_table_sorted(target, t.name) for t in WAREHOUSE_TABLES + INTERNAL_TABLES}


def assert_same_warehouse(left: dict[str, pl.DataFrame], right: dict[str, pl.DataFrame]) -> None:
    from polars.testing import assert_frame_equal

    assert left.keys() == right.keys()
    for name in left:
        try:
            assert_frame_equal(left[name], right[name], check_exact=True)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


@pytest.fixture(scope="module")
def synced():
    home = make_scratch_dir("totes-report-")
    history, _ = synced_history(home)
    return history, home


def read_csv(path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


LINEAGE = [
    "is_current boolean",
    "is_deleted boolean",
    "source_op varchar",
    "source_lsn bigint",
    "source_seq bigint",
    "valid_from timestamptz null",
    "valid_to timestamptz null",
]


SPEC = {
    "dim_date": [
        "date_id date",
        "year int",
        "month int",
        "day int",
        "day_of_week int",
        "day_name varchar",
        "month_name varchar",
        "quarter int",
    ],
    "dim_staff": [
        "staff_id int",
        "first_name varchar",
        "last_name varchar",
        "department_name varchar",
        "location varchar",
        "email_address varchar",
    ],
    "dim_location": [
        "location_id int",
        "address_line_1 varchar",
        "address_line_2 varchar null",
        "district varchar null",
        "city varchar",
        "postal_code varchar",
        "country varchar",
        "phone varchar",
    ],
    "dim_design": ["design_id int", "design_name varchar", "file_location varchar", "file_name varchar"],
    "dim_currency": ["currency_id int", "currency_code varchar", "currency_name varchar"],
    "dim_counterparty": [
        "counterparty_id int",
        "counterparty_legal_name varchar",
        "counterparty_legal_address_line_1 varchar",
        "counterparty_legal_address_line_2 varchar null",
        "counterparty_legal_district varchar null",
        "counterparty_legal_city varchar",
        "counterparty_legal_postal_code varchar",
        "counterparty_legal_country varchar",
        "counterparty_legal_phone_number varchar",
    ],
    "dim_payment_type": ["payment_type_id int", "payment_type_name varchar"],
    "dim_transaction": [
        "transaction_id int",
        "transaction_type varchar",
        "sales_order_id int null",
        "purchase_order_id int null",
    ],
    "fact_sales_order": [
        "sales_record_id serial",
        "sales_order_id int",
        "created_date date",
        "created_time time",
        "last_updated_date date",
        "last_updated_time time",
        "sales_staff_id int",
        "counterparty_id int",
        "units_sold int",
        "unit_price numeric(10,2)",
        "currency_id int",
        "design_id int",
        "agreed_payment_date date",
        "agreed_delivery_date date",
        "agreed_delivery_location_id int",
        *LINEAGE,
    ],
    "fact_purchase_order": [
        "purchase_record_id serial",
        "purchase_order_id int",
        "created_date date",
        "created_time time",
        "last_updated_date date",
        "last_updated_time time",
        "staff_id int",
        "counterparty_id int",
        "item_code varchar",
        "item_quantity int",
        "item_unit_price numeric",
        "currency_id int",
        "agreed_delivery_date date",
        "agreed_payment_date date",
        "agreed_delivery_location_id int",
        *LINEAGE,
    ],
    "fact_payment": [
        "payment_record_id serial",
        "payment_id int",
        "created_date date",
        "created_time time",
        "last_updated_date date",
        "last_updated_time time",
        "transaction_id int",
        "counterparty_id int",
        "payment_amount numeric",
        "currency_id int",
        "payment_type_id int",
        "paid boolean",
        "payment_date date",
        *LINEAGE,
    ],
}


PRIMARY_KEYS = {name: columns[0].split()[0] for name, columns in SPEC.items()}


FOREIGN_KEYS = {
    "fact_sales_order": {
        "created_date": "dim_date",
        "last_updated_date": "dim_date",
        "sales_staff_id": "dim_staff",
        "counterparty_id": "dim_counterparty",
        "currency_id": "dim_currency",
        "design_id": "dim_design",
        "agreed_payment_date": "dim_date",
        "agreed_delivery_date": "dim_date",
        "agreed_delivery_location_id": "dim_location",
    },
    "fact_purchase_order": {
        "created_date": "dim_date",
        "last_updated_date": "dim_date",
        "staff_id": "dim_staff",
        "counterparty_id": "dim_counterparty",
        "currency_id": "dim_currency",
        "agreed_delivery_date": "dim_date",
        "agreed_payment_date": "dim_date",
        "agreed_delivery_location_id": "dim_location",
    },
    "fact_payment": {
        "created_date": "dim_date",
        "last_updated_date": "dim_date",
        "transaction_id": "dim_transaction",
        "counterparty_id": "dim_counterparty",
        "currency_id": "dim_currency",
        "payment_type_id": "dim_payment_type",
        "payment_date": "dim_date",
    },
}


def _spec(table: str) -> list[tuple[str, str, bool]]:
    out = []
    for item in SPEC[table]:
        name, type_, *rest = item.split()
        out.append((name, type_, rest == ["null"]))
    return out


TODAY = date(2024, 11, 18)


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def exactly_once_history():
    return mixed_history()


@pytest.fixture(scope="module")
def exactly_once_lake(exactly_once_history, tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("lake"), exactly_once_history.source.events)


@pytest.fixture(scope="module")
def exactly_once_reference(exactly_once_history, exactly_once_lake):
    """The warehouse after one sync of the whole history."""
    target = DuckDBTarget()
    sync_once(exactly_once_lake, target, exactly_once_history.final_lsn, today=TODAY)
    tables = dump_warehouse(target)
    target.close()
    return tables


def _sync(exactly_once_lake, target, lsn):
    result = sync_once(exactly_once_lake, target, lsn, today=TODAY)
    assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
    return result


FACT_SOURCES = {"fact_sales_order": "sales_order", "fact_purchase_order": "purchase_order", "fact_payment": "payment"}


NOT_PROJECTED = {"payment": {"company_ac_number", "counterparty_ac_number"}}


@pytest.fixture(scope="module")
def history_of_every_kind() -> History:
    return mixed_history()


@pytest.fixture(scope="module")
def history_lake(history_of_every_kind, tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("lake"), history_of_every_kind.source.events)


def _frame_equal(name: str, actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    try:
        assert_frame_equal(actual, expected, check_exact=True)
    except AssertionError as error:
        raise AssertionError(f"{name}: {error}") from None


def check_against_source(target, rows: dict[str, dict[str, Row]], kept: dict[str, set[str]]) -> None:
    """Current facts and dimensions == the independent transform of `rows`; integrity."""
    assert dangling_references(target) == {}
    assert duplicate_current_rows(target) == {}
    source = ScriptedSource(rows=rows)
    connection, expected = scripted_expected(source)
    for fact in FACTS:
        actual = read_table_sorted(target, fact.name)
        current = actual.filter(pl.col("is_current") & ~pl.col("is_deleted")).drop([fact.key, *LINEAGE_NAMES])
        schema = {n: t for n, t in fact.polars_schema.items() if n in current.columns}
        _frame_equal(
            fact.name, current.sort(fact.business_key), conform(expected[fact.name], schema).sort(fact.business_key)
        )
        deleted_now = actual.filter(pl.col("is_current") & pl.col("is_deleted"))[fact.business_key].to_list()
        assert not {str(k) for k in deleted_now} & set(rows[FACT_SOURCES[fact.name]]), fact.name
    for dimension in DIMENSIONS:
        if dimension.name == "dim_date":
            continue
        actual = read_table_sorted(target, dimension.name)
        want = conform(expected[dimension.name], dimension.polars_schema).sort(dimension.key)
        extra = actual.filter(~pl.col(dimension.key).is_in(want[dimension.key].implode()))
        assert {str(k) for k in extra[dimension.key].to_list()} <= kept.get(dimension.name, set()), dimension.name
        _frame_equal(dimension.name, actual.filter(pl.col(dimension.key).is_in(want[dimension.key].implode())), want)
    referenced = sorted(
        {
            d
            for fact in FACTS
            for c in FACT_DATE_COLUMNS[fact.name]
            for d in read_table_sorted(target, fact.name)[c].to_list()
        }
    )
    _frame_equal(
        "dim_date",
        read_table_sorted(target, "dim_date"),
        conform(expected_dim_date(connection, referenced, TODAY), BY_NAME["dim_date"].polars_schema),
    )


def expected_version_count(table: str, versions: list[Row | None]) -> int:
    """Fact rows one source row should have: one per version whose projection or
    deletedness differs from the version before it (a deletion of a live row counts)."""
    count, previous, deleted = 0, None, True
    for row in versions:
        if row is None:
            if not deleted:
                count += 1
            deleted = True
            continue
        projection = tuple(sorted((k, v) for k, v in row.items() if k not in NOT_PROJECTED.get(table, ())))
        if deleted or projection != previous:
            count += 1
        previous, deleted = projection, False
    return count


def check_history(target, source: ScriptedSource) -> None:
    for fact in FACTS:
        table = FACT_SOURCES[fact.name]
        actual = read_table_sorted(target, fact.name)
        assert set(actual[fact.business_key].cast(pl.String).to_list()) == set(source.history[table])
        for key, versions in source.history[table].items():
            rows = actual.filter(pl.col(fact.business_key) == int(key)).sort(fact.key)
            assert rows.height == expected_version_count(table, versions), (fact.name, key)
            assert rows["is_current"].to_list() == [False] * (rows.height - 1) + [True], (fact.name, key)
            assert rows["is_deleted"][-1] == (key not in source.rows[table]), (fact.name, key)
            assert rows["valid_to"].to_list() == rows["valid_from"].to_list()[1:] + [None], (fact.name, key)
            assert rows.select("source_lsn", "source_seq").rows() == sorted(
                rows.select("source_lsn", "source_seq").rows()
            )


def check_sequences(target) -> None:
    """Each fact's own sequence default stays past the ids the sync assigned."""
    for fact in FACTS:
        last = target.query(f"SELECT max({fact.key}) AS n FROM {fact.name}").item()
        assert target.query(f"SELECT nextval('{fact.sequence}') AS n").item() > last


SNAPSHOT = SHARED_DATA / "snapshot_2024-11-15_aidan-mooney"


SNAPSHOT_LSN = 0x2_4000_0000


@pytest.fixture(scope="module")
def snapshot_lake(tmp_path_factory):
    if not SNAPSHOT.is_dir():
        pytest.skip(f"shared snapshot not available at {SNAPSHOT}")
    return write_lake(tmp_path_factory.mktemp("lake"), snapshot_events(SNAPSHOT, SNAPSHOT_LSN))


@pytest.fixture(scope="module")
def expected():
    if not SNAPSHOT.is_dir():
        pytest.skip(f"shared snapshot not available at {SNAPSHOT}")
    relations = {path.stem: f"read_parquet('{path}')" for path in Path(SNAPSHOT).glob("*.parquet")}
    connection = source_connection(relations)
    tables = expected_tables(connection)
    referenced = sorted(
        {d for fact, columns in FACT_DATE_COLUMNS.items() for c in columns for d in tables[fact][c].to_list()}
    )
    tables["dim_date"] = expected_dim_date(connection, referenced, TODAY)
    return tables


def _compare(target, expected: dict[str, pl.DataFrame], names) -> None:
    for name in names:
        table = BY_NAME[name]
        actual = read_table_sorted(target, name)
        if table.is_fact:
            assert actual[table.key].to_list() == list(range(1, actual.height + 1))
            assert actual.sort("source_seq")[table.key].to_list() == actual[table.key].to_list()
            lineage = actual.select("is_current", "is_deleted", "source_op", "source_lsn", "valid_from", "valid_to")
            assert lineage.unique().rows() == [(True, False, "r", SNAPSHOT_LSN, None, None)]
            actual = actual.drop([table.key, *LINEAGE_NAMES]).sort(table.business_key)
            schema = {n: t for n, t in table.polars_schema.items() if n in actual.columns}
        else:
            schema = table.polars_schema
        want = conform(expected[name], schema).sort(actual.columns[0])
        try:
            assert_frame_equal(actual, want, check_exact=True)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


TABLES = len(SOURCES)


@pytest.fixture(scope="module")
def sliced_history():
    return mixed_history()


@pytest.fixture(scope="module")
def sliced_lake(sliced_history, tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("lake"), sliced_history.source.events)


@pytest.fixture(scope="module")
def sliced_reference(sliced_history, sliced_lake):
    """The warehouse after one sync of the whole history, in one slice."""
    target = DuckDBTarget()
    result = sync_once(sliced_lake, target, sliced_history.final_lsn, today=TODAY)
    assert len(result.slices) == 1
    tables = dump_warehouse(target)
    target.close()
    return tables


def _transaction_sizes(sliced_history) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for event in sliced_history.source.events:
        sizes[event.lsn] = sizes.get(event.lsn, 0) + 1
    return sizes
