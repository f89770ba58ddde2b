"""A reader with a lake that re-reads sales_order and kills itself (SIGKILL) between a chunk's
change log and state commits, at the Nth chunk of the re-read, after changing the source
at the first: `python bulk_reread_child.py DSN LAKE STATE N`."""

import sys
import threading

import psycopg2

from cdc_reader.reader import FileStateStore, Reader
from lake.layout import LakeLayout
from tests.bulk_helpers import LakeSink, bulk_config, kill_at_chunk


def main(dsn: str, lake: str, state: str, kill_at: int) -> None:
    layout = LakeLayout(lake)
    sink = LakeSink(layout)
    config = bulk_config(resnapshot=("sales_order",), snapshot_chunk_pages=24)
    reader = Reader(dsn, sink, sink, FileStateStore(state), config, lake=layout)

    def change_the_source() -> None:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("UPDATE sales_order SET units_sold = units_sold + 5 WHERE sales_order_id % 31 = 0")
            cur.execute("DELETE FROM sales_order WHERE sales_order_id % 67 = 0")
        conn.close()

    reader.bulk_chunk_hook = kill_at_chunk(kill_at, on_first=change_the_source)
    reader.run(threading.Event())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
