"""What the reader keeps outside PostgreSQL, and how it is stored (a JSON file, replaced
atomically): the slot it belongs to, the snapshot's phase and each table's re-read
(lifecycle.py), and the column types last seen.

State files older readers wrote still load, migrated on load and written back in the
current form at the next save (tests/unit/test_lifecycle.py):
- flags instead of a phase (`snapshot_lsn`, `snapshot_published`, `snapshot_done`,
  `rereads`, `replaces_lost_slot`): the phase they describe (`lifecycle.from_legacy`);
- a phase but no `table_rereads`: type-change re-reads from `schema_rereads`, and a
  recovery re-read of each table of a `Recovering` phase.
Every save still writes those flags and `schema_rereads`, derived from the phase and the
re-reads, for tools that read the file (totes_cli/catch_up.py) and older readers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cdc_reader import lifecycle
from change_events.files import atomic_write_json


@dataclass(init=False)
class ReaderState:
    slot: str
    """The slot this state belongs to ("" until the reader notes it is about to create one)."""
    phase: lifecycle.Phase
    """Where the slot's snapshot stands (lifecycle.py)."""
    table_rereads: lifecycle.Rereads
    """Each table being read again while streaming, and how far (lifecycle.Reread)."""
    column_types: dict[str, dict[str, str]]
    """The column types last seen of every table (table → column → type), so a type change
    made while the reader was away is still told from the first Relation message after it."""

    def __init__(
        self,
        slot: str = "",
        phase: lifecycle.Phase | None = None,
        table_rereads: lifecycle.Rereads = (),
        column_types: dict | None = None,
        *,
        schema_rereads: list[str] = (),
    ):
        """`schema_rereads`: tables to read again after a type change (the older form)."""
        self.slot = slot
        self.phase = phase if phase is not None else lifecycle.NoSlot()
        rereads = tuple(table_rereads)
        for table in schema_rereads:
            rereads = lifecycle.queue(rereads, table, lifecycle.TYPE_CHANGE)
        self.table_rereads = rereads
        self.column_types = column_types if column_types is not None else {}

    # Views of the phase and the re-reads, as the flags the reader once kept (and tools read).
    @property
    def snapshot_lsn(self) -> int | None:
        return getattr(self.phase, "lsn", None)

    @property
    def snapshot_published(self) -> bool:
        return lifecycle.snapshot_handed_on(self.phase)

    @property
    def snapshot_done(self) -> bool:
        return lifecycle.snapshot_finished(self.phase)

    @property
    def rereads(self) -> list[str]:
        """Tables being read again because a snapshot through the sink was cut off."""
        return list(self.phase.tables) if isinstance(self.phase, lifecycle.Recovering) else []

    @property
    def schema_rereads(self) -> list[str]:
        """Tables to read again after a column type change, until that re-read is durable."""
        return sorted({r.table for r in self.table_rereads if r.why == lifecycle.TYPE_CHANGE})

    @property
    def replaces_lost_slot(self) -> bool:
        """This slot's snapshot replaces what a lost slot left downstream (`--reset`): every
        table is truncated at its consistent point, so a row deleted while no slot was
        reading does not stay alive in the lake or the warehouse."""
        return self.phase.replaces_lost_slot

    def to_json(self) -> dict:
        return {
            "slot": self.slot,
            "phase": lifecycle.to_json(self.phase),
            **lifecycle.legacy_flags(self.phase),
            "table_rereads": [lifecycle.reread_to_json(r) for r in self.table_rereads],
            "schema_rereads": self.schema_rereads,
            "column_types": self.column_types,
        }

    @classmethod
    def from_json(cls, data: dict) -> "ReaderState":
        """A saved state, migrated if an older reader wrote it (see the module docstring)."""
        phase = lifecycle.from_json(data["phase"]) if "phase" in data else lifecycle.from_legacy(data)
        if "table_rereads" in data:
            rereads = tuple(lifecycle.reread_from_json(r) for r in data["table_rereads"])
            return cls(data.get("slot", ""), phase, rereads, dict(data.get("column_types", {})))
        recovering: lifecycle.Rereads = ()
        for table in getattr(phase, "tables", ()) if isinstance(phase, lifecycle.Recovering) else ():
            recovering = lifecycle.queue(recovering, table, lifecycle.RECOVERY)
        return cls(
            data.get("slot", ""),
            phase,
            recovering,
            dict(data.get("column_types", {})),
            schema_rereads=list(data.get("schema_rereads", [])),
        )


class StateStore(Protocol):
    def load(self) -> ReaderState: ...
    def save(self, state: ReaderState) -> None: ...


class FileStateStore:
    """ReaderState in a JSON file, replaced atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> ReaderState:
        try:
            return ReaderState.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return ReaderState()

    def save(self, state: ReaderState) -> None:
        atomic_write_json(self.path, state.to_json())
