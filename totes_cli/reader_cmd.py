"""`totes reader`: the source's changes into Kinesis, forever (until SIGTERM/SIGINT)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from change_events import format_lsn
from change_events.metrics import Readings, emit_emf
from totes_cli import bootstrap
from totes_cli.console import err, fail, setup_logging
from totes_cli.options import EmfOption, PublicationOption, ResetOption, SlotOption, SourceOption, StreamOption
from totes_cli.reader_status import STATUS_SECONDS
from totes_cli.personal_data_config import personal_data_policy
from totes_cli.settings import ConfigError, NoSourceError, load, password_in_flag, resolve_source_dsn
from cdc_reader.bulk_settings import DEFAULT_CONNECTIONS
from cdc_reader.source import SourceConnectionError, has_password

if TYPE_CHECKING:  # the stages' libraries load when the command runs: `--help` stays light
    from cdc_reader.publisher import Publisher
    from cdc_reader.reader import Reader

log = logging.getLogger("totes.reader")

ConfirmingLakeOption = Annotated[
    Optional[str],
    typer.Option(
        "--lake",
        envvar="TOTES_LAKE",
        help="The lake the processor writes (a folder or s3://bucket/prefix): the slot is confirmed only up to its watermark. Only a lake set here, in TOTES_LAKE or in totes.toml counts.",
    ),
]
"""The reader's --lake: not the shared one (no default under TOTES_HOME), as it decides what
WAL the slot may forget (settings.LAKE_NAMED_ONLY)."""


class KinesisAcknowledged:
    """Durability only when asked for (`--durability kinesis`): what Kinesis has acknowledged
    counts as durable. The slot then forgets WAL the lake may never get: a processor stalled
    for longer than the stream's retention loses those events for good."""

    def __init__(self, publisher: Publisher):
        self.publisher = publisher

    def durable_lsn(self) -> int:
        return self.publisher.acknowledged_lsn


def choose_durability(lake: str | None, durability: str | None) -> str:
    """'lake' or 'kinesis', or a failure naming both options when neither is given."""
    wanted = (durability or "").strip().lower() or None
    if wanted not in (None, "lake", "kinesis"):
        raise fail(f"--durability must be 'lake' or 'kinesis', not {durability!r}.", code=2)
    if wanted == "kinesis":
        return "kinesis"
    if lake:
        return "lake"
    raise fail(
        "The reader needs to know when events are durable: pass --lake DIR|s3://bucket/prefix "
        "(or set TOTES_LAKE) to confirm only what the lake holds, or --durability kinesis to "
        "confirm what Kinesis acknowledged, at the risk of losing events if the processor stalls.",
        code=2,
    )


def _emit_emf(reader: Reader, publisher: Publisher, previous: Readings | None = None) -> Readings:
    """One CloudWatch embedded-metric-format line on stdout, its rates since the `previous`
    line (the first one's over STATUS_SECONDS); returns the readings to pass on to the next."""
    m = reader.metrics
    readings = previous or Readings(
        m, "events", "bytes_received", "schema_rereads", started=time.monotonic() - STATUS_SECONDS
    )
    added, seconds = readings.take()
    seconds = max(seconds, 1e-9)
    behind = [("SecondsBehindSource", "Seconds", time.time() - m.last_commit_ts)] if m.last_commit_ts else []
    emit_emf(
        "reader",
        ("EventsPerSecond", "CountPerSecond", added["events"] / seconds),
        ("BytesPerSecond", "BytesPerSecond", added["bytes_received"] / seconds),
        ("UnconfirmedWalBytes", "Bytes", max(m.received_lsn - m.confirmed_lsn, 0)),
        *behind,
        ("EventsPerRecord", "Count", publisher.metrics.events_per_record),
        ("SchemaRereads", "Count", added["schema_rereads"]),
    )
    return readings


def emit_slot_lost() -> None:
    """SlotLost = 1 as an EMF line: the slot was invalidated or dropped, changes are missing
    until `totes reader --reset` (the reader-slot-lost alarm)."""
    emit_emf("reader", ("SlotLost", "Count", 1))


