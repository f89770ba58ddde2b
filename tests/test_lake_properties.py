"""Properties of the lake beyond single scenarios: any order and any repetition of a shard's
events gives the same lake; shards and maintenance racing on one table lose nothing; a process
that reads the lake exits cleanly. On a local folder (S3 is covered by tests/test_lake.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake import LakeLayout, LakeWriter
from lake.maintenance import compact
from tests.lake_fixtures import (
    SALES_ORDER,
    TODAY,
    Source,
    expected_state,
    lake_state,
    moto_s3,  # noqa: F401  (the session's S3 server, a fixture)
    sales_order_row,
    table_snapshot,
)

SO, SO_KEY = SALES_ORDER.table, SALES_ORDER.key_names
REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="module")
def clean_lake(tmp_path_factory):
    layout = LakeLayout(tmp_path_factory.mktemp("clean"))
    write(layout, [EVENTS[:4], EVENTS[4:10], EVENTS[10:]])
    assert lake_state(layout, SO, SO_KEY) == expected_state(EVENTS, SO)
    return {kind: table_snapshot(layout, kind, SO) for kind in ("changes", "tables")}


@st.composite
def deliveries(draw):
    """The shard's events permuted, some repeated, cut into batches."""
    n = len(EVENTS)
    order = draw(st.permutations(range(n)))
    repeats = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n)), max_size=6))
    stream = [EVENTS[i] for i in order]
    for event_index, position in repeats:
        stream.insert(min(position, len(stream)), EVENTS[event_index])
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream) - 1), max_size=4))))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=deliveries())
def test_any_order_and_repetition_gives_the_clean_lake(clean_lake, batches):
    with tempfile.TemporaryDirectory() as root:
        layout = LakeLayout(root)
        write(layout, batches)
        assert lake_state(layout, SO, SO_KEY) == expected_state(EVENTS, SO)
        for kind in ("changes", "tables"):
            assert table_snapshot(layout, kind, SO) == clean_lake[kind], kind


def test_two_shards_and_compaction_racing_on_one_table(tmp_path):
    src = Source()
    per_shard: dict[str, list[list]] = {"a": [], "b": []}
    events = []
    for round_ in range(6):
        with src.transaction() as tx:
            for order_id in range(1, 41):
                if round_ == 0:
                    tx.insert(SALES_ORDER, sales_order_row(order_id))
                elif (order_id + round_) % 3 == 0:
                    tx.update(SALES_ORDER, sales_order_row(order_id, round_))
        events += tx.events
        for shard in per_shard:  # the partition key sends a row's events to one shard
            per_shard[shard].append([e for e in tx.events if (int(e.key["sales_order_id"]) % 2 == 0) == (shard == "a")])
    layout = LakeLayout(tmp_path / "lake")
    errors: list[BaseException] = []
    done = threading.Event()

    def shard_worker(shard):
        try:
            write(layout, per_shard[shard], shard)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    def maintenance_worker():
        try:
            while not done.is_set():
                compact(layout, layout.state_uri(SO))
                compact(layout, layout.changes_uri(SO))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    write(layout, [[]])
    threads = [threading.Thread(target=shard_worker, args=(s,)) for s in per_shard]
    maintenance = threading.Thread(target=maintenance_worker)
    for thread in threads + [maintenance]:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    maintenance.join(120)
    assert not errors, errors
    assert lake_state(layout, SO, SO_KEY) == expected_state(events, SO)
    assert len(table_snapshot(layout, "changes", SO)) == len(events)


@pytest.mark.parametrize("storage", ["folder", "s3"])
def test_a_process_reading_the_lake_exits_cleanly(storage, tmp_path, request):
    """deltalake's pyarrow scans can abort a process at exit (code 134); the lake's readers
    avoid them, so a CLI built on them exits with its own code."""
    env, options = dict(os.environ), None
    if storage == "s3":
        s3 = request.getfixturevalue("moto_s3")
        root, options = f"s3://{s3.BUCKET}/exit-{os.getpid()}", s3.storage_options
        env.update(options)  # the child finds S3 through the standard AWS variables
    else:
        root = str(tmp_path / "lake")
    write(LakeLayout(root, options), [EVENTS])
    script = textwrap.dedent(f"""
        import duckdb
        from lake import LakeLayout
        from lake import timetravel as tt
        layout = LakeLayout({root!r})
        rows = tt.current_state(layout, {SO!r}).num_rows
        tt.state_as_of_lsn(layout, {SO!r}, 10**12)
        con = duckdb.connect()
        tt.register_duckdb(con, layout, {SO!r}, "changes")
        n = con.sql("SELECT count(*) FROM sales_order").fetchall()[0][0]
        print(rows, n)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(expected_state(EVENTS, SO))), str(len(EVENTS))]
