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


def test_watermarks_wait_for_what_the_phase_still_lacks():
    resumed = lc.written(lc.Snapshotting(100, True, ("public.a",), (4,), 64), durable_at=250)
    assert not lc.watermark_allowed(resumed, 249) and lc.watermark_allowed(resumed, 250)
    assert lc.watermark_allowed(lc.Published(100, 100), 100)
    recovering = lc.Recovering(100, ("a",))
    assert not lc.watermark_allowed(recovering, 10**9, rereads_handed_over=None)
    assert not lc.watermark_allowed(recovering, 299, rereads_handed_over=300)
    assert lc.watermark_allowed(recovering, 300, rereads_handed_over=300)
    assert lc.watermark_allowed(lc.Streaming(100), 100)


def test_a_re_read_goes_from_queued_to_gone_once_durable_past_where_it_was_handed_on():
    rereads = lc.queue((), "a", lc.RESNAPSHOT)
    assert lc.queue(rereads, "a", lc.TYPE_CHANGE) == rereads  # queued once
    queued = lc.next_queued(rereads)
    rereads, reading = lc.start(rereads, queued)
    assert reading == lc.Reread("a", lc.RESNAPSHOT, lc.READING) and lc.next_queued(rereads) is None
    rereads = lc.handed_on(rereads, reading, after=500)
    assert rereads == (lc.Reread("a", lc.RESNAPSHOT, lc.HANDED_ON, 500),)
    assert lc.settle(rereads, 500) == rereads  # its rows go out in the transaction after 500
    assert lc.settle(rereads, 501) == ()


def test_a_type_change_during_a_re_read_reads_the_table_once_more_after_it():
    rereads, reading = lc.start(lc.queue((), "a", lc.TYPE_CHANGE), lc.Reread("a", lc.TYPE_CHANGE))
    rereads = lc.queue(rereads, "a", lc.TYPE_CHANGE)
    assert [r.step for r in rereads] == [lc.READING, lc.QUEUED]
    rereads = lc.handed_on(rereads, reading, 10)
    assert lc.settle(rereads, 11) == (lc.Reread("a", lc.TYPE_CHANGE),)


def test_reconnects_read_again_what_was_being_read_and_restarts_read_everything_again():
    rereads = lc.queue(lc.queue(lc.queue((), "a", lc.RECOVERY), "b", lc.RECOVERY), "c", lc.RECOVERY)
    rereads, a = lc.start(rereads, lc.next_queued(rereads))
    rereads = lc.handed_on(rereads, a, 7)
    rereads, b = lc.start(rereads, lc.next_queued(rereads))
    assert lc.interrupted(rereads) == (
        lc.Reread("b", lc.RECOVERY),
        lc.Reread("a", lc.RECOVERY, lc.HANDED_ON, 7),
        lc.Reread("c", lc.RECOVERY),
    )
    assert lc.failed(rereads, b)[0] == lc.Reread("b", lc.RECOVERY)
    # Rows handed on may have died with the process: every table is read again.
    assert lc.restarted(rereads) == tuple(lc.Reread(t, lc.RECOVERY) for t in "abc")


def test_a_recovery_ends_once_every_recovery_re_read_was_handed_on_and_is_durable():
    phase = lc.Recovering(100, ("a", "b"))
    rereads = (
        lc.Reread("a", lc.RECOVERY, lc.HANDED_ON, 300),
        lc.Reread("b", lc.RECOVERY, lc.READING),
        lc.Reread("c", lc.RESNAPSHOT),
    )
    assert lc.recovery_needed(rereads) is None
    rereads = (
        lc.Reread("a", lc.RECOVERY, lc.HANDED_ON, 300),
        lc.Reread("b", lc.RECOVERY, lc.HANDED_ON, 200),
        lc.Reread("c", lc.RESNAPSHOT),
    )
    assert lc.recovery_needed(rereads) == 301  # a --resnapshot does not hold the snapshot back
    assert lc.durable(phase, 300, lc.recovery_needed(rereads)) == phase
    assert lc.durable(phase, 301, lc.recovery_needed(rereads)) == lc.Streaming(100)
    settled = lc.settle(rereads, 301)
    assert lc.recovery_needed(settled) == 0 and lc.durable(phase, 301, 0) == lc.Streaming(100)


@pytest.mark.parametrize(
    "wrong",
    [
        lambda: lc.start((lc.Reread("a", lc.RESNAPSHOT, lc.READING),), lc.Reread("a", lc.RESNAPSHOT, lc.READING)),
        lambda: lc.handed_on((lc.Reread("a", lc.RESNAPSHOT),), lc.Reread("a", lc.RESNAPSHOT), 1),
        lambda: lc.failed((), lc.Reread("a", lc.RESNAPSHOT, lc.READING)),
        lambda: lc.planned(lc.Snapshotting(1, False), ("public.a",), (1,), 8),
    ],
)
def test_re_read_transitions_the_lifecycle_does_not_have_are_refused(wrong):
    with pytest.raises(lc.TransitionError):
        wrong()


