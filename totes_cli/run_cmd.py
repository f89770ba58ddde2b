"""`totes run`: every stage in one process against any PostgreSQL."""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lake.retention import DEFAULT_RETENTION, format_retention
from change_events import format_lsn
from change_events.errors import SOURCE_WAIT, is_retryable
from totes_cli.console import err, fail, setup_logging
from totes_cli.lake_cmd import RetainOption, retention_option
from totes_cli.options import LakeOption, ResetOption, SlotOption, SourceOption, StreamOption, WarehouseOption
from totes_cli import bootstrap
from totes_cli.settings import ConfigError, password_in_flag, shown
from cdc_reader.source import SourceConnectionError, connect, has_password

if TYPE_CHECKING:  # loaded by the command itself: `totes run --help` stays light
    from totes_cli.pipeline import Pipeline

REPORT_SECONDS = 5.0
DEFAULT_WAIT_FOR_SOURCE = SOURCE_WAIT.within


def wait_until_reachable(dsn: str, seconds: float, *, what: str = "source", on_wait=None, sleep=time.sleep) -> None:
    """Connect once to `dsn`, retrying while the failure is transient (the server is down or
    starting) for up to `seconds` (inf: for ever). A wrong DSN, password or right fails at
    once; a server still down at the deadline fails with the flag that waits longer. Without
    this a pipeline started against a wrong host would retry for ever and leave an empty lake
    behind; once running, the reader reconnects for ever (a restart is no reason to stop).
    `on_wait` is told the problem once, when the waiting starts. How often: `SOURCE_WAIT`."""
    policy = replace(SOURCE_WAIT, within=seconds)
    started = time.monotonic()
    failures = 0
    while True:
        remaining = started + seconds - time.monotonic()
        try:
            connect(dsn, what=what, connect_timeout=int(max(2, min(10, remaining)))).close()
            return
        except SourceConnectionError as error:
            if not is_retryable(error):
                raise
            failures += 1
            delay = policy.next_wait(failures, started)
            if delay is None:
                waited = f"after waiting {seconds:g} s" if seconds > 0 else "at once"
                raise SourceConnectionError(
                    f"{str(error).rstrip('.')} ({waited}; --wait-for-source SECONDS waits longer, inf for ever).",
                    transient=True,
                ) from None
            if on_wait is not None and failures == 1:
                on_wait(str(error))
            sleep(delay)


def _from_command_line(context: typer.Context, name: str) -> bool:
    """Whether option `name` was typed on the command line (not taken from the environment or
    totes.toml). typer carries its own click, so the context is the one it passes in."""
    source = context.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def progress_line(pipeline: Pipeline) -> str:
    reader, poller, sync = pipeline.reader, pipeline.poller, pipeline.sync
    return (
        f"reader {reader.metrics.events + reader.metrics.snapshot_events:,} events "
        f"(confirmed {format_lsn(reader.metrics.confirmed_lsn)}) | "
        f"processor {poller.events:,} events in {poller.batches:,} batches | "
        f"warehouse {sync.events:,} events up to {format_lsn(sync.synced_upto)}"
    )


def _caught_up_already(places: bootstrap.PipelinePlaces, stream: str) -> bool:
    """Nothing new at the source since the last run, and the warehouse has all the lake holds:
    said in one line, with no pipeline started (totes_cli/catch_up.py)."""
    from totes_cli.catch_up import nothing_to_catch_up

    lake, warehouse = places.lake, places.warehouse
    upto = nothing_to_catch_up(source_dsn=places.source_dsn, lake=lake, warehouse=warehouse, stream=stream)
    if upto is None:
        return False
    err.print(
        f"lake {lake}, warehouse {shown(warehouse)}: nothing new at the source before {format_lsn(upto)}, "
        "the warehouse is up to date"
    )
    return True


def _verify_every(text: str | None) -> float:
    """--verify-every as seconds (0: off), or one sentence and exit code 2."""
    from datetime import timedelta

    from lake.retention import RetentionError, parse_retention

    if not text:
        return 0.0
    try:
        return parse_retention(text, minimum=timedelta(seconds=10), flag="--verify-every").total_seconds()
    except RetentionError as error:
        raise fail(str(error), code=2) from None


def _verified(result) -> None:
    from totes_cli.verify_cmd import emit_emf, summary

    err.print(summary(result))
    emit_emf(result)


