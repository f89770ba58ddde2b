"""Routine DDL never strands data: a column's type changed at the source, with changes before
and after it (in the same transaction and in later ones), flows through a real PostgreSQL,
the real reader, the real lake and the warehouse, in order with the data.

Widening changes evolve the lake (and the warehouse mirrors) in place. A change PostgreSQL
carries out by rewriting the column's values (narrowing, text -> integer) emits no row events
for the rows it rewrote, so the reader re-reads the table; nothing is dead-lettered.
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime

import psycopg2
import pyarrow as pa
import pytest

from change_events import ChangeEvent, Op
from lake import LakeLayout, LakeWriter
from lake.timetravel import open_table, read_table
from tests.lake_fixtures import lake_state, typed_rows, with_type
from tests.reader_harness import FAST, current_lsn, running_reader, source_state, wait_until_confirmed
from tests.fakes import MemorySink
from totesys.simulator import Simulator
from warehouse_sync import sync_once
from warehouse_sync.targets import open_target

SO = "public.sales_order"
TODAY = date(2024, 11, 16)


def _seed(dsn: str) -> None:
    with Simulator(dsn, seed=7) as simulator:
        simulator.seed_history(2, until=datetime(2024, 11, 15, 18))


def _run(dsn: str, statements: list[list[str]], tmp_path, reread: str | None = None):
    """Run each inner list as one source transaction while a reader streams; the reader
    and every event it handed on, once all of them are confirmed (and `reread` re-read)."""
    sink = MemorySink()
    with running_reader(dsn, sink, tmp_path / "reader.json", FAST) as reader:
        with psycopg2.connect(dsn) as conn:
            for transaction in statements:
                with conn.cursor() as cur:
                    for statement in transaction:
                        cur.execute(statement)
                conn.commit()
        conn.close()
        deadline = time.monotonic() + 60
        while reread is not None and reread not in reader.reread:
            assert time.monotonic() < deadline, f"{reread} was not read again"
            assert getattr(reader, "failure", None) is None, reader.failure
            time.sleep(0.05)
        wait_until_confirmed(reader, current_lsn(dsn))
    return reader, sink.events


def _into_lake(layout: LakeLayout, events: list[ChangeEvent], per_transaction: bool) -> None:
    """The events into the lake, as one batch or one batch per source transaction; nothing
    may be refused."""
    lake = LakeWriter(layout, today=lambda: TODAY)
    batches: dict[int, list[ChangeEvent]] = {}
    for event in events:
        batches.setdefault(event.lsn if per_transaction else 0, []).append(event)
    for lsn in sorted(batches):
        result = lake.write_batch("s1", batches[lsn], markers=[max(e.lsn for e in batches[lsn])])
        assert not result.rejected, [str(r.error) for r in result.rejected]


def _source_rows(dsn: str, events: list[ChangeEvent], table: str = SO, text: str | None = None) -> dict[tuple, dict]:
    """`table` as the source holds it now, typed the way the lake stores its latest schema
    (with column `text` kept as text: the lake's column for a text column now of another type)."""
    schema = max((e for e in events if e.table == table), key=lambda e: e.event_id).schema
    if text is not None:
        schema = with_type(schema, text, "text")
    rows = list(source_state(dsn, [table.partition(".")[2]])[table].values())
    [key] = schema.key_names
    return {(r[key],): r for r in typed_rows(schema, rows)}


WIDENINGS = {  # table, key, column, new type, a value only the new type holds
    "integer to bigint": ("sales_order", "units_sold", "bigint", "5000000000"),
    "numeric(10,2) to numeric(14,4)": ("sales_order", "unit_price", "numeric(14,4)", "1234567890.1234"),
    "integer to numeric(12,2)": ("sales_order", "units_sold", "numeric(12,2)", "2.50"),
    "numeric(10,2) to numeric": ("sales_order", "unit_price", "numeric", "3.14159265358979"),
    "varchar(3) to varchar(10)": ("currency", "currency_code", "varchar(10)", "'EURO-X'"),
}


@pytest.mark.parametrize("per_transaction", [False, True], ids=["one batch", "a batch per transaction"])
@pytest.mark.parametrize("case", list(WIDENINGS))
def test_a_widened_column_flows_through_lake_and_warehouse_in_order_with_the_data(
    totesys_dsn, tmp_path, case, per_transaction
):
    table, column, new_type, value = WIDENINGS[case]
    key = f"{table}_id"
    _seed(totesys_dsn)
    reader, events = _run(
        totesys_dsn,
        [
            ["UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = 1"],
            [
                "UPDATE sales_order SET units_sold = units_sold + 2 WHERE sales_order_id = 2",
                f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {new_type}",
                f"UPDATE {table} SET {column} = {value} WHERE {key} = 1",
            ],
            [
                f"UPDATE {table} SET {column} = {value} WHERE {key} = 3",
                "DELETE FROM payment WHERE transaction_id IN "
                "(SELECT transaction_id FROM transaction WHERE sales_order_id = 4)",
                "DELETE FROM transaction WHERE sales_order_id = 4",
                "DELETE FROM sales_order WHERE sales_order_id = 4",
            ],
        ],
        tmp_path,
    )
    assert reader.metrics.schema_rereads == 0  # every value is what it was: nothing to read again

    layout = LakeLayout(tmp_path / "lake")
    _into_lake(layout, events, per_transaction)

    for changed in {SO, f"public.{table}"}:
        assert lake_state(layout, changed, (f"{changed[7:]}_id",)) == _source_rows(totesys_dsn, events, changed)
    logged = read_table(layout, "changes", f"public.{table}")
    mine = sorted((e.lsn, e.seq) for e in events if e.table == f"public.{table}")
    assert sorted(zip(logged.column("_lsn").to_pylist(), logged.column("_seq").to_pylist())) == mine
    # The snapshot's old values are still there, in the wider column.
    snapshot = logged.filter(pa.compute.equal(logged.column("_op"), "r"))
    assert snapshot.num_rows > 2 and None not in snapshot.column(column).to_pylist()
    # The warehouse: the mirror follows the source, the facts keep §3's types.
    target = open_target(tmp_path / "warehouse.duckdb")
    try:
        result = sync_once(layout, target, max(e.lsn for e in events), today=TODAY)
        mirror = dict(target.query(f"SELECT {key}, {column} FROM _src_{table}").rows())
        source = {k[0]: row[column] for k, row in _source_rows(totesys_dsn, events, f"public.{table}").items()}
        assert mirror == source
        live = target.query("SELECT count(*) FROM fact_sales_order WHERE is_current AND NOT is_deleted").item()
        assert live == len(_source_rows(totesys_dsn, events))
        rejected = target.query("SELECT DISTINCT business_key FROM _sync_rejected").rows()
        # Only the two versions holding a value §3 cannot (if the fact has that column).
        assert len(rejected) == sum(result.facts_rejected.values()) and {k for (k,) in rejected} <= {"1", "3"}
    finally:
        target.close()
    if per_transaction and case != "varchar(3) to varchar(10)":
        # The versions before the widening (a rewrite of the table) still read as written.
        history = open_table(layout, "changes", f"public.{table}").history()
        [rewrite] = [c["version"] for c in history if "totes.schema_change" in c]
        before = read_table(layout, "changes", f"public.{table}", version=rewrite - 1)
        assert before.num_rows >= snapshot.num_rows
        assert before.schema.field(column).type != logged.schema.field(column).type


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["duckdb", "postgresql"])
def test_a_bigint_units_sold_reaches_the_warehouse(totesys_dsn, tmp_path, engine, request):
    """units_sold widened to bigint, then set to 5,000,000,000: the mirror widens with it,
    the fact (§3: int) sets that version aside with the reason, everything else flows. The
    sync runs continuously (its lake tables cached) from before the change to after it."""
    _seed(totesys_dsn)
    layout = LakeLayout(tmp_path / "lake")
    warehouse = tmp_path / "warehouse.duckdb" if engine == "duckdb" else request.getfixturevalue("empty_database")
    target = open_target(warehouse)
    tables: dict = {}
    seen: list[ChangeEvent] = []

    def step(statements: list[list[str]]):
        _, events = _run(totesys_dsn, statements, tmp_path)
        new = [e for e in events if not seen or e.lsn > max(s.lsn for s in seen)]
        _into_lake(layout, new, per_transaction=True)
        seen.extend(new)
        return sync_once(layout, target, max(e.lsn for e in seen), today=TODAY, tables=tables)

    try:
        step([["UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = 1"]])
        result = step(
            [
                [
                    "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE bigint",
                    "UPDATE sales_order SET units_sold = 5000000000 WHERE sales_order_id = 1",
                    "UPDATE sales_order SET units_sold = 12 WHERE sales_order_id = 2",
                ],
                ["UPDATE sales_order SET units_sold = 13 WHERE sales_order_id = 3"],
            ]
        )
        assert result.facts_rejected == {"fact_sales_order": 1}
        mirror = dict(target.query("SELECT sales_order_id, units_sold FROM _src_sales_order").rows())
        assert mirror[1] == 5_000_000_000 and mirror[2] == 12 and mirror[3] == 13
        facts = dict(target.query("SELECT sales_order_id, units_sold FROM fact_sales_order WHERE is_current").rows())
        assert facts[2] == 12 and facts[3] == 13
        rejected = target.query(
            "SELECT source_table, business_key, source_column, source_value, reason FROM _sync_rejected"
        ).rows()
        assert rejected == [
            ("sales_order", "1", "units_sold", "5000000000", "does not fit fact_sales_order.units_sold (int)")
        ]
        # §3's int cannot hold it: the version before stays current.
        assert facts[1] < 2**31
        # A later sync in a new process (mirror types start from their definitions) goes on.
        from warehouse_sync.schema import BASE_SOURCES, SOURCES

        SOURCES.update(BASE_SOURCES)
        tables.clear()
        step([["UPDATE sales_order SET units_sold = 6000000000 WHERE sales_order_id = 2"]])
        mirror = dict(target.query("SELECT sales_order_id, units_sold FROM _src_sales_order").rows())
        assert mirror[2] == 6_000_000_000
        assert target.query("SELECT count(*) FROM _sync_rejected").item() == 2
    finally:
        target.close()


