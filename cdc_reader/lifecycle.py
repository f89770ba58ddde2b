"""The reader's snapshot lifecycle: one persisted state machine with pure transitions.

    NoSlot ──note──► SlotPending ──created──► Snapshotting ──written──► Published ──durable──► Streaming
                          │                      │    ▲                                          ▲
                          │ (killed: the slot    │    └─ resumed (bulk: the chunks not in the    │
                          │  exists after all)   │       lake are read under a new snapshot)     │
                          └──────────────────────┘                                               │
                                 Snapshotting (through Kinesis) ──cut_off──► Recovering ──durable─┘
    any ──reset──► NoSlot(replaces_lost_slot=True)        a slot not made by us ──adopt──► Streaming

Each state is a frozen dataclass; each transition a function of (state, facts) returning
the next state, so every path is tested without PostgreSQL (tests/unit/test_lifecycle.py). The
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
  chunks read again after a restart, or of a replacing snapshot's rows read in bulk), and
  no watermark below it goes out (`watermark_allowed`).
- `Streaming(lsn)`: the snapshot is durable; the slot is confirmed up to the lake watermark.

Beside the phase, each table being read again while streaming has a state of its own
(`Reread`, as supabase/etl keeps one per table), persisted with the phase:

    queue ──► Queued ──start──► Reading ──handed_on(after)──► HandedOn(after) ──settle: durable > after──► gone
                ▲                  │                               │
                └── interrupted ───┘ (a reconnect: read it again)  │
                └──────────────── restarted (a new process: every one is read again) ──┘

`why` says what asked for it: `--resnapshot`, a column type change (schema_changes.py) or
the recovery of a cut-off snapshot (`Recovering`: the phase moves on once none of those is
left, and no watermark goes out before all of them were handed on). A re-read is
idempotent, so reading a table again after a kill or a reconnect loses and doubles nothing;
a re-read's rows exist only in the reader (stream path) or in the lake (bulk path) and not
in the WAL, so a table stays until they are durable downstream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


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


def slot_created(
    phase: Phase,
    lsn: int,
    *,
    bulk: bool,
    tables: tuple[str, ...] = (),
    chunks: tuple[int, ...] = (),
    chunk_pages: int = 0,
) -> Snapshotting:
    _expect(phase, SlotPending)
    return Snapshotting(lsn, bulk, tuple(tables), tuple(chunks), chunk_pages, phase.replaces_lost_slot)


def planned(phase: Phase, tables: tuple[str, ...], chunks: tuple[int, ...], chunk_pages: int) -> Snapshotting:
    """A bulk snapshot cut off before its plan was noted gets one (nothing was written)."""
    _expect(phase, Snapshotting)
    if not phase.bulk or phase.tables:
        raise TransitionError("only a bulk snapshot without a plan is planned again")
    return replace(phase, tables=tuple(tables), chunks=tuple(chunks), chunk_pages=chunk_pages)


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


# -- re-reads, one state per table ------------------------------------------------------------

RESNAPSHOT, TYPE_CHANGE, RECOVERY = "resnapshot", "type change", "recovery"
QUEUED, READING, HANDED_ON = "queued", "reading", "handed on"


@dataclass(frozen=True)
class Reread:
    table: str
    """Unqualified, as in `ReaderConfig.tables`."""
    why: str
    step: str = QUEUED
    after: int | None = None
    """HandedOn: the commit LSN of the last transaction that ended before the last re-read
    rows were handed on (they go out in a later one, or are in the lake already)."""


Rereads = tuple[Reread, ...]


def queue(rereads: Rereads, table: str, why: str) -> Rereads:
    """Read `table` again; one already queued stays as it is. One being read or handed on
    is read once more after it (a type change during a re-read: the change counts)."""
    if any(r.table == table and r.step == QUEUED for r in rereads):
        return rereads
    return (*rereads, Reread(table, why))


def next_queued(rereads: Rereads) -> Reread | None:
    return next((r for r in rereads if r.step == QUEUED), None)


def _swap(rereads: Rereads, old: Reread, new: Reread | None, *, front: bool = False) -> Rereads:
    if old not in rereads:
        raise TransitionError(f"no re-read {old}")
    rest = list(rereads)
    rest.remove(old)
    if new is None:
        return tuple(rest)
    return (new, *rest) if front else tuple(rest[: rereads.index(old)] + [new] + rest[rereads.index(old) :])


def start(rereads: Rereads, reread: Reread) -> tuple[Rereads, Reread]:
    if reread.step != QUEUED:
        raise TransitionError(f"cannot start re-reading {reread.table}: it is {reread.step}")
    started = replace(reread, step=READING)
    return _swap(rereads, reread, started), started


def handed_on(rereads: Rereads, reread: Reread, after: int) -> Rereads:
    """Every row of the re-read was handed to the sink (or written to the lake)."""
    if reread.step != READING:
        raise TransitionError(f"cannot hand on {reread.table}: it is {reread.step}")
    return _swap(rereads, reread, replace(reread, step=HANDED_ON, after=after))


def failed(rereads: Rereads, reread: Reread) -> Rereads:
    """The re-read stopped half way: read the table again first."""
    return _swap(rereads, reread, replace(reread, step=QUEUED, after=None), front=True)


def interrupted(rereads: Rereads) -> Rereads:
    """A reconnect: what was being read is read again, first; what was handed on stays."""
    reading = [replace(r, step=QUEUED) for r in rereads if r.step == READING]
    return (*reading, *(r for r in rereads if r.step != READING))


def restarted(rereads: Rereads) -> Rereads:
    """A new process: rows handed on but not durable may be gone with the old one, so every
    table is read again (once)."""
    out: Rereads = ()
    for reread in rereads:
        out = queue(out, reread.table, reread.why)
    return out


def settle(rereads: Rereads, durable_lsn: int) -> Rereads:
    """Without the re-reads the lake watermark (`durable_lsn`) shows durable."""
    return tuple(r for r in rereads if not (r.step == HANDED_ON and durable_lsn > r.after))


def recovery_needed(rereads: Rereads) -> int | None:
    """For `durable`: a commit LSN at or past every recovery re-read row once all of them
    were handed on (0 when none is left), else None."""
    recovering = [r for r in rereads if r.why == RECOVERY]
    if any(r.step != HANDED_ON for r in recovering):
        return None
    return max((r.after + 1 for r in recovering), default=0)


def reread_to_json(reread: Reread) -> dict:
    return asdict(reread)


def reread_from_json(data: dict) -> Reread:
    return Reread(**data)


def watermark_allowed(phase: Phase, lsn: int, rereads_handed_over: int | None = None) -> bool:
    """May a lake watermark at `lsn` go out? Not below a Published snapshot's `durable_at`
    (after a bulk snapshot resumed, or a replacing one, at a later LSN, the lake holds rows
    read there: a lower one would show tables half read, or truncated and not yet read), and
    none while Recovering before the transaction holding the last re-read rows ended
    (`rereads_handed_over`: `recovery_needed`, None until every one was handed on): a warehouse must not show tables half read again, nor `--until-caught-up`
    stop before they are whole. Bulk re-reads hold theirs too (bulk_reread.BulkReread)."""
    if isinstance(phase, Published):
        return lsn >= phase.durable_at
    if isinstance(phase, Recovering):
        return rereads_handed_over is not None and lsn >= rereads_handed_over
    return True


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
    "NoSlot",
    "SlotPending",
    "Snapshotting",
    "Recovering",
    "Published",
    "Streaming",
    "Phase",
    "TransitionError",
    "note_slot",
    "planned",
    "slot_created",
    "slot_missing",
    "written",
    "cut_off",
    "durable",
    "reset",
    "adopt",
    "snapshot_finished",
    "snapshot_handed_on",
    "watermark_allowed",
    "to_json",
    "Reread",
    "Rereads",
    "RESNAPSHOT",
    "TYPE_CHANGE",
    "RECOVERY",
    "QUEUED",
    "READING",
    "HANDED_ON",
    "queue",
    "next_queued",
    "start",
    "handed_on",
    "failed",
    "interrupted",
    "restarted",
    "settle",
    "recovery_needed",
    "reread_to_json",
    "reread_from_json",
    "from_json",
    "from_legacy",
    "legacy_flags",
]
