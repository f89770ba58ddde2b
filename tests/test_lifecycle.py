"""The reader's snapshot lifecycle as pure transitions (cdc_reader/lifecycle.py), and its
state files: every phase round-trips, and files written before the phase existed load."""

from __future__ import annotations

import json

import pytest

from cdc_reader import lifecycle as lc
from cdc_reader.reader import FileStateStore, ReaderState


def test_a_bulk_snapshot_goes_from_no_slot_to_streaming():
    phase = lc.note_slot(lc.NoSlot())
    assert phase == lc.SlotPending()
    phase = lc.slot_created(phase, 100, bulk=True, tables=("public.a", "public.b"), chunks=(3, 1), chunk_pages=64)
    assert phase == lc.Snapshotting(100, True, ("public.a", "public.b"), (3, 1), 64)
    assert not lc.snapshot_handed_on(phase) and not lc.snapshot_finished(phase)
    phase = lc.written(phase, 100)
    assert phase == lc.Published(100, 100) and lc.snapshot_handed_on(phase)
    assert lc.durable(phase, 99) == phase  # not yet in the lake watermark
    assert lc.durable(phase, 100) == lc.Streaming(100)
    assert lc.snapshot_finished(lc.Streaming(100))


def test_a_cut_off_bulk_snapshot_resumes_and_counts_only_once_its_later_chunks_are_durable():
    cut = lc.Snapshotting(100, True, ("public.a",), (4,), 64)
    assert lc.cut_off(cut, ("a",)) == cut  # resumed chunk by chunk, not read again
    phase = lc.written(cut, durable_at=250)  # the chunks it lacked, read at a later LSN
    assert phase == lc.Published(100, 250)
    assert lc.durable(phase, 249) == phase
    assert lc.durable(phase, 250) == lc.Streaming(100)


def test_a_cut_off_snapshot_through_the_sink_is_made_up_for_by_re_reads():
    cut = lc.Snapshotting(100, False)
    phase = lc.cut_off(cut, ("a", "b"))
    assert phase == lc.Recovering(100, ("a", "b"))
    assert lc.cut_off(phase, ("a", "b", "c")) == lc.Recovering(100, ("a", "b", "c"))  # killed again: starts over
    assert lc.durable(phase, 10**9, needed=None) == phase  # re-reads not all handed on yet
    assert lc.durable(phase, 299, needed=300) == phase
    assert lc.durable(phase, 300, needed=300) == lc.Streaming(100)


def test_a_slot_never_created_a_reset_and_an_adopted_slot():
    assert lc.slot_missing(lc.SlotPending(replaces_lost_slot=True)) == lc.NoSlot(True)
    assert lc.reset(lc.Streaming(5), slot_dropped=True) == lc.NoSlot(replaces_lost_slot=True)
    assert lc.reset(lc.Streaming(5), slot_dropped=False) == lc.Streaming(5)
    replacing = lc.slot_created(lc.note_slot(lc.NoSlot(True)), 7, bulk=False)
    assert replacing.replaces_lost_slot and lc.durable(lc.written(replacing), 7) == lc.Streaming(7, True)
    assert lc.adopt() == lc.Streaming() and lc.snapshot_finished(lc.adopt())


@pytest.mark.parametrize("wrong", [
    lambda: lc.note_slot(lc.Streaming(1)),
    lambda: lc.slot_created(lc.NoSlot(), 1, bulk=True),
    lambda: lc.written(lc.Published(1, 1)),
    lambda: lc.cut_off(lc.Published(1, 1), ()),
    lambda: lc.slot_missing(lc.Snapshotting(1)),
])
def test_transitions_the_lifecycle_does_not_have_are_refused(wrong):
    with pytest.raises(lc.TransitionError):
        wrong()


@pytest.mark.parametrize("phase", [
    lc.NoSlot(True), lc.SlotPending(), lc.Snapshotting(9, True, ("public.a",), (2,), 8), lc.Recovering(9, ("a",)),
    lc.Published(9, 12), lc.Streaming(9), lc.Streaming(),
])
def test_every_phase_round_trips_through_the_state_file(tmp_path, phase):
    store = FileStateStore(tmp_path / "state.json")
    store.save(ReaderState(slot="s", phase=phase, schema_rereads=["a"], column_types={"t": {"c": "integer"}}))
    loaded = store.load()
    assert (loaded.phase, loaded.slot, loaded.schema_rereads, loaded.column_types) == \
        (phase, "s", ["a"], {"t": {"c": "integer"}})


@pytest.mark.parametrize("flags, phase", [
    ({}, lc.NoSlot()),
    ({"slot": "s", "replaces_lost_slot": True}, lc.SlotPending(True)),
    ({"slot": "s", "snapshot_done": True}, lc.Streaming()),
    ({"slot": "s", "snapshot_lsn": 42}, lc.Snapshotting(42)),
    ({"slot": "s", "snapshot_lsn": 42, "rereads": ["a"]}, lc.Recovering(42, ("a",))),
    ({"slot": "s", "snapshot_lsn": 42, "snapshot_published": True}, lc.Published(42, 42)),
    ({"slot": "s", "snapshot_lsn": 42, "snapshot_published": True, "snapshot_done": True}, lc.Streaming(42)),
])
def test_state_files_written_before_the_phase_load_as_the_phase_they_describe(tmp_path, flags, phase):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema_rereads": [], "column_types": {}, **flags}))
    state = FileStateStore(path).load()
    assert state.phase == phase
    saved = json.loads((FileStateStore(path).save(state), path.read_text())[1])
    for flag in ("snapshot_lsn", "snapshot_published", "snapshot_done", "rereads", "replaces_lost_slot"):
        if flag in flags:  # older tools reading the file still find the flags they know
            assert saved[flag] == flags[flag]
