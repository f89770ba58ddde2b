"""The reader's first snapshot cut off (killed midway, right after creating its slot, while making
up for it): made up for from the same slot, never silently taken again once the slot is gone;
an older state file still loads."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import psycopg2
import pytest

from cdc_reader.reader import FileStateStore, Reader
from cdc_reader.source_setup import SourceSetupError
from change_events import Op, parse_lsn
from tests.reader_harness import _catch_up, _run_sql
from tests.reader_harness import seeded_source  # noqa: F401  (the `seeded` fixture)
from tests.reader_harness import FAST, apply_events, running_reader, source_state, state_diff
from tests.fakes import MemorySink
from totesys.schema import TABLES
from totesys.simulator import Simulator


class _Killed(Exception):
    """Stands in for kill -9: the reader stops where it is, its state file as it was."""


def _cut_off_snapshot(dsn, sink, state_path, config, table="sales_order", rows=60) -> int:
    """Run a reader whose first snapshot dies once `rows` rows of `table` reached the sink;
    return the snapshot's LSN."""
    seen = []

    def die_midway(event):
        if event.op is Op.SNAPSHOT and event.table == f"public.{table}":
            seen.append(event)
            if len(seen) >= rows:
                sink.on_add = None
                raise _Killed("snapshot cut off")

    sink.on_add = die_midway
    with pytest.raises(_Killed), running_reader(dsn, sink, state_path, config):
        pass
    state = FileStateStore(state_path).load()
    assert state.snapshot_lsn and not state.snapshot_published and not state.snapshot_done
    return state.snapshot_lsn


def _slot_confirmed(dsn) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'totes_cdc'")
        (lsn,) = cur.fetchone()
    conn.close()
    return parse_lsn(lsn)


def _emitted_keys(sink, table) -> list[int]:
    return sorted({int(e.key[f"{table}_id"]) for e in sink.events if e.table == f"public.{table}"})


def _delete_and_update(dsn, ids_gone, ids_changed) -> None:
    _run_sql(
        dsn,
        f"DELETE FROM sales_order WHERE sales_order_id IN ({', '.join(map(str, ids_gone))})",
        "UPDATE sales_order SET units_sold = units_sold + 1000 "
        f"WHERE sales_order_id IN ({', '.join(map(str, ids_changed))})",
    )


def test_a_first_snapshot_cut_off_midway_is_made_up_for_from_the_same_slot(seeded, tmp_path):
    """Part of a cut-off snapshot is already downstream. Rows deleted after it must end
    deleted there: the reader keeps the slot (which streams the deletes) and reads every
    table again, instead of a new snapshot that would simply lack them."""
    sink, state_path = MemorySink(), tmp_path / "state.json"
    config = replace(FAST, snapshot_chunk_rows=25)
    first_lsn = _cut_off_snapshot(seeded, sink, state_path, config)
    emitted = _emitted_keys(sink, "sales_order")
    gone, changed = emitted[:3], emitted[3:6]
    _delete_and_update(seeded, gone, changed)
    with Simulator(seeded, seed=14) as writer:
        writer.run_live(rate=0, events=20)

    with running_reader(seeded, sink, state_path, config) as reader:
        _catch_up(seeded, reader)
    got, want = apply_events(sink.events), source_state(seeded, TABLES)
    assert got == want, state_diff(got, want)
    assert not {(str(g),) for g in gone} & set(got["public.sales_order"])
    # The same slot, its snapshot made whole by reading every table again, and no watermark
    # (which lets the warehouse move on) before every table was read again.
    assert set(reader.reread) == {f"public.{t}" for t in TABLES}
    assert sink.watermarks and min(sink.watermarks) >= max(e.lsn for e in sink.events if e.op is Op.SNAPSHOT)
    state = FileStateStore(state_path).load()
    assert (state.snapshot_lsn, state.snapshot_done, state.rereads) == (first_lsn, True, [])


