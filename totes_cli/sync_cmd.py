"""`totes sync`: the lake's change logs into the warehouse, up to the lake watermark."""

from __future__ import annotations

import signal
import threading
from contextlib import ExitStack
from typing import Annotated

import typer

from change_events import format_lsn, metrics
from totes_cli.console import err, fail
from totes_cli.options import EmfOption, LakeOption, StreamOption, WarehouseOption
from totes_cli import bootstrap
from totes_cli.settings import load, resolve_warehouse
from totes_cli.writer_lock import LakeBusy, writing
from cdc_reader.source import SourceConnectionError


def stream_shards(stream: str) -> list[str] | None:
    """The open shards of the stream (the watermark is their minimum), or None if the stream
    cannot be reached."""
    from change_events.kinesis import ShardMap

    try:
        return [shard.shard_id for shard in ShardMap.from_kinesis(bootstrap.kinesis(max_attempts=2), stream).shards]
    except Exception:
        return None


def open_target(warehouse: str):
    """The warehouse, with its libraries loaded here rather than when the command line starts."""
    from warehouse_sync.targets import open_target as open_warehouse

    return open_warehouse(warehouse)


EMF_SECONDS = 10.0


def emit_emf(runs: int, events: int, behind_lsn_bytes: int, rejected: int = 0) -> None:
    """One CloudWatch embedded-metric-format line on stdout: what the sync did since the last
    line. A sync that stops writing these is down (the "sync silent" alarm)."""
    metrics.emit_emf(
        "sync",
        ("SyncRuns", "Count", runs),
        ("EventsApplied", "Count", events),
        ("WarehouseBehindLakeBytes", "Bytes", behind_lsn_bytes),
        ("FactVersionsRejected", "Count", rejected),
    )


def _said(result) -> None:
    """What one sync applied (nothing when it applied nothing), and what it set aside."""
    if result.applied:
        facts = sum(result.facts_appended.values())
        err.print(f"synced {result.events:,} events up to {format_lsn(result.to_lsn)} ({facts:,} fact rows)")
    if result.facts_rejected:
        err.print(
            f"[yellow]{sum(result.facts_rejected.values()):,} fact versions hold values their "
            "star-schema column cannot: set aside in _sync_rejected[/]"
        )


def sync(
    lake: LakeOption = None,
    warehouse: WarehouseOption = None,
    stream: StreamOption = bootstrap.STREAM,
    once: Annotated[
        bool, typer.Option("--once", help="Sync once up to the current watermark and exit (for schedules).")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between syncs in continuous mode.")] = 1.0,
    emf: EmfOption = False,
) -> None:
    """Apply the lake's changes to the warehouse, never past the lake watermark (so never half
    a source transaction), exactly once."""
    from lake.layout import LakeLayout
    from lake.progress import Progress
    from warehouse_sync.sync_loop import SyncLoop

    home = load().home
    lake = lake or bootstrap.home_lake(home)
    layout = LakeLayout(lake)
    progress = Progress(layout)
    shards = stream_shards(stream)
    if shards is None:
        recorded = progress.history()
        shards = sorted(set(recorded.column("shard").to_pylist())) if recorded.num_rows else []
        err.print(
            f"[yellow]stream {stream!r} not reachable: using the {len(shards)} shards the lake has markers for[/]"
        )
    if not shards:
        raise fail("The lake has no watermark yet: run the reader and the processor first.", code=2)
    try:
        target = open_target(resolve_warehouse(warehouse, bootstrap.home_warehouse(home)))
    except SourceConnectionError as error:  # the warehouse PostgreSQL: one sentence, no password
        raise fail(str(error), code=2) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lock = ExitStack()
    try:
        lock.enter_context(writing(lake, home))  # `totes lake forget` refuses while this runs
    except LakeBusy as error:
        target.close()
        raise fail(str(error), code=2) from None
    try:
        SyncLoop(
            layout,
            target,
            lambda: progress.lake_watermark(shards),
            interval=interval,
            on_synced=_said,
            report=emit_emf if emf else None,
            report_seconds=EMF_SECONDS,
        ).run(stop, once=once)
    except SourceConnectionError as error:  # reconnecting failed: one sentence, no password
        raise fail(f"{error} The sync resumes from its checkpoint when started again.") from None
    except Exception as error:
        if not target.lost_connection(error):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise fail(
            f"The warehouse kept dropping the connection ({first}); the sync resumes from its "
            "checkpoint when started again."
        ) from None
    finally:
        lock.close()
        target.close()
