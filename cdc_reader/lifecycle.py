"""The reader's snapshot lifecycle: one persisted state machine with pure transitions.

    NoSlot ──note──► SlotPending ──created──► Snapshotting ──written──► Published ──durable──► Streaming
                          │                      │    ▲                                          ▲
                          │ (killed: the slot    │    └─ resumed (bulk: the chunks not in the    │
                          │  exists after all)   │       lake are read under a new snapshot)     │
                          └──────────────────────┘                                               │
                                 Snapshotting (through Kinesis) ──cut_off──► Recovering ──durable─┘
    any ──reset──► NoSlot(replaces_lost_slot=True)        a slot not made by us ──adopt──► Streaming

Each state is a frozen dataclass; each transition a function of (state, facts) returning
the next state, so every path is tested without PostgreSQL (tests/test_lifecycle.py). The
reader persists the state after each transition (`ReaderState.phase`) and acts on it.

What the states mean:
- `NoSlot`: nothing of ours exists; the next run creates the slot. `replaces_lost_slot`:
  its snapshot must replace what a lost slot left downstream (`--reset`).
- `SlotPending`: the slot is about to be created. A reader killed here finds either no slot
  (nothing was read: back to NoSlot) or the slot at its consistent point (`created`).
- `Snapshotting(lsn, bulk, tables)`: the slot exists at `lsn`; its snapshot is being read.
  `bulk`: straight into the lake, chunk by chunk (the chunks done are recorded in the lake
  with the files that hold them, see lake/snapshot_load.py); else through the sink.
- `Recovering(lsn, tables)`: a snapshot through the sink was cut off; the slot is kept and
  every table read again while streaming (cdc_reader/resnapshot.py).
- `Published(lsn, durable_at)`: every snapshot row is handed on (or in the lake); the
  snapshot counts once the lake watermark reaches `durable_at` (`lsn`, or the later LSN of
  chunks read again after a restart).
- `Streaming(lsn)`: the snapshot is durable; the slot is confirmed up to the lake watermark.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class NoSlot:
    replaces_lost_slot: bool = False


@dataclass(frozen=True)
class SlotPending:
    replaces_lost_slot: bool = False


@dataclass(frozen=True)
class Snapshotting:
    lsn: int
    bulk: bool = False
    tables: tuple[str, ...] = ()
    """Bulk: the tables of the snapshot, in the order they were planned."""
    chunks: tuple[int, ...] = ()
    """Bulk: how many chunks each table of `tables` was split into."""
    chunk_pages: int = 0
    """Bulk: heap pages per chunk (the last chunk of a table takes the rest)."""
    replaces_lost_slot: bool = False


@dataclass(frozen=True)
class Recovering:
    lsn: int
    tables: tuple[str, ...]
    replaces_lost_slot: bool = False


@dataclass(frozen=True)
class Published:
    lsn: int
    durable_at: int
    replaces_lost_slot: bool = False


@dataclass(frozen=True)
class Streaming:
    lsn: int | None = None
    replaces_lost_slot: bool = False


Phase = NoSlot | SlotPending | Snapshotting | Recovering | Published | Streaming
_KINDS = {cls.__name__: cls for cls in (NoSlot, SlotPending, Snapshotting, Recovering, Published, Streaming)}


class TransitionError(ValueError):
    """A transition the lifecycle does not have (a bug, never bad input)."""


def _expect(phase: Phase, *kinds: type) -> None:
    if not isinstance(phase, kinds):
        raise TransitionError(f"cannot go from {type(phase).__name__} that way")


# -- transitions -----------------------------------------------------------------------------

def note_slot(phase: Phase) -> SlotPending:
    """Before creating the slot: a reader killed next knows the slot would be its own."""
    _expect(phase, NoSlot)
    return SlotPending(phase.replaces_lost_slot)


def slot_created(phase: Phase, lsn: int, *, bulk: bool, tables: tuple[str, ...] = (),
                 chunks: tuple[int, ...] = (), chunk_pages: int = 0) -> Snapshotting:
    _expect(phase, SlotPending)
    return Snapshotting(lsn, bulk, tuple(tables), tuple(chunks), chunk_pages, phase.replaces_lost_slot)


def slot_missing(phase: Phase) -> NoSlot:
    """Killed while creating the slot, which never came to exist: nothing was read."""
    _expect(phase, SlotPending)
    return NoSlot(phase.replaces_lost_slot)


def written(phase: Phase, durable_at: int | None = None) -> Published:
    """Every snapshot row handed on (sink) or written (lake), the last of them at `durable_at`."""
    _expect(phase, Snapshotting)
    return Published(phase.lsn, max(phase.lsn, durable_at or phase.lsn), phase.replaces_lost_slot)


def cut_off(phase: Phase, tables: tuple[str, ...]) -> Snapshotting | Recovering:
    """A restart found the snapshot unfinished (or its recovery: that starts over). Bulk:
    resume it chunk by chunk (the phase stays); through the sink: keep the slot and read
    `tables` again while streaming."""
    _expect(phase, Snapshotting, Recovering)
    if isinstance(phase, Snapshotting) and phase.bulk:
        return phase
    return Recovering(phase.lsn, tuple(tables), phase.replaces_lost_slot)


def durable(phase: Phase, durable_lsn: int, needed: int | None = None) -> Phase:
    """The lake watermark is at `durable_lsn`. Published → Streaming once it reaches
    `durable_at`; Recovering → Streaming once it reaches `needed` (the commit LSN that covers
    every re-read row, None until they were all handed on). Anything else stays."""
    if isinstance(phase, Published) and durable_lsn >= phase.durable_at:
        return Streaming(phase.lsn, phase.replaces_lost_slot)
    if isinstance(phase, Recovering) and needed is not None and durable_lsn >= max(needed, phase.lsn):
        return Streaming(phase.lsn, phase.replaces_lost_slot)
    return phase


def reset(phase: Phase, slot_dropped: bool) -> NoSlot | Streaming | Phase:
    """`--reset`: after a lost slot (dropped here), the next snapshot replaces every table
    downstream; a healthy slot is resumed from as it is."""
    if slot_dropped:
        return NoSlot(replaces_lost_slot=True)
    return phase


def adopt() -> Streaming:
    """A slot this reader's state did not create: resume from it, never snapshot."""
    return Streaming()


