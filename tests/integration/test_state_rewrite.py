"""The state merge by rewriting (lake.rewrite): it reads and rewrites only the files that hold
its keys, one at a time, ends exact, and two writers racing on one state conflict instead of
both inserting a key. Counted, never timed: the memory bound is that a merge holds one file."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import CommitProperties
from deltalake.exceptions import CommitFailedError

import lake.rewrite
from lake import LakeWriter
from lake.delta_io import SMALL_FILE_ROWS
from lake.state import StateTable, state_writer
from tests.lake_fixtures import SALES_ORDER, Source, expected_state, lake_state, sales_order_row

TABLE, KEYS = SALES_ORDER.table, SALES_ORDER.key_names
ROWS = SMALL_FILE_ROWS + 10
"""Rows of each insert batch: more than a few (merged at once), one state file each."""


def _files(writer: LakeWriter) -> set[str]:
    state = StateTable(writer.layout, TABLE)
    return set(state.refresh().get_add_actions(flatten=True).column("path").to_pylist())


def _four_files(tmp_path) -> tuple[LakeWriter, Source, list]:
    """A state of four merges of new keys: four files of narrow key ranges (0, 1000, 2000, 3000 on)."""
    writer, src, events = LakeWriter(tmp_path / "lake"), Source(), []
    for first in (0, 1000, 2000, 3000):
        with src.transaction() as tx:
            for order in range(first, first + ROWS):
                tx.insert(SALES_ORDER, sales_order_row(order))
        events += tx.events
        writer.write_batch("s1", tx.events, markers=[tx.lsn])
    return writer, src, events


def _units_read(monkeypatch) -> list[int]:
    """The rows of each unit `lake.rewrite.apply` is given, from now on."""
    read: list[int] = []
    apply = lake.rewrite.apply

    def counted(rows, *args, **kwargs):
        read.append(rows.num_rows)
        return apply(rows, *args, **kwargs)

    monkeypatch.setattr(lake.rewrite, "apply", counted)
    return read


def test_a_merge_reads_and_rewrites_only_the_file_that_holds_its_keys_and_ends_exact(tmp_path, monkeypatch):
    writer, src, events = _four_files(tmp_path)
    before = _files(writer)
    assert len(before) == 4

    read = _units_read(monkeypatch)
    with src.transaction() as tx:
        for order in range(1000, 1000 + ROWS):  # every order of the second file, once more
            tx.update(SALES_ORDER, sales_order_row(order, version=1))
    events += tx.events
    writer.write_batch("s1", tx.events, markers=[tx.lsn])

    assert read == [ROWS], "one file read: the one whose key range holds the updated orders"
    after = _files(writer)
    assert len(before - after) == 1 and len(after - before) == 1, "that file alone is rewritten"
    assert lake_state(writer.layout, TABLE, KEYS) == expected_state(events, TABLE)


def _new_order(state: StateTable, order: int) -> pa.Table:
    """A merge's source row (state columns, `_unchanged`, `_rebuilt`) of a key the state lacks."""
    row = state.delta.to_pyarrow_table().slice(0, 1)
    row = row.set_column(row.schema.get_field_index("sales_order_id"), "sales_order_id", pa.array([order], pa.int64()))
    row = row.append_column("_unchanged", pa.array([[]], pa.list_(pa.string())))
    return row.append_column("_rebuilt", pa.array([False]))


def test_two_writers_inserting_the_same_new_key_conflict_instead_of_both_inserting_it(tmp_path):
    writer, src = LakeWriter(tmp_path / "lake"), Source()
    with src.transaction() as tx:
        for order in range(ROWS):
            tx.insert(SALES_ORDER, sales_order_row(order))
    writer.write_batch("s1", tx.events, markers=[tx.lsn])
    first, second = StateTable(writer.layout, TABLE), StateTable(writer.layout, TABLE)
    first.refresh(), second.refresh()  # both at the same version, as two writers racing
    source = _new_order(first, 99_999)

    def merge(state: StateTable) -> bool:
        properties = CommitProperties(app_transactions=[state_writer()])
        return lake.rewrite.rewrite_merge(writer.layout, state.uri, state.delta, source, list(KEYS), None, properties)

    assert merge(first)
    with pytest.raises(CommitFailedError):  # the loser runs again (retry_on_conflict) and finds the key
        merge(second)
    rows = StateTable(writer.layout, TABLE).refresh().to_pyarrow_table()
    assert rows.column("sales_order_id").to_pylist().count(99_999) == 1


def test_neighbouring_small_files_are_read_and_written_back_as_one(tmp_path, monkeypatch):
    """Files next to each other in key order, under GROUP_BYTES together, are one unit: one
    pass over their rows, one file back; a file between them that holds no merged key is
    left alone (so is every other)."""
    writer, src, events = _four_files(tmp_path)
    before = _files(writer)
    read = _units_read(monkeypatch)
    with src.transaction() as tx:
        for order in (1, 1001, 3001):  # the first two files are neighbours, the fourth is not
            tx.update(SALES_ORDER, sales_order_row(order, version=1))
    events += tx.events
    writer.write_batch("s1", tx.events, markers=[tx.lsn])

    assert sorted(read) == [ROWS, 2 * ROWS], "the first two files in one pass, the fourth alone"
    after = _files(writer)
    assert len(before - after) == 3 and len(after - before) == 2
    assert lake_state(writer.layout, TABLE, KEYS) == expected_state(events, TABLE)
