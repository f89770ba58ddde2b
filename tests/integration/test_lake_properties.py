"""Properties of the lake beyond single scenarios: any order and any repetition of a shard's
events gives the same lake; shards and maintenance racing on one table lose nothing; a process
that reads the lake exits cleanly. On a local folder (S3 is covered by tests/integration/test_lake.py)."""

from __future__ import annotations

import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake import LakeLayout
from lake.maintenance import compact
from tests.lake_fixtures import SALES_ORDER, Source, expected_state, lake_state, sales_order_row, table_snapshot
from tests.moto_s3 import moto_s3  # noqa: F401  (the session's S3 server, a fixture)
from tests.lake_fixtures import EVENTS, SO, SO_KEY, write


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