def snapshot_finished(phase: Phase) -> bool:
    return isinstance(phase, Streaming)


def snapshot_handed_on(phase: Phase) -> bool:
    """A restart resumes from the slot as it is (no snapshot to make up for)."""
    return isinstance(phase, (Published, Streaming))


# -- persistence -----------------------------------------------------------------------------

def to_json(phase: Phase) -> dict:
    return {"kind": type(phase).__name__, **asdict(phase)}


def from_json(data: dict) -> Phase:
    fields = dict(data)
    kind = _KINDS[fields.pop("kind")]
    for name in ("tables", "chunks"):
        if name in fields:
            fields[name] = tuple(fields[name])
    return kind(**fields)


def from_legacy(data: dict) -> Phase:
    """The phase an older state file (flags instead of a phase) describes."""
    replaces = bool(data.get("replaces_lost_slot"))
    lsn = data.get("snapshot_lsn")
    if not data.get("slot"):
        return NoSlot(replaces)
    if lsn is None:
        return Streaming(None, replaces) if data.get("snapshot_done") else SlotPending(replaces)
    if data.get("snapshot_done"):
        return Streaming(lsn, replaces)
    if data.get("rereads"):
        return Recovering(lsn, tuple(data["rereads"]), replaces)
    if data.get("snapshot_published"):
        return Published(lsn, lsn, replaces)
    return Snapshotting(lsn, False, replaces_lost_slot=replaces)


def legacy_flags(phase: Phase) -> dict:
    """The flags older readers of the state file look for, derived from the phase."""
    return {
        "snapshot_lsn": getattr(phase, "lsn", None),
        "snapshot_published": snapshot_handed_on(phase),
        "snapshot_done": snapshot_finished(phase),
        "rereads": list(phase.tables) if isinstance(phase, Recovering) else [],
        "replaces_lost_slot": phase.replaces_lost_slot,
    }


__all__ = [
    "NoSlot", "SlotPending", "Snapshotting", "Recovering", "Published", "Streaming", "Phase", "TransitionError",
    "note_slot", "slot_created", "slot_missing", "written", "cut_off", "durable", "reset", "adopt",
    "snapshot_finished", "snapshot_handed_on", "to_json", "from_json", "from_legacy", "legacy_flags",
]
