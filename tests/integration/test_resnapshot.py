"""Re-reading a table while streaming continues: the re-read alone rebuilds the table, and
rows that change inside a chunk's window never end up with a stale value."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace
from datetime import datetime

import psycopg2

from change_events import Op
from tests import reader_harness as harness
from tests.fakes import MemorySink
from totesys.simulator import Simulator


def test_a_table_is_re_read_without_pausing_the_stream_or_going_stale(totesys_dsn, tmp_path):
    with Simulator(totesys_dsn, seed=31) as simulator:
        simulator.seed_history(30, until=datetime(2024, 11, 15, 18))

    rng = random.Random(4)
    windows = []

    def change_rows_inside_the_window():
        """Runs after a chunk's SELECT, before its high watermark: the chunk now holds stale rows."""
        with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT max(sales_order_id) FROM sales_order")
            (top,) = cur.fetchone()
            ids = [rng.randint(1, top) for _ in range(5)]
            cur.execute("UPDATE sales_order SET units_sold = units_sold + 7 WHERE sales_order_id = ANY(%s)", (ids,))
            cur.execute(
                "DELETE FROM payment WHERE transaction_id IN "
                "(SELECT transaction_id FROM transaction WHERE sales_order_id = %s)",
                (ids[0],),
            )
            cur.execute("DELETE FROM sales_order WHERE sales_order_id = %s", (ids[1],))
        conn.close()
        windows.append(ids)

    sink = MemorySink()
    config = replace(harness.FAST, resnapshot=("sales_order",), snapshot_chunk_rows=37)
    stop_business = threading.Event()
    business = Simulator(totesys_dsn, seed=32)

    def hook(reader):
        reader.resnapshot_hook = change_rows_inside_the_window

    with harness.running_reader(totesys_dsn, sink, tmp_path / "state.json", config, prepare=hook) as reader:
        worker = threading.Thread(target=business.run_live, kwargs={"rate": 40, "stop_event": stop_business})
        worker.start()
        try:
            deadline = time.monotonic() + 120
            while "public.sales_order" not in reader.reread:
                assert time.monotonic() < deadline, "the re-read did not finish"
                failure = getattr(reader, "failure", None)
                assert failure is None, f"the reader died: {failure!r}"
                time.sleep(0.2)
        finally:
            stop_business.set()
            worker.join()
            business.close()
        harness.wait_until_confirmed(reader, harness.current_lsn(totesys_dsn))

    assert windows, "the re-read never opened a window"
    initial_lsn = min(e.lsn for e in sink.events)
    re_read = [e for e in sink.events if e.op is Op.SNAPSHOT and e.lsn > initial_lsn]
    assert {e.table for e in re_read} == {"public.sales_order"}
    streamed = [e for e in sink.events if e.op is not Op.SNAPSHOT]
    assert min(e.lsn for e in re_read) < max(e.lsn for e in streamed)  # interleaved with the stream

    # The whole stream, re-read included, equals the source.
    got = harness.apply_events(sink.events)
    want = harness.source_state(totesys_dsn, ["sales_order", "transaction", "payment"])
    for table in want:
        assert got[table] == want[table], harness.state_diff({table: got[table]}, {table: want[table]})

    # And sales_order rebuilds from the re-read plus what streamed after it began, as if the
    # original snapshot had been lost downstream.
    without_initial = [e for e in sink.events if not (e.op is Op.SNAPSHOT and e.lsn == initial_lsn)]
    rebuilt = harness.apply_events(without_initial)["public.sales_order"]
    assert rebuilt == want["public.sales_order"], harness.state_diff({"t": rebuilt}, {"t": want["public.sales_order"]})