def test_a_reader_killed_right_after_creating_its_slot_makes_up_the_snapshot_from_it(seeded, tmp_path):
    """Killed between creating the slot and noting its snapshot LSN: the slot is still the
    reader's own, with the whole snapshot to make up for, not one to resume as if done."""
    sink, state_path = MemorySink(), tmp_path / "state.json"

    class DiesOnceTheSlotExists(FileStateStore):
        def save(self, state):
            if state.snapshot_lsn is not None:
                raise _Killed("killed right after CREATE_REPLICATION_SLOT")
            super().save(state)

    with (
        pytest.raises(_Killed),
        running_reader(
            seeded, sink, state_path, FAST, prepare=lambda r: setattr(r, "state", DiesOnceTheSlotExists(state_path))
        ),
    ):
        pass
    slot_lsn = _slot_confirmed(seeded)
    assert not sink.events and FileStateStore(state_path).load().snapshot_lsn is None
    _run_sql(seeded, "DELETE FROM sales_order WHERE sales_order_id IN (1, 2)")

    with running_reader(seeded, sink, state_path, FAST) as reader:
        _catch_up(seeded, reader)
    got, want = apply_events(sink.events), source_state(seeded, TABLES)
    assert got == want, state_diff(got, want)
    assert set(reader.reread) == {f"public.{t}" for t in TABLES}
    state = FileStateStore(state_path).load()
    assert (state.snapshot_lsn, state.snapshot_done) == (slot_lsn, True)


def test_a_reader_killed_while_making_up_for_a_cut_off_snapshot_ends_correct_too(seeded, tmp_path):
    """Killed again during the re-reads: nothing was confirmed past the first snapshot, and
    the next run reads every table again and ends equal to the source."""
    sink, state_path = MemorySink(), tmp_path / "state.json"
    config = replace(FAST, snapshot_chunk_rows=25)
    first_lsn = _cut_off_snapshot(seeded, sink, state_path, config)
    emitted = _emitted_keys(sink, "sales_order")
    _delete_and_update(seeded, emitted[:3], emitted[3:6])

    windows = []

    def die_in_the_eighth_window():
        windows.append(1)
        time.sleep(0.15)  # feedback comes round between chunks: a chance to confirm too early
        if len(windows) == 8:
            raise _Killed("killed during the re-reads")

    with (
        pytest.raises(_Killed),
        running_reader(
            seeded, sink, state_path, config, prepare=lambda r: setattr(r, "resnapshot_hook", die_in_the_eighth_window)
        ) as reader,
    ):
        deadline = time.monotonic() + 60
        while getattr(reader, "failure", None) is None:
            assert time.monotonic() < deadline, "the re-reads never reached their eighth window"
            time.sleep(0.05)
    assert len(windows) == 8 and 0 < len(reader.reread) < len(TABLES)
    assert _slot_confirmed(seeded) == first_lsn and not sink.watermarks
    state = FileStateStore(state_path).load()
    assert (state.snapshot_done, state.rereads) == (False, list(TABLES))

    _delete_and_update(seeded, emitted[6:9], emitted[9:12])
    with Simulator(seeded, seed=15) as writer:
        writer.run_live(rate=0, events=20)
    with running_reader(seeded, sink, state_path, config) as reader:
        _catch_up(seeded, reader)
    assert FileStateStore(state_path).load().snapshot_done
    got, want = apply_events(sink.events), source_state(seeded, TABLES)
    assert got == want, state_diff(got, want)
    assert not {(str(g),) for g in emitted[:3] + emitted[6:9]} & set(got["public.sales_order"])


def test_a_cut_off_snapshot_whose_slot_is_gone_is_not_silently_taken_again(seeded, tmp_path):
    """Its rows may be downstream: a new snapshot could leave rows deleted meanwhile alive."""
    sink, state_path = MemorySink(), tmp_path / "state.json"
    _cut_off_snapshot(seeded, sink, state_path, replace(FAST, snapshot_chunk_rows=25))
    _run_sql(seeded, "SELECT pg_drop_replication_slot('totes_cdc')")
    reader = Reader(seeded, sink, sink, FileStateStore(state_path), FAST)
    with pytest.raises(SourceSetupError, match="is gone .* --reset"):
        reader.run(threading.Event())


def test_a_state_file_written_before_re_reads_were_recorded_still_loads(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"slot": "totes_cdc", "snapshot_lsn": 42, "snapshot_published": true, "snapshot_done": false}')
    state = FileStateStore(path).load()
    assert (state.snapshot_lsn, state.snapshot_published, state.rereads) == (42, True, [])
