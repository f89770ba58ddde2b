"""A reader with a lake that kills itself (SIGKILL) between a sales_order chunk's change log
and state commits, at the Nth chunk it writes: `python bulk_kill_child.py DSN LAKE STATE N MODE`.
MODE `reset`: the reader runs with `--reset` (its slot was dropped); `type`: it streams a
column type change that makes it read sales_order again. A reader that never writes such a
chunk stops by itself (once streaming after a reset, after a minute otherwise) and exits 0."""

import sys
import threading

from cdc_reader.reader import FileStateStore, Reader
from lake.layout import LakeLayout
from tests.bulk_helpers import LakeSink, bulk_config, kill_at_chunk


def main(dsn: str, lake: str, state: str, kill_at: int, mode: str) -> None:
    layout = LakeLayout(lake)
    sink = LakeSink(layout)
    config = bulk_config(snapshot_chunk_pages=24, reset=mode == "reset")
    reader = Reader(dsn, sink, sink, FileStateStore(state), config, lake=layout)
    reader.bulk_chunk_hook = kill_at_chunk(kill_at)
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    if mode == "reset":
        reader.streaming.wait(120)
    else:
        thread.join(60)
    stop.set()
    thread.join(30)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
