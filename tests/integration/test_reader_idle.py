"""An idle reader sleeps: it wakes for the source, for its own deadlines (watermark, feedback,
heartbeat) or for a stop, not every `idle_wait_seconds`, unless its sink holds something."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg2

import cdc_reader.reader as reader_module
from cdc_reader.reader import FileStateStore, Reader, ReaderConfig
from tests.fakes import MemorySink
from totesys.schema import TABLES
from tests.reader_harness import running_reader


class QuietSink(MemorySink):
    """A sink that holds nothing between calls: nothing for the reader to look after."""

    busy = False


def _config(**overrides) -> ReaderConfig:
    settings = dict(
        slot=f"idle_{uuid.uuid4().hex[:8]}",
        tables=TABLES,
        heartbeat_seconds=30.0,
        watermark_seconds=0.1,
        feedback_seconds=1.0,
        idle_wait_seconds=0.02,
    )
    return ReaderConfig(**{**settings, **overrides})


class _CountingSelect:
    """`select.select` as the reader module sees it, counting the calls (its wake-ups)."""

    def __init__(self):
        self.calls = 0
        self._select = reader_module.select.select

    def select(self, *args, **kwargs):
        self.calls += 1
        return self._select(*args, **kwargs)


def _waits_over(counter: _CountingSelect, seconds: float) -> int:
    before = counter.calls
    time.sleep(seconds)
    return counter.calls - before


def test_an_idle_reader_with_nothing_held_wakes_a_few_times_a_second_and_still_reads(
    totesys_dsn, tmp_path, monkeypatch
):
    counter = _CountingSelect()
    monkeypatch.setattr(reader_module, "select", counter)
    sink = QuietSink()
    with running_reader(totesys_dsn, sink, tmp_path / "state.json", _config()):
        time.sleep(0.5)  # the first feedback and watermark
        # the quieter of two windows: a wake-up the loaded machine delays spills into the next
        waits = min(_waits_over(counter, 3.0) for _ in range(2))
        with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO currency (currency_code, last_updated) VALUES ('XTS', now())")
        deadline = time.monotonic() + 20
        while not any(e.table == "public.currency" for e in sink.events):
            assert time.monotonic() < deadline, "the change never reached the sink"
            time.sleep(0.05)
    # feedback once a second (the heartbeat is 30 s away): at 20 ms it would be about 150
    assert waits <= 12, f"{waits} wake-ups in 3 s"


def test_a_sink_that_holds_something_is_looked_after_every_idle_wait(totesys_dsn, tmp_path, monkeypatch):
    counter = _CountingSelect()
    monkeypatch.setattr(reader_module, "select", counter)
    with running_reader(totesys_dsn, MemorySink(), tmp_path / "state.json", _config(idle_wait_seconds=0.02)):
        time.sleep(0.5)
        waits = _waits_over(counter, 3.0)
    assert waits >= 30, f"only {waits} wake-ups in 3 s: a busy sink waits on its answers"


def test_a_stop_ends_an_idle_readers_sleep_at_once(totesys_dsn, tmp_path):
    config = _config(feedback_seconds=60.0, watermark_seconds=60.0)
    sink = QuietSink()
    reader = Reader(totesys_dsn, sink, sink, FileStateStore(tmp_path / "state.json"), config)
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    assert reader.streaming.wait(60)
    time.sleep(1.0)  # asleep until the next feedback, a minute away
    stop.set()
    reader.wake()
    thread.join(15)  # the shutdown's own steps take well under a second
    assert not thread.is_alive(), "the reader slept through the stop"
