"""`totes run --verify-every DURATION`: verification on a schedule, beside the running stages.

A round that cannot run (the source unreachable, the lake slow to reach its LSN) is logged
and the next round tries again: a missed verification says nothing about the data, and the
pipeline goes on. Each round's result goes to `on_result` (the command prints it and emits
the mismatched rows as a metric)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from verify.core import Verification
from verify.run import DEFAULT_CHUNK_ROWS, verify

log = logging.getLogger("totes.verify")


def verify_every(
    config,
    interval: float,
    stop: threading.Event,
    on_result: Callable[[Verification], None],
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> None:
    """Verify `config`'s source, lake and warehouse (a PipelineConfig) every `interval`
    seconds until `stop`."""
    while not stop.wait(interval):
        try:
            result = verify(
                config.source_dsn,
                config.lake,
                config.warehouse,
                config.tables,
                chunk_rows=chunk_rows,
                timeout=max(60.0, interval),
                stop=stop,
                policy=config.personal_data,
            )
        except Exception as error:  # noqa: BLE001 - the next round tries again
            if stop.is_set():
                return
            log.warning("verification skipped: %s", error)
            continue
        on_result(result)
