"""The initial load in bulk (`warehouse_sync.bulk`): a fresh fact source's snapshot reads go
into the warehouse in one statement per table, and the warehouse is the one the general path
gives, every table and column, record ids included, on both engines: for the real snapshot,
for generated rows whose snapshot is followed by streamed changes in the same slice, and
after the sync is killed in the middle of a bulk load."""

from __future__ import annotations

import os
import signal
import subprocess  # nosec B404 # fixed argv lists, never a shell
import sys
from pathlib import Path

import pytest

import warehouse_sync.apply as apply_module
import warehouse_sync.steps as steps_module
import warehouse_sync.bulk as bulk_module
from change_events import ChangeEvent, Op
from lake.change_feed import ChangeLog
from tests.scripted_source import SCHEMAS, snapshot_events, write_lake
from tests.warehouse_fixtures import SNAPSHOT, SNAPSHOT_LSN, TODAY, assert_same_warehouse, dump_warehouse
from tests.warehouse_history import _copy_rows, mixed_history
from warehouse_sync import DuckDBTarget, PostgresTarget, dangling_references, duplicate_current_rows, sync_once
from warehouse_sync.transforms import FACT_SPECS

FACT_TABLES = {spec.table.name for spec in FACT_SPECS}
ORDERS = 3_000
"""Generated sales orders in the real snapshot's LSN, numbered in chunks as the reader does."""


@pytest.fixture(params=["duckdb", "postgres"])
def open_warehouse(request, tmp_path):
    """A function that opens a new empty warehouse of the engine (`name` tells them apart)."""
    targets = []

    def opener(name: str):
        if request.param == "duckdb":
            targets.append(DuckDBTarget(tmp_path / f"{name}.duckdb"))
        else:
            targets.append(PostgresTarget(request.getfixturevalue("new_database")()))
        return targets[-1]

    yield opener
    for target in targets:
        target.close()


