"""Where the warehouse is: its checkpoint, or a position inside an LSN of snapshot reads."""

from __future__ import annotations

from warehouse_sync.schema import CHECKPOINT, PARTIAL, SOURCES, quote_identifier as q, quote_literal
from warehouse_sync.slices import Position
from warehouse_sync.targets import Target


def checkpoint_lsn(target: Target) -> int:
    """The LSN up to which the warehouse holds every event (0 before the first sync)."""
    lsn = target.value(f"SELECT lsn FROM {q(CHECKPOINT.name)} WHERE id = 1")  # nosec B608 # names quoted by q(), values int()
    return 0 if lsn is None else int(lsn)


def complete_lsn(position: Position) -> int:
    """The LSN up to which a position holds every event."""
    return position.lsn if position.is_complete(len(SOURCES)) else position.lsn - 1


def read_position(target: Target, lock: bool = False) -> Position:
    """Where the warehouse is: its checkpoint, or inside an LSN of snapshot reads."""
    if not lock:
        target.begin()
    try:
        lsn = int(
            target.query(
                f"SELECT lsn FROM {q(CHECKPOINT.name)} WHERE id = 1"  # nosec B608 # names quoted by q()
                f"{target.for_update if lock else ''}"
            ).item()
        )
        partial = target.query(f"SELECT lsn, source, seq FROM {q(PARTIAL.name)} WHERE id = 1")  # nosec B608 # names quoted by q()
    finally:
        if not lock:
            target.rollback()
    if partial.height == 0:
        return Position.complete(lsn, len(SOURCES))
    p_lsn, source, seq = partial.row(0)
    return Position(int(p_lsn), list(SOURCES).index(source), int(seq))


def advance_position(target: Target, end: Position) -> None:
    _advance_checkpoint(target, complete_lsn(end))
    target.execute(f"DELETE FROM {q(PARTIAL.name)}")  # nosec B608 # names quoted by q()
    if not end.is_complete(len(SOURCES)):
        source = quote_literal(list(SOURCES)[end.table])
        target.execute(
            f"INSERT INTO {q(PARTIAL.name)} (id, lsn, source, seq) "  # nosec B608 # names quoted, values int() or quoted
            f"VALUES (1, {int(end.lsn)}, {source}, {int(end.seq)})"
        )


def _advance_checkpoint(target: Target, lsn: int) -> None:
    target.execute(f"UPDATE {q(CHECKPOINT.name)} SET lsn = {int(lsn)} WHERE id = 1")  # nosec B608 # names quoted by q(), values int()
