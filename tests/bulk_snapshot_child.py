"""A reader that kills itself (SIGKILL) between a chunk's change log and state commits, at
the Nth chunk of its bulk snapshot: `python bulk_snapshot_child.py DSN LAKE STATE N`."""

import sys
import threading

from cdc_reader.reader import FileStateStore, Reader
from lake.layout import LakeLayout
from tests.bulk_helpers import bulk_config, kill_at_chunk
from tests.fakes import MemorySink


def main(dsn: str, lake: str, state: str, kill_at: int) -> None:
    sink = MemorySink()
    reader = Reader(dsn, sink, sink, FileStateStore(state), bulk_config(), lake=LakeLayout(lake))
    reader.bulk_chunk_hook = kill_at_chunk(kill_at)
    reader.run(threading.Event())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