def _general(lake, target, upto, monkeypatch, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(bulk_module, "BULK_LOADS", False)
        result = sync_once(lake, target, upto, today=TODAY, **kwargs)
    assert result.bulk_loaded == {}
    return dump_warehouse(target)


def _generated_orders(first_seq: int) -> list[ChangeEvent]:
    """Sales orders referring to the real snapshot's static rows, as snapshot reads whose
    `seq` leaves gaps between chunks (as `cdc_reader.bulk_snapshot.snapshot_seq` does)."""
    events = []
    for i in range(ORDERS):
        chunk, place = divmod(i, 700)
        order = str(1_000_001 + i)
        created = f"2024-05-01 09:{i % 60:02d}:{i % 59:02d}.{i % 1000:03d}"
        row = dict(
            sales_order_id=order,
            created_at=created,
            last_updated=created,
            design_id=str(1 + i % 12),
            staff_id=str(1 + i % 20),
            counterparty_id=str(1 + i % 20),
            units_sold=str(1000 + i * 37 % 99000),
            unit_price=f"{(200 + i % 200) / 100:.2f}",
            currency_id=str(1 + i % 3),
            agreed_delivery_date=f"2024-06-{1 + i % 28:02d}",
            agreed_payment_date=f"2024-07-{1 + i % 28:02d}",
            agreed_delivery_location_id=str(1 + i % 30),
        )
        seq = first_seq + (chunk << 16) + place
        events.append(
            ChangeEvent(
                SCHEMAS["sales_order"], Op.SNAPSHOT, SNAPSHOT_LSN, seq, None, None, {"sales_order_id": order}, row
            )
        )
    return events


@pytest.fixture(scope="module")
def real_lake(tmp_path_factory):
    """The real snapshot and the generated orders at its LSN."""
    if not SNAPSHOT.is_dir():
        pytest.skip(f"shared snapshot not available at {SNAPSHOT}")
    real = snapshot_events(SNAPSHOT, SNAPSHOT_LSN)
    return write_lake(tmp_path_factory.mktemp("lake"), real + _generated_orders(len(real)), chunk=20_000)


@pytest.fixture(scope="module")
def streamed():
    """A generated totesys: its snapshot, then streamed inserts, updates, deletes and a truncate."""
    return mixed_history()


@pytest.fixture(scope="module")
def streamed_lake(streamed, tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("lake"), streamed.source.events)


def test_the_real_snapshot_in_bulk_equals_the_general_path(real_lake, open_warehouse, monkeypatch):
    reference = _general(real_lake, open_warehouse("general"), SNAPSHOT_LSN, monkeypatch)
    target = open_warehouse("bulk")
    result = sync_once(real_lake, target, SNAPSHOT_LSN, today=TODAY)
    assert set(result.bulk_loaded) == FACT_TABLES
    assert result.bulk_loaded["fact_sales_order"] == reference["fact_sales_order"].height == 11_187 + ORDERS
    assert len(result.slices) == 1  # the dimensions' 16k events and the facts' files: one slice
    assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
    assert_same_warehouse(dump_warehouse(target), reference)


def test_a_lake_elsewhere_is_handed_to_duckdb_as_its_arrow_dataset(real_lake, tmp_path, monkeypatch):
    with DuckDBTarget(tmp_path / "general.duckdb") as general:
        reference = _general(real_lake, general, SNAPSHOT_LSN, monkeypatch)
    monkeypatch.setattr(ChangeLog, "local_paths", lambda self, dataset: None)  # as for a lake on S3
    with DuckDBTarget(tmp_path / "bulk.duckdb") as target:
        result = sync_once(real_lake, target, SNAPSHOT_LSN, today=TODAY)
        assert set(result.bulk_loaded) == FACT_TABLES
        assert_same_warehouse(dump_warehouse(target), reference)


def test_a_snapshot_cut_into_slices_elsewhere_keeps_each_bulk_part_whole(real_lake, open_warehouse, monkeypatch):
    reference = _general(real_lake, open_warehouse("general"), SNAPSHOT_LSN, monkeypatch, slice_events=2_000)
    target = open_warehouse("bulk")
    result = sync_once(real_lake, target, SNAPSHOT_LSN, today=TODAY, slice_events=2_000)
    assert set(result.bulk_loaded) == FACT_TABLES
    assert any(not end.is_complete(len(apply_module.SOURCES)) for end, _ in result.slices)  # dimensions cut
    assert_same_warehouse(dump_warehouse(target), reference)


def test_a_large_part_in_pieces_equals_the_general_path(real_lake, open_warehouse, monkeypatch):
    reference = _general(real_lake, open_warehouse("general"), SNAPSHOT_LSN, monkeypatch)
    monkeypatch.setattr(bulk_module, "PIECE_ROWS", 2_500)  # DuckDB holds a transaction's index entries
    target = open_warehouse("bulk")
    result = sync_once(real_lake, target, SNAPSHOT_LSN, today=TODAY)
    assert result.bulk_loaded["fact_sales_order"] == 11_187 + ORDERS
    assert len(result.slices) >= -(-(11_187 + ORDERS) // 2_500)  # a transaction per piece at least
    assert_same_warehouse(dump_warehouse(target), reference)


def test_a_snapshot_and_the_changes_streamed_after_it_in_one_slice(
    streamed, streamed_lake, open_warehouse, monkeypatch
):
    reference = _general(streamed_lake, open_warehouse("general"), streamed.final_lsn, monkeypatch, slice_events=20)
    original, mixed = steps_module.apply_changes, []

    def watched(target, changes, today, result, returning, parts=None):
        mixed.extend(source for source in parts or {} if source in changes)
        return original(target, changes, today, result, returning, parts)

    monkeypatch.setattr(steps_module, "apply_changes", watched)
    target = open_warehouse("bulk")
    result = sync_once(streamed_lake, target, streamed.final_lsn, today=TODAY, slice_events=20)
    assert set(result.bulk_loaded) == FACT_TABLES
    assert result.events == len(streamed.source.events)
    assert {"sales_order", "payment"} <= set(mixed)  # loaded in bulk, then their changes applied
    assert_same_warehouse(dump_warehouse(target), reference)


def test_a_warehouse_holding_rows_of_a_table_takes_the_general_path(streamed, open_warehouse, tmp_path):
    rows = _copy_rows(streamed.source)["sales_order"]
    again_at = streamed.final_lsn + 0x1000  # the table read again, as a re-read does
    again = [
        ChangeEvent(SCHEMAS["sales_order"], Op.SNAPSHOT, again_at, seq, None, None, {"sales_order_id": key}, row)
        for seq, (key, row) in enumerate(rows.items())
    ]
    lake = write_lake(tmp_path / "lake", streamed.source.events + again)
    target = open_warehouse("bulk")
    first = sync_once(lake, target, streamed.final_lsn, today=TODAY, slice_events=20)
    assert set(first.bulk_loaded) == FACT_TABLES
    later = sync_once(lake, target, again_at, today=TODAY, slice_events=1)
    assert later.bulk_loaded == {} and later.events == len(again)


def _killed_sync(lake, warehouse: str, upto: int, slice_events: int) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOTES_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    child = Path(__file__).resolve().parents[1] / "sync_kill_child.py"
    done = subprocess.run(
        [sys.executable, str(child), str(lake), warehouse, str(upto), str(slice_events)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # nosec B603 # fixed argv
    return done.returncode


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_a_sync_killed_in_the_middle_of_a_bulk_load_restarts_exactly(
    engine, streamed, streamed_lake, tmp_path, request, monkeypatch
):
    if engine == "duckdb":
        warehouse, reference_at = str(tmp_path / "killed.duckdb"), str(tmp_path / "general.duckdb")
        opener = DuckDBTarget
    else:
        warehouse = request.getfixturevalue("new_database")()
        reference_at = None
        opener = PostgresTarget
    returncode = _killed_sync(streamed_lake.root, warehouse, streamed.final_lsn, 20)
    assert returncode == -signal.SIGKILL
    target = opener(warehouse)
    try:
        result = sync_once(streamed_lake, target, streamed.final_lsn, today=TODAY, slice_events=20)
        assert set(result.bulk_loaded) == FACT_TABLES  # the killed load left nothing behind
        assert dangling_references(target) == {} and duplicate_current_rows(target) == {}
        tables = dump_warehouse(target)
    finally:
        target.close()
    reference = DuckDBTarget(reference_at) if reference_at else DuckDBTarget()
    try:
        expected = _general(streamed_lake, reference, streamed.final_lsn, monkeypatch, slice_events=20)
    finally:
        reference.close()
    assert_same_warehouse(tables, expected)


# -- a fact row that points at a dimension row that is not there -------------------------------

PLANTED_ORDER = "990001"


def _planted(event: ChangeEvent, op: Op, lsn: int, seq: int) -> ChangeEvent:
    """A copy of the sales order `event` as a new order of staff 9999, whom no source row has."""
    row = dict(event.after or {}, sales_order_id=PLANTED_ORDER, staff_id="9999")
    key = {"sales_order_id": PLANTED_ORDER}
    commit_ts = event.commit_ts if op != Op.SNAPSHOT else None
    return ChangeEvent(event.schema, op, lsn, seq, None if op == Op.SNAPSHOT else 1, commit_ts, key, row)


@pytest.mark.parametrize("way", ["bulk", "general", "streamed"])
def test_a_fact_row_of_a_missing_staff_fails_its_slice_and_commits_nothing(
    streamed, open_warehouse, tmp_path, monkeypatch, way
):
    """Both engines refuse it (PostgreSQL by its declared key, DuckDB by the sync's own check):
    the slice's transaction rolls back, so the warehouse keeps what it had and the checkpoint
    stays where it was; nothing of the slice is half there."""
    snapshot = [e for e in streamed.source.events if e.op == Op.SNAPSHOT]
    snapshot_lsn = snapshot[0].lsn
    assert {e.lsn for e in snapshot} == {snapshot_lsn}
    order = next(e for e in snapshot if e.table == "public.sales_order")
    if way == "streamed":
        planted = _planted(order, Op.INSERT, snapshot_lsn + 1_000, 0)
    else:
        planted = _planted(order, Op.SNAPSHOT, snapshot_lsn, max(e.seq for e in snapshot) + 1)
    lake = write_lake(tmp_path / "lake", snapshot + [planted])
    target = open_warehouse("planted")
    before = None
    if way == "streamed":
        sync_once(lake, target, snapshot_lsn, today=TODAY)
        before = dump_warehouse(target)
    loaded = _spy(monkeypatch, bulk_module, "load_facts")
    with monkeypatch.context() as patch:
        patch.setattr(bulk_module, "BULK_LOADS", way == "bulk")
        with pytest.raises(Exception, match=r"(?i)foreign key") as raised:
            sync_once(lake, target, planted.lsn, today=TODAY)
    assert bool(loaded) == (way == "bulk")
    assert "staff" in str(raised.value)
    assert _declared_foreign_keys(target) == _expected_foreign_keys(target)  # a bulk piece's drop rolled back too
    after = dump_warehouse(target)
    if before is None:
        assert {name: frame.height for name, frame in after.items() if frame.height} == {"_sync_checkpoint": 1}
        assert after["_sync_checkpoint"]["lsn"].to_list() == [0]
    else:
        assert_same_warehouse(after, before)


def _spy(monkeypatch, module, name: str) -> list:
    """Record each call of `module.name` (its arguments) and let it run."""
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def _declared_foreign_keys(target) -> dict[str, int]:
    """`{fact table: foreign keys declared}` as the engine's catalog has them."""
    if isinstance(target, DuckDBTarget):
        found = target.query(
            "SELECT table_name AS t, count(*) AS n FROM duckdb_constraints() WHERE constraint_type = 'FOREIGN KEY' GROUP BY 1"
        )
    else:
        found = target.query(
            "SELECT conrelid::regclass::text AS t, count(*) AS n FROM pg_constraint WHERE contype = 'f' GROUP BY 1"
        )
    return {t: int(n) for t, n in found.iter_rows()}


def _expected_foreign_keys(target) -> dict[str, int]:
    """PostgreSQL declares every fact's foreign keys, DuckDB none (`warehouse_sync.ddl`)."""
    if isinstance(target, DuckDBTarget):
        return {}
    return {spec.table.name: len(spec.table.foreign_keys) for spec in FACT_SPECS}


def test_a_bulk_load_into_postgres_checks_the_keys_once_and_leaves_them_declared(
    real_lake, open_warehouse, monkeypatch
):
    """The bulk piece drops the fact table's keys, inserts, and declares them again (one check
    of the table per key instead of a trigger per row and key); afterwards the catalog holds
    exactly the keys `ddl` declares, on both engines."""
    target = open_warehouse("bulk")
    statements = []
    real_execute = type(target).execute

    def execute(self, statement: str) -> None:
        statements.append(statement)
        real_execute(self, statement)

    monkeypatch.setattr(type(target), "execute", execute)
    result = sync_once(real_lake, target, SNAPSHOT_LSN, today=TODAY)
    assert set(result.bulk_loaded) == FACT_TABLES
    redeclared = [s for s in statements if "ADD CONSTRAINT" in s and "FOREIGN KEY" in s]
    dropped = [s for s in statements if "DROP CONSTRAINT" in s]
    expected = _expected_foreign_keys(target)
    assert len(redeclared) == len(dropped) == sum(expected.values())
    assert _declared_foreign_keys(target) == expected
    assert dangling_references(target) == {}
