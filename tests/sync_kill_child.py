"""A sync that kills itself (SIGKILL) in the middle of a bulk load, once the mirror of the
first fact source loaded in bulk is written and before its fact rows are:
`python sync_kill_child.py LAKE WAREHOUSE UPTO SLICE_EVENTS`. A sync that loads nothing in
bulk runs to its end and exits 0."""

import os
import signal
import sys
from datetime import date

import warehouse_sync.bulk as bulk
from warehouse_sync import open_target, sync_once


def main(lake: str, warehouse: str, upto: int, slice_events: int) -> None:
    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    bulk.load_facts = killed
    target = open_target(warehouse)
    sync_once(lake, target, upto, today=date(2024, 11, 18), slice_events=slice_events)
    target.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
