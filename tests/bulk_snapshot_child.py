"""A reader that kills itself (SIGKILL) between a chunk's change log and state commits, at
the Nth chunk of its bulk snapshot: `python bulk_snapshot_child.py DSN LAKE STATE N`."""

import os
import signal
import sys
import threading

from cdc_reader.reader import FileStateStore, Reader
from lake.layout import LakeLayout
from tests.bulk_helpers import bulk_config
from tests.fakes import MemorySink


def main(dsn: str, lake: str, state: str, kill_at: int) -> None:
    sink = MemorySink()
    reader = Reader(dsn, sink, sink, FileStateStore(state), bulk_config(), lake=LakeLayout(lake))
    logged = []
    lock = threading.Lock()

    def hook(table: str, chunk: int, step: str) -> None:
        if step == "logged" and table == "public.sales_order":
            with lock:
                logged.append(chunk)
                if len(logged) == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

    reader.bulk_chunk_hook = hook
    reader.run(threading.Event())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