def reader(
    source: SourceOption = None,
    stream: StreamOption = bootstrap.STREAM,
    shards: Annotated[
        int, typer.Option("--shards", help="Shards to create the stream with, if it does not exist.")
    ] = bootstrap.SHARDS,
    slot: SlotOption = None,
    publication: PublicationOption = bootstrap.PUBLICATION,
    tables: Annotated[
        Optional[str],
        typer.Option(
            "--tables", help="Comma-separated tables to publish \\[default: the 11 totesys tables].", show_default=False
        ),
    ] = None,
    state_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--state-dir",
            help="Where the reader keeps its small state \\[default: <lake>/_local/reader for a local lake, as `totes run`; else $TOTES_HOME/reader].",
        ),
    ] = None,
    resnapshot: Annotated[
        Optional[list[str]],
        typer.Option(
            "--resnapshot", help="Read this table again, chunk by chunk, while streaming continues (repeatable)."
        ),
    ] = None,
    emf: EmfOption = False,
    reset: ResetOption = False,
    lake: ConfirmingLakeOption = None,
    durability: Annotated[
        Optional[str],
        typer.Option(
            "--durability",
            envvar="TOTES_DURABILITY",
            help="'lake' (the default with --lake) or 'kinesis': confirm what Kinesis acknowledged, which loses events if the processor stalls longer than the stream's retention.",
            show_default=False,
        ),
    ] = None,
    snapshot_connections: Annotated[
        int,
        typer.Option(
            "--snapshot-connections",
            envvar="TOTES_SNAPSHOT_CONNECTIONS",
            min=1,
            help="Connections that read the initial snapshot's chunks in parallel (with --lake it goes straight into the lake).",
        ),
    ] = DEFAULT_CONNECTIONS,
) -> None:
    """Stream the source's changes into Kinesis: snapshot first if the slot is new, then
    the WAL, confirming to PostgreSQL only what the lake has committed (its watermark)."""
    from cdc_reader.publisher import PublishError
    from cdc_reader.reader import supervise
    from cdc_reader.source_setup import SlotLostError, SourceSetupError
    from lake.layout import LakeLayout
    from local_stack.kinesalite import KinesaliteError
    from lake.progress import LakeWatermark

    setup_logging(logging.INFO)
    if source and has_password(source):
        err.print(password_in_flag("--source", "source"))
    mode = choose_durability(lake, durability)
    try:
        dsn = resolve_source_dsn(source)
    except NoSourceError as error:
        raise fail(str(error), code=2) from None
    settings = load()
    try:
        policy = personal_data_policy(lake, settings)
    except ConfigError as error:
        raise fail(str(error), code=2) from None
    slot = slot or bootstrap.remembered_slot(lake)  # the slot and state `totes run` uses on this lake
    paths = bootstrap.StatePaths(lake, settings.home)
    table_list = bootstrap.source_tables(tables)
    try:
        publisher = bootstrap.kinesis_publisher(bootstrap.kinesis(stream, shards), stream)
    except (KinesaliteError, PublishError) as error:
        raise fail(str(error), code=2) from None
    except Exception as error:  # botocore: no endpoint, no credentials, ...
        raise fail(
            f"Kinesis is not reachable ({type(error).__name__}: {error}): set AWS_ENDPOINT_URL_KINESIS "
            "for a local endpoint, or AWS credentials and region for AWS.",
            code=2,
        ) from None

    unknown = [t for t in resnapshot or () if t not in table_list]
    if unknown:
        raise fail(f"--resnapshot {unknown[0]} is not one of the published tables: {', '.join(table_list)}.", code=2)
    if mode == "kinesis":
        log.warning(
            "durability is what Kinesis acknowledged: if the processor stalls for longer than the "
            "stream's retention, events PostgreSQL has already released are lost; pass --lake instead"
        )
        durable: KinesisAcknowledged | LakeWatermark = KinesisAcknowledged(publisher)
    else:
        durable = LakeWatermark(LakeLayout(lake), lambda: [shard.shard_id for shard in publisher.shards])
    the_reader = bootstrap.reader(
        dsn,
        publisher,
        durable,
        paths=paths,
        slot=slot,
        state_dir=state_dir,
        publication=publication,
        tables=table_list,
        lake=LakeLayout(lake) if mode == "lake" else None,
        resnapshot=tuple(resnapshot or ()),
        reset=reset,
        snapshot_connections=snapshot_connections,
        personal_data=policy,
    )
    stop = threading.Event()

    def stop_reading(*_) -> None:
        stop.set()
        the_reader.wake()  # it may be asleep on an idle source

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_reading)

    progress = Progress(
        TextColumn("snapshot {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, int] = {}

    def snapshot_progress(table: str, rows: int) -> None:
        if table not in tasks:
            progress.start()
            tasks[table] = progress.add_task(table, total=None)
        progress.update(tasks[table], completed=rows)

    the_reader.snapshot_progress = snapshot_progress
    status = bootstrap.status_writer(the_reader, publisher)

    def report() -> None:
        readings = None
        the_reader.streaming.wait()
        progress.stop()  # the snapshot, if any, is over
        while not stop.wait(STATUS_SECONDS):
            status.write()
            if emf:
                readings = _emit_emf(the_reader, publisher, readings)

    threading.Thread(target=report, name="status", daemon=True).start()
    err.print(f"reading {len(table_list)} tables into stream {stream!r} (slot {slot!r}); Ctrl-C stops")
    try:
        supervise(the_reader, stop)
    except SlotLostError as error:
        if emf:
            emit_slot_lost()
        raise fail(str(error), code=3) from None
    except (SourceSetupError, SourceConnectionError) as error:
        raise fail(str(error), code=2) from None
    except PublishError as error:
        raise fail(f"Kinesis stopped accepting records: {error}") from None
    finally:
        stop.set()
        progress.stop()
        status.write()
    err.print(f"stopped: {the_reader.metrics.events} events, confirmed {format_lsn(the_reader.metrics.confirmed_lsn)}")
