"""`totes run`: every stage in one process against any PostgreSQL."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from cdc_reader.source_setup import SourceSetupError
from lake.maintenance import DEFAULT_RETENTION, format_retention
from change_events import format_lsn
from totes_cli.console import err, fail
from totes_cli.lake_cmd import RetainOption, retention_option
from totes_cli.pipeline import DEFAULT_WINDOW, Pipeline, PipelineConfig, windowed
from totes_cli.settings import NoSourceError, load, resolve_source_dsn
from totesys.connection import SourceConnectionError

REPORT_SECONDS = 5.0


def default_lake(home: Path) -> str:
    return str(home / "lake")


def default_warehouse(home: Path) -> str:
    return str(home / "warehouse.duckdb")


def progress_line(pipeline: Pipeline) -> str:
    reader, poller, sync = pipeline.reader, pipeline.poller, pipeline.sync
    return (f"reader {reader.metrics.events + reader.metrics.snapshot_events:,} events "
            f"(confirmed {format_lsn(reader.metrics.confirmed_lsn)}) | "
            f"processor {poller.events:,} events in {poller.batches:,} batches | "
            f"warehouse {sync.events:,} events up to {format_lsn(sync.synced_upto)}")


def run(
    source: Annotated[Optional[str], typer.Option("--source", help="Source DSN \\[default: $TOTES_SOURCE_DSN, else the embedded totesys].")] = None,
    lake: Annotated[Optional[str], typer.Option("--lake", envvar="TOTES_LAKE", help="The lake: a folder or s3://bucket/prefix \\[default: $TOTES_HOME/lake].")] = None,
    warehouse: Annotated[Optional[str], typer.Option("--warehouse", envvar="TOTES_WAREHOUSE", help="A DuckDB file or a PostgreSQL DSN \\[default: $TOTES_HOME/warehouse.duckdb].")] = None,
    until_caught_up: Annotated[bool, typer.Option("--until-caught-up", help="Exit 0 once everything committed before the start is in the warehouse.")] = False,
    stream: Annotated[str, typer.Option("--stream", envvar="TOTES_STREAM", help="Kinesis stream name.")] = "totes-cdc",
    shards: Annotated[int, typer.Option("--shards", help="Shards for a new stream.")] = 2,
    slot: Annotated[Optional[str], typer.Option("--slot", help="Replication slot \\[default: named after the lake, remembered in it].")] = None,
    window: Annotated[float, typer.Option("--window", help="Seconds the processor gathers each shard's records into one lake commit per table: the default gives about half a second from commit to warehouse at 1,000 changes/s; larger windows mean fewer, bigger lake files, smaller ones lower latency (compacted by the lake maintenance, see --maintain-every).")] = DEFAULT_WINDOW,
    reset: Annotated[bool, typer.Option("--reset", help="After a lost slot (invalidated or dropped): drop it, create a new one and take a snapshot that replaces every table downstream. Run once.")] = False,
    maintain_every: Annotated[float, typer.Option("--maintain-every", envvar="TOTES_MAINTAIN_EVERY", help="Longest time in seconds between rounds of lake maintenance (compaction, checkpoint, vacuum, as `totes lake maintain`) while running; a round comes sooner once the lake has grown by half its live data. 0 turns it off.")] = 3600.0,
    retain: RetainOption = format_retention(DEFAULT_RETENTION),
) -> None:
    """Run reader, stream, processor and warehouse sync together. Without a Kinesis endpoint
    (AWS_ENDPOINT_URL_KINESIS) a local kinesalite is started inside the lake."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    retention = retention_option(retain)
    try:
        dsn = resolve_source_dsn(source)
    except NoSourceError as error:
        raise fail(str(error), code=2) from None
    home = load().home
    config = PipelineConfig(source_dsn=dsn, lake=lake or default_lake(home),
                            warehouse=warehouse or default_warehouse(home), stream=stream, shards=shards, slot=slot,
                            maintain_every=maintain_every, reset=reset, retention=retention)
    pipeline = Pipeline(windowed(config, window))
    signal.signal(signal.SIGTERM, lambda *_: pipeline.stop.set())
    last_report = [time.monotonic()]

    def tick(p: Pipeline) -> None:
        if time.monotonic() - last_report[0] >= REPORT_SECONDS:
            err.print(progress_line(p))
            last_report[0] = time.monotonic()

    err.print(f"lake {config.lake}, warehouse {config.warehouse}; Ctrl-C stops")
    try:
        pipeline.run(until_caught_up=until_caught_up, on_tick=tick)
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
