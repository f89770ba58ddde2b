"""`totes processor`: the stream into the lake, locally, through the Lambda handler's code."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Annotated

import typer

from totes_cli import bootstrap
from totes_cli.console import err, fail, setup_logging
from totes_cli.options import LakeOption, StreamOption
from totes_cli.settings import load


class _BatchMetrics:
    """The Lambda's metrics for the local processor: one EMF line per batch, as the Lambda
    prints one per invocation. Shards are processed in threads and powertools' `Metrics`
    share one set per process, so each thread gathers its batch's metrics on its own."""

    def __init__(self):
        self._local = threading.local()

    def _current(self):
        from aws_lambda_powertools.metrics import EphemeralMetrics

        if getattr(self._local, "metrics", None) is None:
            self._local.metrics = EphemeralMetrics(namespace=bootstrap.METRICS_NAMESPACE, service="processor")
        return self._local.metrics

    def add_metric(self, **metric) -> None:
        self._current().add_metric(**metric)

    def flush(self) -> None:
        metrics, self._local.metrics = getattr(self._local, "metrics", None), None
        if metrics is not None:
            metrics.flush_metrics()
            sys.stdout.flush()  # a pipe (a container's log driver) would hold the line back


def _measured_processor(lake: str):
    """A StreamProcessor that prints its batch's metrics after each batch (the Lambda's shape)."""
    from lake.writer import LakeWriter
    from stream_processors.handler import StreamProcessor

    class MeasuredProcessor(StreamProcessor):
        def process(self, event: dict):
            try:
                return super().process(event)
            finally:
                self.metrics.flush()

    return MeasuredProcessor(LakeWriter(lake), _BatchMetrics())


def processor(
    lake: LakeOption = None,
    stream: StreamOption = bootstrap.STREAM,
    window: Annotated[
        float, typer.Option("--window", help="Seconds to gather a shard's records into one batch.")
    ] = 1.0,
    emf: Annotated[
        bool,
        typer.Option(
            "--emf", help="Print the Lambda's CloudWatch embedded-metric-format line to stdout after every batch."
        ),
    ] = False,
) -> None:
    """Poll every shard of the stream and write the lake with the Lambda handler's code."""
    from lake.writer import LakeWriter
    from stream_processors.handler import StreamProcessor

    setup_logging(logging.INFO)
    settings = load()
    lake = lake or settings.lake_location
    try:
        client = bootstrap.kinesis()
        stream_processor = _measured_processor(lake) if emf else StreamProcessor(LakeWriter(lake))
        paths = bootstrap.StatePaths(lake, settings.home)
        poller = bootstrap.poller(client, stream, stream_processor, paths=paths, batch_window=window)
    except Exception as error:
        raise fail(
            f"Cannot read stream {stream!r} ({type(error).__name__}: {error}): check "
            "AWS_ENDPOINT_URL_KINESIS (local) or AWS credentials, and that the reader created the stream.",
            code=2,
        ) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    err.print(f"processing stream {stream!r} into {lake}; Ctrl-C stops")
    from totes_cli.writer_lock import LakeBusy, writing

    try:
        with writing(lake, settings.home):  # `totes lake forget` refuses while this runs
            poller.run(stop)
    except LakeBusy as error:
        raise fail(str(error), code=2) from None
    err.print(f"stopped: {poller.batches} batches, {poller.events} events")
