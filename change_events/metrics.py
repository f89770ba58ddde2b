"""What the stages count, and the three ways it is read, each given here once.

Every stage keeps its counters in a dataclass of its own, each field saying what it counts:
the reader's (`cdc_reader.reader.ReaderMetrics`), its Kinesis sink's
(`cdc_reader.publisher.PublisherMetrics`), the bulk path's (`cdc_reader.bulk_snapshot.BatchStats`)
and the warehouse sync's (`warehouse_sync.sync_loop.SyncStats`). They are read

- as they are now, `Counters.as_dict` (the reader's status file, which `totes status` and the
  dashboard read, and the benchmarks' results);
- as what some of them added since the previous reading and over how long, `Readings` (the
  rates of the reader's status file and EMF lines, the sync's reports);
- as one CloudWatch embedded-metric-format line on stdout, `emit_emf` (the alarms in
  infra/alarms.tf watch these lines' metrics).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from change_events.names import METRICS_NAMESPACE


@dataclass
class Counters:
    """Base of a stage's counters: a dataclass of numbers that start at zero and grow, beside
    a few values it notes as they are (positions, times)."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Readings:
    """Readings of some of one stage's counters, taken now and then: each `take()` says what
    each of `names` added since the previous reading (since zero for the first) and over how
    many seconds of `clock` (since `started`, by default now, for the first).

    `counters` is read by attribute, so any object with those attributes will do."""

    def __init__(
        self, counters: object, *names: str, clock: Callable[[], float] = time.monotonic, started: float | None = None
    ):
        self.counters = counters
        self.names = names
        self._clock = clock
        self._then = dict.fromkeys(names, 0)
        self._at = clock() if started is None else started

    def take(self) -> tuple[dict[str, int], float]:
        """(what each counter added since the previous reading, the seconds between the two)."""
        at, now = self._clock(), {name: getattr(self.counters, name) for name in self.names}
        added = {name: now[name] - self._then[name] for name in self.names}
        seconds, self._then, self._at = at - self._at, now, at
        return added, seconds


def emit_emf(service: str, *metrics: tuple[str, str, float]) -> None:
    """One CloudWatch embedded-metric-format line on stdout: `service`'s metrics, each
    (name, unit, value), the unit a `MetricUnit` member's name (Count, Bytes, Seconds...), in
    the stages' namespace."""
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics import MetricUnit

    line = Metrics(namespace=METRICS_NAMESPACE, service=service)
    for name, unit, value in metrics:
        line.add_metric(name=name, unit=MetricUnit[unit], value=value)
    line.flush_metrics()
    sys.stdout.flush()  # to a pipe (a container's log driver) the line would wait for 8 KiB more
