"""How long the reader may sleep on the source's socket when the stream has nothing to read.

While the sink holds something (events lingering, a Kinesis call in flight, records backing
off) the reader looks after it every `idle_wait_seconds`, as before. With nothing held, the
only work left is on the reader's own clock (the next watermark, feedback to the server, a
heartbeat), so it sleeps until the earliest of those or until the source sends something:
an idle reader wakes a few times a second instead of fifty. `Wakeup` lets another thread
end that sleep (a stop).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable


def idle_timeout(now: float, deadlines: Iterable[float], *, sink_busy: bool, short: float) -> float:
    """Seconds to wait for the source: `short` while the sink needs looking after, else until
    the earliest of `deadlines` (monotonic times; never less than 0, never more than the
    earliest deadline)."""
    if sink_busy:
        return short
    return max(0.0, min(deadlines, default=now + short) - now)


class Wakeup:
    """A socket pair to `select` on beside the source's connection: `set()` from any thread
    makes the select return; `clear()` (on the waiting thread) empties it again."""

    def __init__(self) -> None:
        self._receive, self._send = socket.socketpair()
        self._receive.setblocking(False)
        self._send.setblocking(False)

    def fileno(self) -> int:
        return self._receive.fileno()

    def set(self) -> None:
        try:
            self._send.send(b"\0")
        except (BlockingIOError, OSError):  # full (already set) or closed: nothing to add
            pass

    def clear(self) -> None:
        try:
            while self._receive.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self._receive.close()
        self._send.close()
