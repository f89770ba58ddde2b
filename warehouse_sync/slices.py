"""Where a long sync is cut: a backlog of change-log events → slices of bounded size, each
applied and committed on its own, so memory stays flat whatever the backlog.

Pure: plain data in, plain data out (the counts come from `lake_source.count_events`).

A `Position` orders every event of every table: `(lsn, table, seq)`, `table` being the
source table's index in `SOURCES` (dimensions' sources first, facts' last). "Applied up to
position p" means every event at or before p. A slice ends

- on a complete LSN (`Position.complete(lsn)`: every event of every table at or below it).
  The lake watermark says every event at or below the sync's `upto` is in the lake, and one
  commit LSN is one source transaction, so such a slice never shows half a transaction;
  a transaction larger than the slice size is applied whole, in one slice;
- or inside an LSN whose events are all snapshot reads (`op='r'`: an initial snapshot, a
  table re-read), between two tables or between two `seq` of one table. A snapshot is not
  a source transaction: nothing else is at its LSN, each row appears in it once, and its
  rows reach the warehouse table by table, dimensions before the facts that reference
  them, as any bulk load shows them. The warehouse keeps such a position in
  `_sync_partial` beside the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

SLICE_EVENTS = 100_000
"""Events a slice holds at most (unless one source transaction alone is larger)."""

MAX_SEQ = 2**63 - 1
MIN_SEQ = -(2**63)


@dataclass(frozen=True, order=True)
class Position:
    lsn: int
    table: int
    """Index of the source table in SOURCES; `tables` (one past the last) for a complete LSN."""
    seq: int

    @staticmethod
    def complete(lsn: int, tables: int) -> Position:
        return Position(lsn, tables, MAX_SEQ)

    def is_complete(self, tables: int) -> bool:
        return self.table >= tables


@dataclass(frozen=True)
class LsnCount:
    """Events of one table at one LSN (after the start position), and whether all are `r`."""

    lsn: int
    table: int
    events: int
    snapshot_only: bool


def plan_slices(
    counts: Sequence[LsnCount],
    upto_lsn: int,
    tables: int,
    snapshot_seqs: Callable[[int, int], Sequence[int]],
    slice_events: int = SLICE_EVENTS,
) -> list[Position]:
    """The end positions of the slices that take a sync to `upto_lsn`, in order; the last is
    always `complete(upto_lsn)`. `counts`: every (LSN, table) with events left to apply;
    `snapshot_seqs(lsn, table)`: the sorted distinct `seq` left of that table at that LSN
    (asked only for an LSN of snapshot reads larger than a slice)."""
    if slice_events < 1:
        raise ValueError("a slice holds at least one event")
    by_lsn: dict[int, list[LsnCount]] = {}
    for count in sorted(counts, key=lambda c: (c.lsn, c.table)):
        by_lsn.setdefault(count.lsn, []).append(count)
    ends: list[Position] = []
    held = 0  # events in the slice being filled
    previous: int | None = None
    for lsn, parts in by_lsn.items():
        events = sum(p.events for p in parts)
        if held and held + events > slice_events and previous is not None:
            ends.append(Position.complete(previous, tables))
            held = 0
        if events > slice_events and all(p.snapshot_only for p in parts):
            cuts, held = _split_snapshot(lsn, parts, held, snapshot_seqs, slice_events)
            ends.extend(cuts)
        else:
            held += events
        previous = lsn
    ends.append(Position.complete(upto_lsn, tables))
    return ends


def _split_snapshot(
    lsn: int, parts: list[LsnCount], held: int, snapshot_seqs: Callable[[int, int], Sequence[int]], slice_events: int
) -> tuple[list[Position], int]:
    """Cuts inside one LSN of snapshot reads: whole tables while they fit, a table larger
    than the room left cut by `seq`. Returns the cuts and what the open slice then holds."""
    cuts = []
    for part in parts:
        if held + part.events <= slice_events:
            held += part.events
            continue
        seqs = snapshot_seqs(lsn, part.table)
        taken = 0
        while len(seqs) - taken > slice_events - held:
            room = slice_events - held
            if room > 0:
                taken += room
                cuts.append(Position(lsn, part.table, seqs[taken - 1]))
            else:
                cuts.append(Position(lsn, part.table, MIN_SEQ))  # the slice ends before this table
            held = 0
        held += len(seqs) - taken
    return cuts, held