REWRITES = {
    "bigint to integer (narrowing)": (
        ["ALTER TABLE sales_order ALTER COLUMN units_sold TYPE bigint"],
        "ALTER TABLE sales_order ALTER COLUMN units_sold TYPE integer",
        "UPDATE sales_order SET units_sold = 77 WHERE sales_order_id = 1",
    ),
    "numeric(10,2) to numeric(10,1) (rounds)": (
        ["UPDATE sales_order SET unit_price = 3.46 WHERE sales_order_id = 2"],
        "ALTER TABLE sales_order ALTER COLUMN unit_price TYPE numeric(10,1)",
        "UPDATE sales_order SET unit_price = 9.9 WHERE sales_order_id = 1",
    ),
    "text to integer": (
        ["UPDATE sales_order SET agreed_payment_date = '20241201'"],
        "ALTER TABLE sales_order ALTER COLUMN agreed_payment_date TYPE integer USING agreed_payment_date::integer",
        "UPDATE sales_order SET agreed_payment_date = 20250101 WHERE sales_order_id = 1",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REWRITES))
def test_a_rewritten_column_re_reads_the_table_instead_of_dead_lettering(totesys_dsn, tmp_path, case, caplog):
    before, alter, after = REWRITES[case]
    _seed(totesys_dsn)
    caplog.set_level(logging.INFO, logger="totes.reader")
    reader, events = _run(
        totesys_dsn,
        [
            ["UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = 3", *before],
            ["UPDATE sales_order SET units_sold = units_sold + 2 WHERE sales_order_id = 2", alter, after],
            ["UPDATE sales_order SET units_sold = 5 WHERE sales_order_id = 3"],
        ],
        tmp_path,
        reread=SO,
    )
    assert reader.metrics.schema_rereads == 1
    assert [r.getMessage() for r in caplog.records if "re-reading it" in r.getMessage()], caplog.text
    initial = min(e.lsn for e in events)
    assert {e.table for e in events if e.op is Op.SNAPSHOT and e.lsn > initial} == {SO}

    layout = LakeLayout(tmp_path / "lake")
    _into_lake(layout, events, per_transaction=True)
    kept_as_text = "agreed_payment_date" if case == "text to integer" else None
    assert lake_state(layout, SO, ("sales_order_id",)) == _source_rows(totesys_dsn, events, text=kept_as_text)
    # History kept: every event, the re-read included, is in the change log.
    logged = read_table(layout, "changes", SO)
    assert logged.num_rows == len([e for e in events if e.table == SO])


