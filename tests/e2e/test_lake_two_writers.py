"""Two writers on one shard (a misconfiguration, an overlapping Lambda retry, maintenance
racing a writer): two OS processes write the same batches into the same lake at the same
moment, the first one into tables that do not exist yet. Every commit, the first included,
must be idempotent: the change log holds each (lsn, seq) exactly once."""

from __future__ import annotations

import multiprocessing
from collections import Counter

from lake.changelog import ChangeLog
from lake.layout import PROGRESS, LakeLayout
from lake.progress import Progress
from tests.lake_fixtures import SALES_ORDER, expected_state, lake_state

ROUNDS = 3
SHARD = "shardId-000000000000"


def _batches():
    from tests.lake_fixtures import Source, sales_order_row

    source = Source()
    first = source.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 31)])
    second = []
    for n in range(10):
        with source.transaction() as tx:
            tx.update(SALES_ORDER, sales_order_row(1 + n, version=n + 1))
            tx.insert(SALES_ORDER, sales_order_row(100 + n))
        second += tx.events
    return [first, first[20:] + second]


def _writer(roots: list[str], barrier, errors) -> None:
    """One processor: for every lake, wait for the other one, then write the same batches."""
    from lake.writer import LakeWriter
    from tests.lake_fixtures import TODAY

    try:
        for root in roots:
            writer = LakeWriter(root, today=lambda: TODAY)
            for batch in _batches():
                barrier.wait(60)
                writer.write_batch(SHARD, batch, markers=[max(e.lsn for e in batch)])
    except BaseException as error:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(error).__name__}: {error}")
        barrier.abort()


def test_two_processes_writing_the_same_batches_log_each_event_once(tmp_path):
    roots = [str(tmp_path / f"lake{n}") for n in range(ROUNDS)]
    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_writer, args=(roots, barrier, errors)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert errors.empty(), errors.get()
    assert [worker.exitcode for worker in workers] == [0, 0]

    events = [e for batch in _batches() for e in batch]
    wanted = {e.event_id for e in events}
    for root in roots:
        layout = LakeLayout(root)
        log = ChangeLog(layout, SALES_ORDER.table)
        log.refresh()
        rows = log.read()
        logged = Counter(zip(rows.column("_lsn").to_pylist(), rows.column("_seq").to_pylist()))
        assert set(logged) == wanted
        assert max(logged.values()) == 1, f"{root}: {sum(logged.values()) - len(logged)} events logged twice"
        assert lake_state(layout, SALES_ORDER.table, SALES_ORDER.key_names) == expected_state(events, SALES_ORDER.table)
        markers = Progress(layout).history()
        assert markers.column("marker_lsn").to_pylist() == sorted({max(e.lsn for e in b) for b in _batches()})
        for uri in (layout.changes_uri(SALES_ORDER.table), layout.state_uri(SALES_ORDER.table), layout.uri(PROGRESS)):
            operations = [commit["operation"] for commit in layout.open(uri).history()]
            assert operations.count("CREATE TABLE") <= 1, f"{uri} was created twice: {operations}"
