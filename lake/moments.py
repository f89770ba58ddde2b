"""What `--as-of` and the dashboard's "as of" accept, parsed in one place.

Light on purpose (no Delta, Arrow or DuckDB imports): the command line parses its flags
before it loads what a command needs.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from change_events import parse_lsn
from change_events.errors import Kind, TotesError

_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


class MomentError(TotesError, ValueError):
    """A moment that is neither a Delta version, a source LSN nor a time; str() says so."""

    kind = Kind.CONFIGURATION


def parse_moment(text: str | None):
    """None or blank (latest), a Delta version of a state table (`12` → 12), a source LSN
    (`0/16B3748` → ("lsn", int)) or an ISO time (a source time, UTC unless it says otherwise)."""
    text = (text or "").strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    if _LSN.match(text):
        return ("lsn", parse_lsn(text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MomentError(
            f"{text!r} is neither a version (12), an LSN (0/16B3748) nor a time (2024-11-15T14:00:00)."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
