"""local_stack.cloudwatch on crafted datapoints: CloudWatch's documented alarm semantics,
missing data treatments included, and EMF lines read as CloudWatch reads them."""

from __future__ import annotations

import json

import pytest

from local_stack.cloudwatch import ALARM, INSUFFICIENT_DATA, OK, Datapoint, MetricAlarm, emf_datapoints, evaluate

DIMS = {"service": "reader"}


def alarm(**overrides) -> MetricAlarm:
    settings = dict(
        name="a",
        namespace="ns",
        metric="M",
        dimensions=DIMS,
        statistic="Maximum",
        period=60,
        evaluation_periods=3,
        threshold=10,
        comparison="GreaterThanThreshold",
        treat_missing_data="missing",
    )
    settings.update(overrides)
    return MetricAlarm(**settings)


def points(values: str, period: int = 60, start: int = 6000, metric: str = "M") -> list[Datapoint]:
    """One datapoint per period from a pattern: X breaching (20), 0 within (0), - missing."""
    found = []
    for i, mark in enumerate(values.split()):
        if mark != "-":
            found.append(
                Datapoint("ns", metric, frozenset(DIMS.items()), start + i * period + 1, 20.0 if mark == "X" else 0.0)
            )
    return found


def state(values: str, treatment: str, previous: str = INSUFFICIENT_DATA, **overrides) -> str:
    """The state right after the last of the five periods of `values` ended."""
    evaluated = alarm(treat_missing_data=treatment, **overrides)
    return evaluate(evaluated, points(values), at=6000 + 5 * 60, previous=previous).state


# The documented table for 3 of 3 (the evaluation range reads five periods), oldest first.
@pytest.mark.parametrize(
    "values, missing, ignore, breaching, not_breaching",
    [
        ("0 - X - X", OK, OK, OK, OK),
        ("- - - - 0", OK, OK, OK, OK),
        ("- - - - -", INSUFFICIENT_DATA, "kept", ALARM, OK),
        ("0 X X - X", ALARM, ALARM, ALARM, ALARM),
        ("- - X - -", ALARM, "kept", ALARM, OK),
    ],
)
def test_three_of_three_with_each_missing_data_treatment(values, missing, ignore, breaching, not_breaching):
    assert state(values, "missing") == missing
    assert state(values, "ignore", previous="PREVIOUS") == ("PREVIOUS" if ignore == "kept" else ignore)
    assert state(values, "breaching") == breaching
    assert state(values, "notBreaching") == not_breaching


def test_m_out_of_n_needs_m_breaching_values_not_consecutive_ones():
    assert state("- - X 0 X", "notBreaching", datapoints_to_alarm=2) == ALARM
    assert state("- - X 0 0", "notBreaching", datapoints_to_alarm=2) == OK
    assert state("- - 0 X -", "breaching", datapoints_to_alarm=2) == ALARM  # one missing filled as breaching


def test_enough_real_values_in_the_range_make_the_treatment_irrelevant():
    # Four real values in five periods: the last three are evaluated, missing ones do not matter.
    assert state("X X - 0 X", "breaching") == OK
    assert state("X X X - X", "notBreaching") == ALARM


def test_only_periods_that_ended_count_and_periods_align_to_the_epoch():
    evaluated = alarm(evaluation_periods=1)
    breach = [Datapoint("ns", "M", frozenset(DIMS.items()), 6030, 20.0)]  # inside [6000, 6060)
    assert evaluate(evaluated, breach, at=6059).state == INSUFFICIENT_DATA  # period not over yet
    assert evaluate(evaluated, breach, at=6060).state == ALARM
    assert evaluate(evaluated, breach, at=6119).state == ALARM  # next period still open
    assert evaluate(evaluated, breach, at=6120 + 2 * 60).state == INSUFFICIENT_DATA  # out of the range


@pytest.mark.parametrize(
    "statistic, expected", [("Maximum", 9), ("Minimum", 1), ("Sum", 15), ("Average", 5), ("SampleCount", 3)]
)
def test_statistics_aggregate_a_period(statistic, expected):
    evaluated = alarm(
        statistic=statistic, evaluation_periods=1, threshold=expected, comparison="GreaterThanOrEqualToThreshold"
    )
    period = [Datapoint("ns", "M", frozenset(DIMS.items()), 6000 + i, v) for i, v in enumerate((1, 5, 9))]
    result = evaluate(evaluated, period, at=6060)
    assert result.values[-1] == expected and result.state == ALARM
    assert (
        evaluate(
            alarm(statistic=statistic, evaluation_periods=1, threshold=expected, comparison="GreaterThanThreshold"),
            period,
            at=6060,
        ).state
        == OK
    )


def test_a_silent_metric_with_missing_data_breaching_alarms_once_its_last_values_leave_the_range():
    silent = alarm(
        statistic="SampleCount",
        threshold=1,
        comparison="LessThanThreshold",
        evaluation_periods=2,
        treat_missing_data="breaching",
        period=300,
    )
    reports = [Datapoint("ns", "M", frozenset(DIMS.items()), t, 1.0) for t in range(6000, 6600, 5)]
    assert evaluate(silent, reports, at=6600).state == OK
    # While the evaluation range (2 + 2 periods) still holds real values, they decide.
    assert evaluate(silent, reports, at=6600 + 600).state == OK  # both real values in the range
    assert evaluate(silent, reports, at=6600 + 900).state == OK  # one left: 1 of 2 breaching
    assert evaluate(silent, reports, at=6600 + 1200).state == ALARM


def test_other_metrics_dimensions_and_namespaces_are_not_watched():
    evaluated = alarm(evaluation_periods=1, treat_missing_data="missing")
    others = [
        Datapoint("ns", "Other", frozenset(DIMS.items()), 6001, 99.0),
        Datapoint("ns", "M", frozenset({("service", "sync")}), 6001, 99.0),
        Datapoint("other", "M", frozenset(DIMS.items()), 6001, 99.0),
    ]
    assert evaluate(evaluated, others, at=6060).state == INSUFFICIENT_DATA


def test_an_alarm_cloudwatch_would_refuse_is_refused():
    with pytest.raises(ValueError, match="statistic 'p99'"):
        alarm(statistic="p99")
    with pytest.raises(ValueError, match="treat_missing_data"):
        alarm(treat_missing_data="sometimes")
    with pytest.raises(ValueError, match="datapoints_to_alarm"):
        alarm(datapoints_to_alarm=4)


def test_emf_lines_become_datapoints_at_their_timestamps():
    line = json.dumps(
        {
            "_aws": {
                "Timestamp": 1_700_000_000_500,
                "CloudWatchMetrics": [
                    {
                        "Namespace": "totes-cdc",
                        "Dimensions": [["service"]],
                        "Metrics": [{"Name": "DeadLetters", "Unit": "Count"}, {"Name": "Events", "Unit": "Count"}],
                    }
                ],
            },
            "service": "processor",
            "DeadLetters": [1, 2],
            "Events": 7,
        }
    )
    found = emf_datapoints(["a log line", "{not json", line, '{"other": "json"}'])
    dims = frozenset({("service", "processor")})
    assert sorted((p.metric, p.value) for p in found) == [("DeadLetters", 1.0), ("DeadLetters", 2.0), ("Events", 7.0)]
    assert {(p.namespace, p.dimensions, p.timestamp) for p in found} == {("totes-cdc", dims, 1_700_000_000.5)}
