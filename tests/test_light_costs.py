"""What the running pipeline pays at light load, counted rather than timed: how often a
maintenance round opens (replays the log of) each lake table."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from lake import LakeLayout, LakeWriter
from lake.maintenance import COMPACT_FROM_FILES, maintain
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
