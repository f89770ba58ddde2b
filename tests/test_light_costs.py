"""What the running pipeline pays at light load, counted rather than timed: how often a
maintenance round opens (replays the log of) each lake table, and which tables it leaves out."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

from lake import LakeLayout, LakeWriter
from lake.maintenance import COMPACT_FROM_FILES, SettledTables, lake_uris, maintain
from tests.lake_fixtures import PAYMENT, SALES_ORDER, Source, lake_state, payment_row, sales_order_row


def _light_lake(root) -> LakeLayout:
    """Two tables, each a trickle of small batches: small files to compact, tombstones to keep."""
    src, writer = Source(), LakeWriter(root)
    for n in range(COMPACT_FROM_FILES + 2):
        with src.transaction() as tx:
            tx.insert(SALES_ORDER, sales_order_row(n))
            tx.insert(PAYMENT, payment_row(n))
        writer.write_batch("s1", tx.events, markers=[tx.lsn])
    return writer.layout


def test_a_maintenance_round_opens_each_table_once_and_keeps_the_data(tmp_path, monkeypatch):
    layout = _light_lake(tmp_path / "lake")
    before = lake_state(layout, SALES_ORDER.table, SALES_ORDER.key_names)
    opened: Counter[str] = Counter()
    open_table = LakeLayout.open

    def counting_open(self, uri, version=None):
        opened[uri] += 1
        return open_table(self, uri, version)

    monkeypatch.setattr(LakeLayout, "open", counting_open)
    report = maintain(layout, timedelta(hours=1), compact_from=COMPACT_FROM_FILES)
    monkeypatch.undo()
    assert {t.uri for t in report} == set(opened), "every table maintained, none opened twice"
    assert any(t.files_removed for t in report), "the small files were compacted"
    assert max(opened.values()) == 1, opened.most_common(3)
    assert lake_state(layout, SALES_ORDER.table, SALES_ORDER.key_names) == before


def test_a_running_pipelines_round_leaves_out_tables_settled_since_a_retention(tmp_path):
    layout = _light_lake(tmp_path / "lake")
    retention = timedelta(seconds=2)
    settled = SettledTables(retention.total_seconds())
    uris = lake_uris(layout)

    def round_now() -> list[str]:
        due = settled.due(uris, layout.has_commit)
        report = maintain(layout, retention, due, compact_from=COMPACT_FROM_FILES)
        sizes = settled.after_round(time.monotonic(), report, uris)
        assert {s.uri for s in sizes} == set(uris), "the cadence still sees every table's size"
        return due

    assert round_now() == uris  # compacts: the small files' removal is kept for the retention
    assert round_now() == uris  # within the retention of the last change: still to vacuum
    time.sleep(retention.total_seconds() + 1.2)
    assert round_now() == uris  # a retention after it: this round vacuums the rest (a commit of its own)
    time.sleep(retention.total_seconds() + 1.2)
    assert round_now() == uris  # a retention after that: nothing left to do, settled
    assert round_now() == []
    # what a settled table would have had done to it: nothing
    again = maintain(layout, retention, uris, compact_from=COMPACT_FROM_FILES)
    assert not any(t.files_removed or t.vacuumed for t in again), again
    # a new commit brings its tables back (the change log, the state and the progress)
    src = Source(start_lsn=0x9000000)
    with src.transaction() as tx:
        tx.insert(SALES_ORDER, sales_order_row(999))
    LakeWriter(layout).write_batch("s1", tx.events, markers=[tx.lsn])
    assert set(round_now()) == {layout.changes_uri(SALES_ORDER.table), layout.state_uri(SALES_ORDER.table),
                                layout.uri("_progress")}
