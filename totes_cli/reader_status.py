"""The reader's status file (`<state dir>/reader/<slot>.status.json`): what it has published,
written every few seconds by `totes reader` and by the reader inside `totes run`, read by
`totes status` and the dashboard's health page (the reader's events/s exist nowhere else)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from change_events import format_lsn
from change_events.files import atomic_write_json
from change_events.metrics import Readings

STATUS_SECONDS = 5.0
STALE_SECONDS = 15.0
"""A status file older than this belongs to a reader that is not running."""


class StatusWriter:
    """Writes one reader's status file; `events_per_second` is the rate since the previous
    write (since the start for the first one), `average_events_per_second` since the start."""

    def __init__(self, path: Path, reader, publisher):
        self.path, self.reader, self.publisher = Path(path), reader, publisher
        self.started = time.time()
        self._readings = Readings(reader.metrics, "events", clock=time.time, started=self.started)

    def write(self) -> None:
        m, now = self.reader.metrics, time.time()
        added, seconds = self._readings.take()
        status = {
            "updated_at": now,
            "events": m.events,
            "snapshot_events": m.snapshot_events,
            "transactions": m.transactions,
            "schema_rereads": m.schema_rereads,
            "events_per_second": max(added["events"], 0) / max(seconds, 1e-9),
            "average_events_per_second": m.events / max(now - self.started, 1e-9),
            "bytes_per_second": m.bytes_received / max(now - self.started, 1e-9),
            "received_lsn": format_lsn(m.received_lsn),
            "confirmed_lsn": format_lsn(m.confirmed_lsn),
            "seconds_behind": (now - m.last_commit_ts) if m.last_commit_ts else None,
            "publisher": self.publisher.metrics.as_dict(),
        }
        atomic_write_json(self.path, status)


def read_statuses(dirs: list[Path]) -> dict[str, dict]:
    """Every status file found, by slot (a file that cannot be read is left out)."""
    found: dict[str, dict] = {}
    for directory in dirs:
        for path in sorted(Path(directory).glob("*.status.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                found.setdefault(path.name.removesuffix(".status.json"), data)
    return found


def running(status: dict, now: float | None = None) -> bool:
    return (now or time.time()) - status.get("updated_at", 0) <= STALE_SECONDS
