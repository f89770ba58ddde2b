"""CloudWatch metric alarms, evaluated here: moto stores alarms but never evaluates them.

A small pure core over plain data. `emf_datapoints` reads embedded-metric-format lines (what
`totes reader|processor|sync --emf` print, what CloudWatch Logs turns into metrics);
`evaluate` gives an alarm's state at a time `at`, following CloudWatch's documented
semantics ("Using Amazon CloudWatch alarms", "Configuring how CloudWatch alarms treat
missing data"):

- the datapoints of one period are aggregated with the alarm's statistic; a period without
  datapoints is *missing* (SampleCount gives no 0 for it: no data, no datapoint);
- periods are aligned to multiples of the period since the epoch, and only periods that
  ended by `at` count;
- CloudWatch retrieves more periods than `evaluation_periods` (the *evaluation range*; its
  documented example reads 5 for 3, so here `evaluation_periods + 2`). When the range holds
  at least `evaluation_periods` real values, the most recent ones are evaluated and the
  missing-data treatment does not matter. Otherwise the missing periods are filled
  according to `treat_missing_data`, as few as needed:
  `breaching` / `notBreaching` fill them as such; `missing` leaves them out (no real value at
  all: INSUFFICIENT_DATA); `ignore` keeps the previous state unless the real values decide;
- ALARM when at least `datapoints_to_alarm` (default: `evaluation_periods`) of the
  evaluated values breach, else OK.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

OK, ALARM, INSUFFICIENT_DATA = "OK", "ALARM", "INSUFFICIENT_DATA"

COMPARISONS = {
    "GreaterThanThreshold": lambda value, threshold: value > threshold,
    "GreaterThanOrEqualToThreshold": lambda value, threshold: value >= threshold,
    "LessThanThreshold": lambda value, threshold: value < threshold,
    "LessThanOrEqualToThreshold": lambda value, threshold: value <= threshold,
}
STATISTICS = {
    "SampleCount": lambda values: float(len(values)),
    "Sum": lambda values: float(sum(values)),
    "Average": lambda values: sum(values) / len(values),
    "Minimum": lambda values: float(min(values)),
    "Maximum": lambda values: float(max(values)),
}
MISSING_TREATMENTS = ("breaching", "notBreaching", "ignore", "missing")
EXTRA_PERIODS = 2
"""The evaluation range holds this many periods more than `evaluation_periods`."""


@dataclass(frozen=True)
class Datapoint:
    """One value of one metric at one time (seconds since the epoch)."""

    namespace: str
    metric: str
    dimensions: frozenset[tuple[str, str]]
    timestamp: float
    value: float


@dataclass(frozen=True)
class MetricAlarm:
    """The parts of an `aws_cloudwatch_metric_alarm` that decide its state."""

    name: str
    namespace: str
    metric: str
    dimensions: Mapping[str, str]
    statistic: str
    period: int
    evaluation_periods: int
    threshold: float
    comparison: str
    datapoints_to_alarm: int | None = None
    treat_missing_data: str = "missing"
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.statistic not in STATISTICS:
            problems.append(f"statistic {self.statistic!r} is not one of {', '.join(STATISTICS)}")
        if self.comparison not in COMPARISONS:
            problems.append(f"comparison {self.comparison!r} is not one of {', '.join(COMPARISONS)}")
        if self.treat_missing_data not in MISSING_TREATMENTS:
            problems.append(
                f"treat_missing_data {self.treat_missing_data!r} is not one of {', '.join(MISSING_TREATMENTS)}"
            )
        if self.period <= 0 or self.evaluation_periods <= 0:
            problems.append("period and evaluation_periods must be positive")
        if not 0 < self.to_alarm <= self.evaluation_periods:
            problems.append("datapoints_to_alarm must be between 1 and evaluation_periods")
        if problems:
            raise ValueError(f"alarm {self.name}: " + "; ".join(problems))

    @property
    def to_alarm(self) -> int:
        return self.evaluation_periods if self.datapoints_to_alarm is None else self.datapoints_to_alarm

    def watches(self, point: Datapoint) -> bool:
        return (
            point.namespace == self.namespace
            and point.metric == self.metric
            and point.dimensions == frozenset(self.dimensions.items())
        )

    def breaches(self, value: float) -> bool:
        return COMPARISONS[self.comparison](value, self.threshold)


@dataclass(frozen=True)
class Evaluation:
    state: str
    values: list[float | None] = field(default_factory=list)
    """The evaluation range's period values, oldest first (None: missing)."""
    reason: str = ""