def run(
    context: typer.Context,
    source: SourceOption = None,
    lake: LakeOption = None,
    warehouse: WarehouseOption = None,
    until_caught_up: Annotated[
        bool,
        typer.Option(
            "--until-caught-up", help="Exit 0 once everything committed before the start is in the warehouse."
        ),
    ] = False,
    stream: StreamOption = bootstrap.STREAM,
    shards: Annotated[int, typer.Option("--shards", help="Shards for a new stream.")] = bootstrap.SHARDS,
    slot: SlotOption = None,
    window: Annotated[
        float,
        typer.Option(
            "--window",
            help="Seconds the processor gathers each shard's records into one lake commit per table: the default gives about half a second from commit to warehouse at 1,000 changes/s; larger windows mean fewer, bigger lake files, smaller ones lower latency (compacted by the lake maintenance, see --maintain-every).",
        ),
    ] = bootstrap.WINDOW,
    reset: ResetOption = False,
    maintain_every: Annotated[
        float,
        typer.Option(
            "--maintain-every",
            envvar="TOTES_MAINTAIN_EVERY",
            help="Longest time in seconds between rounds of lake maintenance (compaction, checkpoint, vacuum, as `totes lake maintain`) while running; a round comes sooner once the lake has grown by half its live data. 0 turns it off.",
        ),
    ] = 3600.0,
    retain: RetainOption = format_retention(DEFAULT_RETENTION),
    verify_every: Annotated[
        Optional[str],
        typer.Option(
            "--verify-every",
            help="Verify source, lake and warehouse at one LSN (as `totes verify`) this often, like 1h or 15m, printing the result and a CloudWatch EMF line of the rows that differ; off unless set.",
        ),
    ] = None,
    wait_for_source: Annotated[
        float,
        typer.Option(
            "--wait-for-source",
            envvar="TOTES_WAIT_FOR_SOURCE",
            help="Seconds to wait at the start for a source (or PostgreSQL warehouse) that does not answer yet, before exiting with an error; inf waits for ever (a service that starts before its database).",
        ),
    ] = DEFAULT_WAIT_FOR_SOURCE,
) -> None:
    """Run reader, stream, processor and warehouse sync together. Without a Kinesis endpoint
    (AWS_ENDPOINT_URL_KINESIS) a local kinesalite is started inside the lake."""
    from cdc_reader.source_setup import SourceSetupError
    from warehouse_sync.targets import is_postgres_dsn

    setup_logging(logging.WARNING)
    if source and _from_command_line(context, "source") and has_password(source):
        err.print(password_in_flag("--source", "source"))
    if warehouse and _from_command_line(context, "warehouse") and has_password(warehouse):
        err.print(password_in_flag("--warehouse", "warehouse"))
    retention = retention_option(retain)
    verify_seconds = _verify_every(verify_every)
    try:
        places = bootstrap.pipeline_places(source, lake, warehouse)
    except ConfigError as error:
        raise fail(str(error), code=2) from None
    try:
        for what, target in (("source", places.source_dsn), ("warehouse", places.warehouse)):
            if what == "source" or is_postgres_dsn(target):
                wait_until_reachable(
                    target,
                    wait_for_source,
                    what=what,
                    on_wait=lambda problem: err.print(f"waiting up to {wait_for_source:g} s: {problem}"),
                )
    except SourceConnectionError as error:
        raise fail(str(error), code=2) from None
    if until_caught_up and not reset and _caught_up_already(places, stream):
        return
    from totes_cli.pipeline import Pipeline, windowed

    config = places.config(
        stream=stream,
        shards=shards,
        slot=slot,
        maintain_every=maintain_every,
        reset=reset,
        retention=retention,
        verify_every=verify_seconds,
        on_verified=_verified,
    )
    pipeline = Pipeline(windowed(config, window))
    signal.signal(signal.SIGTERM, lambda *_: pipeline.stop.set())
    last_report = [time.monotonic()]

    def tick(p: Pipeline) -> None:
        if time.monotonic() - last_report[0] >= REPORT_SECONDS:
            err.print(progress_line(p))
            last_report[0] = time.monotonic()

    err.print(f"lake {config.lake}, warehouse {shown(config.warehouse)}; Ctrl-C stops")
    from totes_cli.writer_lock import LakeBusy, writing

    try:
        with writing(config.lake, places.home):  # forget waits for no writer: it refuses while this runs
            pipeline.run(until_caught_up=until_caught_up, on_tick=tick)
    except LakeBusy as error:
        raise fail(str(error), code=2) from None
    except KeyboardInterrupt:
        err.print("stopping ...")
    except SourceConnectionError as error:
        raise fail(str(error), code=2) from None
    if pipeline.errors:
        stage, error = pipeline.errors[0]
        code = 2 if isinstance(error, (SourceSetupError, SourceConnectionError)) else 1
        raise fail(f"the {stage} stopped: {error}", code=code)
    if pipeline.reader is not None:
        err.print(progress_line(pipeline))
