"""How long a lake keeps what time travel by Delta version reaches: the durations the
commands take (`--retain`) and their defaults. Plain data with no Delta in it, so the command
line can show and check them without loading the lake's libraries (lake.maintenance applies
them)."""

from __future__ import annotations

import re
from datetime import timedelta
from change_events.errors import Kind, TotesError

DEFAULT_RETENTION = timedelta(hours=1)
"""Time travel by Delta version for the last hour (by source time or LSN: always)."""
DEMO_RETENTION = timedelta(minutes=1)
"""`totes demo`'s: its lake holds a few MiB while the pipeline writes about 0.2 MiB/s of commits
(bench/README.md, `storage`), so a longer window would keep mostly superseded versions."""
MIN_RETENTION = timedelta(minutes=1)
"""Shorter would let vacuum delete files that a sync run, a query or a merge still reads."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class RetentionError(TotesError, ValueError):
    """A retention that is not a duration, or shorter than `MIN_RETENTION`."""

    kind = Kind.CONFIGURATION


def parse_retention(text: str, minimum: timedelta = MIN_RETENTION, flag: str = "--retain") -> timedelta:
    """'24h', '90m', '7d', '2w', '600s' (a bare number is hours) → a timedelta of at least
    `minimum`; RetentionError with the fix otherwise (naming `flag`, as any duration flag)."""
    match = _DURATION.match(text or "")
    if not match:
        raise RetentionError(f"{flag} {text!r} is not a duration", fix="use a number and a unit, like 24h, 90m or 7d.")
    amount, unit = float(match.group(1)), (match.group(2) or "h").lower()
    retention = timedelta(**{_UNITS[unit]: amount})
    if retention < minimum:
        raise RetentionError(
            f"{flag} {text} is shorter than the {format_retention(minimum)} that readers and writers in flight need",
            fix=f"use {format_retention(minimum)} or more.",
        )
    return retention


def format_retention(retention: timedelta) -> str:
    seconds = int(retention.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