@pytest.mark.parametrize(
    "wrong",
    [
        lambda: lc.note_slot(lc.Streaming(1)),
        lambda: lc.slot_created(lc.NoSlot(), 1, bulk=True),
        lambda: lc.written(lc.Published(1, 1)),
        lambda: lc.cut_off(lc.Published(1, 1), ()),
        lambda: lc.slot_missing(lc.Snapshotting(1)),
    ],
)
def test_transitions_the_lifecycle_does_not_have_are_refused(wrong):
    with pytest.raises(lc.TransitionError):
        wrong()


@pytest.mark.parametrize(
    "phase",
    [
        lc.NoSlot(True),
        lc.SlotPending(),
        lc.Snapshotting(9, True, ("public.a",), (2,), 8),
        lc.Recovering(9, ("a",)),
        lc.Published(9, 12),
        lc.Streaming(9),
        lc.Streaming(),
    ],
)
def test_every_phase_round_trips_through_the_state_file(tmp_path, phase):
    store = FileStateStore(tmp_path / "state.json")
    store.save(ReaderState(slot="s", phase=phase, schema_rereads=["a"], column_types={"t": {"c": "integer"}}))
    loaded = store.load()
    assert (loaded.phase, loaded.slot, loaded.schema_rereads, loaded.column_types) == (
        phase,
        "s",
        ["a"],
        {"t": {"c": "integer"}},
    )


@pytest.mark.parametrize(
    "flags, phase",
    [
        ({}, lc.NoSlot()),
        ({"slot": "s", "replaces_lost_slot": True}, lc.SlotPending(True)),
        ({"slot": "s", "snapshot_done": True}, lc.Streaming()),
        ({"slot": "s", "snapshot_lsn": 42}, lc.Snapshotting(42)),
        ({"slot": "s", "snapshot_lsn": 42, "rereads": ["a"]}, lc.Recovering(42, ("a",))),
        ({"slot": "s", "snapshot_lsn": 42, "snapshot_published": True}, lc.Published(42, 42)),
        ({"slot": "s", "snapshot_lsn": 42, "snapshot_published": True, "snapshot_done": True}, lc.Streaming(42)),
    ],
)
def test_state_files_written_before_the_phase_load_as_the_phase_they_describe(tmp_path, flags, phase):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema_rereads": [], "column_types": {}, **flags}))
    state = FileStateStore(path).load()
    assert state.phase == phase
    saved = json.loads((FileStateStore(path).save(state), path.read_text())[1])
    for flag in ("snapshot_lsn", "snapshot_published", "snapshot_done", "rereads", "replaces_lost_slot"):
        if flag in flags:  # older tools reading the file still find the flags they know
            assert saved[flag] == flags[flag]


def test_re_reads_round_trip_and_older_files_migrate_them(tmp_path):
    path = tmp_path / "state.json"
    rereads = (lc.Reread("a", lc.RESNAPSHOT, lc.HANDED_ON, 9), lc.Reread("b", lc.TYPE_CHANGE, lc.READING))
    FileStateStore(path).save(ReaderState("s", lc.Streaming(5), rereads))
    saved = json.loads(path.read_text())
    assert FileStateStore(path).load().table_rereads == rereads
    assert saved["schema_rereads"] == ["b"]  # still written, for tools that read it
    # A phase but no table_rereads (the form before them): type-change re-reads from
    # schema_rereads, and a recovery re-read of every table of a Recovering phase.
    path.write_text(
        json.dumps(
            {
                "slot": "s",
                "phase": lc.to_json(lc.Recovering(42, ("a", "b"))),
                "schema_rereads": ["c"],
                "column_types": {},
            }
        )
    )
    assert FileStateStore(path).load().table_rereads == (
        lc.Reread("a", lc.RECOVERY),
        lc.Reread("b", lc.RECOVERY),
        lc.Reread("c", lc.TYPE_CHANGE),
    )
    # Flags only (the form before the phase).
    path.write_text(json.dumps({"slot": "s", "snapshot_lsn": 42, "rereads": ["a"], "schema_rereads": ["c"]}))
    loaded = FileStateStore(path).load()
    assert loaded.phase == lc.Recovering(42, ("a",))
    assert loaded.table_rereads == (lc.Reread("a", lc.RECOVERY), lc.Reread("c", lc.TYPE_CHANGE))