@pytest.mark.slow
def test_a_reader_stopped_before_the_re_read_is_durable_reads_the_table_again(totesys_dsn, tmp_path):
    """The re-read rows exist only in the reader: one that dies in the middle of the re-read
    takes it up again when it starts, though the slot will not show the type change again."""
    _seed(totesys_dsn)

    def die_in_the_re_read():
        raise RuntimeError("killed inside the re-read")

    sink = MemorySink()
    state = tmp_path / "reader.json"
    with pytest.raises(RuntimeError, match="killed inside the re-read"):
        with running_reader(
            totesys_dsn, sink, state, FAST, prepare=lambda r: setattr(r, "resnapshot_hook", die_in_the_re_read)
        ) as reader:
            with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
                cur.execute("ALTER TABLE sales_order ALTER COLUMN unit_price TYPE numeric(10,1)")
                cur.execute("UPDATE sales_order SET units_sold = 1 WHERE sales_order_id = 1")
            conn.close()
            deadline = time.monotonic() + 30
            while getattr(reader, "failure", None) is None:
                assert time.monotonic() < deadline, "the re-read never started"
                time.sleep(0.05)
    first = list(sink.events)

    _, events = _run(
        totesys_dsn, [["UPDATE sales_order SET units_sold = 2 WHERE sales_order_id = 2"]], tmp_path, reread=SO
    )
    layout = LakeLayout(tmp_path / "lake")
    _into_lake(layout, first + events, per_transaction=True)
    assert lake_state(layout, SO, ("sales_order_id",)) == _source_rows(totesys_dsn, first + events)