def period_values(alarm: MetricAlarm, points: Iterable[Datapoint], at: float) -> list[float | None]:
    """The aggregated value of each period of the evaluation range ending at or before `at`,
    oldest first; None for a period without datapoints."""
    end = math.floor(at / alarm.period) * alarm.period
    count = alarm.evaluation_periods + EXTRA_PERIODS
    start = end - count * alarm.period
    buckets: list[list[float]] = [[] for _ in range(count)]
    for point in points:
        if alarm.watches(point) and start <= point.timestamp < end:
            buckets[int((point.timestamp - start) // alarm.period)].append(point.value)
    return [STATISTICS[alarm.statistic](bucket) if bucket else None for bucket in buckets]


def evaluate(
    alarm: MetricAlarm, points: Iterable[Datapoint], at: float, previous: str = INSUFFICIENT_DATA
) -> Evaluation:
    """The alarm's state at `at` from the datapoints it watches (see the module doc)."""
    values = period_values(alarm, points, at)
    real = [v for v in values if v is not None]
    n, m = alarm.evaluation_periods, alarm.to_alarm
    if len(real) >= n:
        return _decide(alarm, values, real[-n:], f"the last {n} real values")
    treatment = alarm.treat_missing_data
    fill = n - len(real)
    if treatment in ("breaching", "notBreaching"):
        # The filled periods count as breaching or not; the real values are all kept.
        breaching = sum(alarm.breaches(v) for v in real) + (fill if treatment == "breaching" else 0)
        state = ALARM if breaching >= m else OK
        return Evaluation(state, values, f"{breaching} of {n} breaching ({fill} missing treated as {treatment})")
    if not real:
        state = INSUFFICIENT_DATA if treatment == "missing" else previous
        return Evaluation(state, values, f"no data in the evaluation range ({treatment})")
    breaching = sum(alarm.breaches(v) for v in real)
    if treatment == "missing":
        # Missing periods are left out: the real values decide, needing as many breaches
        # as there are real values when they are fewer than datapoints_to_alarm.
        state = ALARM if breaching >= min(m, len(real)) else OK
        return Evaluation(state, values, f"{breaching} of {len(real)} real values breaching (missing left out)")
    # ignore: the real values decide only when the missing ones could not change the outcome.
    if breaching >= m:
        return Evaluation(ALARM, values, f"{breaching} real values breaching")
    if len(real) - breaching > n - m:
        return Evaluation(OK, values, f"{len(real) - breaching} real values within the threshold")
    return Evaluation(previous, values, "not enough real values: the state is kept (ignore)")


def _decide(alarm: MetricAlarm, values: list[float | None], evaluated: list[float], what: str) -> Evaluation:
    breaching = sum(alarm.breaches(v) for v in evaluated)
    state = ALARM if breaching >= alarm.to_alarm else OK
    return Evaluation(state, values, f"{breaching} of {what} breaching (needs {alarm.to_alarm})")


def emf_datapoints(lines: Iterable[str]) -> list[Datapoint]:
    """Every metric value in embedded-metric-format lines, stamped with its `_aws.Timestamp`.

    Other lines (logs, progress) are skipped; a value list is one datapoint per value, as
    CloudWatch reads it."""
    points = []
    for line in lines:
        line = line.strip()
        if not (line.startswith("{") and '"_aws"' in line):
            continue
        try:
            document = json.loads(line)
            meta = document["_aws"]
            timestamp = float(meta["Timestamp"]) / 1000
            directives = meta["CloudWatchMetrics"]
        except (ValueError, KeyError, TypeError):
            continue
        for directive in directives:
            for dimension_set in directive.get("Dimensions") or [[]]:
                dimensions = frozenset((name, str(document[name])) for name in dimension_set)
                for metric in directive.get("Metrics", []):
                    value = document.get(metric["Name"])
                    for one in value if isinstance(value, list) else [value]:
                        if isinstance(one, (int, float)) and not isinstance(one, bool):
                            points.append(
                                Datapoint(directive["Namespace"], metric["Name"], dimensions, timestamp, float(one))
                            )
    return points
