"""The processor's alarms fired from the Lambda entry point (errors, retrying, gave up) and the
verification's mismatch alarm; each alarm's definition read from infra/alarms.tf and evaluated by
`local_stack.cloudwatch` on a time axis faster than the clock (tests/alarm_probes.py)."""

from __future__ import annotations

import io
import json
import threading
import time
from contextlib import redirect_stdout


from change_events import encode_events
from local_stack.cloudwatch import ALARM, OK, Datapoint, emf_datapoints
from stream_processors.poller import lambda_record
from tests.moto_s3 import UNREACHABLE_S3
from tests.run_process import wait_for
from tests.stream_helpers import new_stream
from tests.terraform_alarms import metric_alarms
from tests.alarm_probes import alarm_home  # noqa: F401  (the `home` fixture)
from tests.alarm_probes import FUNCTION, Axis, Probe, references


class _LambdaContext:
    function_name, memory_limit_in_mb, invoked_function_arn, aws_request_id = FUNCTION, 512, "arn:p", "r-1"

    def get_remaining_time_in_millis(self) -> int:
        return 100  # the handler's back-off pauses at most half of it


def _records_from(kinesis, stream: str) -> list[dict]:
    [shard] = kinesis.list_shards(StreamName=stream)["Shards"]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    arn = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    return [
        lambda_record(r, shard["ShardId"], arn, "us-east-1")
        for r in kinesis.get_records(ShardIterator=iterator)["Records"]
    ]


def test_the_lambda_failing_or_retrying_fires_the_errors_and_retrying_alarms(kinesis, monkeypatch, tmp_path):
    """The Lambda entry point driven as the event source mapping drives it (the same batch
    again after each failure): a lake it cannot write fires processor-retrying, a function
    that fails as a whole (here: no TOTES_LAKE) fires processor-errors; a lake that takes the
    batch keeps both OK."""
    from stream_processors import handler as lambda_module
    from tests.stream_helpers import workload

    stream = new_stream(kinesis, shards=1)
    kinesis.put_record(StreamName=stream, Data=encode_events(workload(3)), PartitionKey="k")
    event = {"Records": _records_from(kinesis, stream)}
    alarms = metric_alarms(references=references(stream))
    retrying, errors = alarms["processor_retrying"], alarms["processor_errors"]
    monkeypatch.setattr(lambda_module, "_failures", {})
    down = dict(UNREACHABLE_S3)

    def invoke_for(periods: int, period: int, axis: Axis) -> tuple[list[Datapoint], float]:
        """Invoke like the event source mapping for `periods` whole periods; EMF lines and
        the Lambda service's Errors count (an invocation that raised) as datapoints."""
        out, points = io.StringIO(), []
        # The period under way is partial (it may end before the first invocation does), so
        # `periods` whole periods follow it.
        until = axis.period_end(time.time(), period, later=periods)
        while time.time() < axis.real(until):
            with redirect_stdout(out):
                try:
                    lambda_module.handler(event, _LambdaContext())
                    failed = 0.0
                except Exception:
                    failed = 1.0
            points.append(
                Datapoint("AWS/Lambda", "Errors", frozenset({("FunctionName", FUNCTION)}), time.time(), failed)
            )
        return points + emf_datapoints(out.getvalue().splitlines()), until

    from lake.layout import LakeLayout
    from lake.writer import LakeWriter
    from stream_processors.handler import StreamProcessor

    axis = Axis(k=300, start=time.time())  # 5 min = 1 s
    monkeypatch.setattr(
        lambda_module,
        "_processor",
        StreamProcessor(LakeWriter(LakeLayout("s3://lake/down", down)), lambda_module._metrics),
    )
    points, at = invoke_for(retrying.evaluation_periods, retrying.period, axis)
    assert axis.state(retrying, points, at) == ALARM
    assert axis.state(errors, points, at) == OK  # the function itself did not fail

    axis = Axis(k=300, start=time.time())
    monkeypatch.setattr(
        lambda_module, "_processor", StreamProcessor(LakeWriter(tmp_path / "lake"), lambda_module._metrics)
    )
    points, at = invoke_for(retrying.evaluation_periods, retrying.period, axis)
    assert axis.state(retrying, points, at) == OK and axis.state(errors, points, at) == OK

    axis = Axis(k=300, start=time.time())
    monkeypatch.setattr(lambda_module, "_processor", None)
    monkeypatch.delenv("TOTES_LAKE", raising=False)
    points, at = invoke_for(errors.evaluation_periods, errors.period, axis)
    assert axis.state(errors, points, at) == ALARM


def test_a_batch_given_up_after_its_retries_fires_the_gave_up_alarm(kinesis, monkeypatch):
    """The event source mapping's part is AWS's: after `maximum_retry_attempts` failed
    retries (read from the Terraform, set to 2 here as a deployment would) it skips the
    batch and puts its position in the failure queue. A stand-in does that with the real
    handler against an unwritable lake and moto's SQS; the queue's visible messages, as SQS
    reports them, fire processor-gave-up, and the empty queue before kept it OK."""

    from lake.layout import LakeLayout
    from lake.writer import LakeWriter
    from stream_processors import handler as lambda_module
    from stream_processors.handler import StreamProcessor
    from tests.moto_s3 import MotoS3
    from tests.terraform_alarms import Resolver, resources
    from tests.stream_helpers import workload

    variables = {"processor_max_retry_attempts": 2}
    mapping = next(iter(resources("aws_lambda_event_source_mapping").values()))
    retries = int(Resolver(variables).value(mapping["maximum_retry_attempts"]))
    queue_name = "totes-cdc-processor-failures"
    stream = new_stream(kinesis, shards=1)
    alarm = metric_alarms(variables, references(stream) | {"aws_sqs_queue.processor_failures.name": queue_name})[
        "processor_gave_up"
    ]
    kinesis.put_record(StreamName=stream, Data=encode_events(workload(2)), PartitionKey="k")
    event = {"Records": _records_from(kinesis, stream)}

    server = MotoS3()
    try:
        sqs = server.client("sqs")
        queue = sqs.create_queue(QueueName=queue_name)["QueueUrl"]

        def visible() -> float:
            # The metric ApproximateNumberOfMessagesVisible is the queue attribute ApproximateNumberOfMessages.
            attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
            return float(attributes["Attributes"]["ApproximateNumberOfMessages"])

        probe = Probe("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": queue_name}, visible, every=0.05)
        axis = Axis(k=300, start=time.time())  # 5 min = 1 s
        down = dict(UNREACHABLE_S3)
        monkeypatch.setattr(lambda_module, "_failures", {})
        monkeypatch.setattr(
            lambda_module,
            "_processor",
            StreamProcessor(LakeWriter(LakeLayout("s3://lake/down", down)), lambda_module._metrics),
        )
        with probe, redirect_stdout(io.StringIO()):
            empty = axis.period_end(time.time(), alarm.period)
            axis.wait_until(empty)
            for attempt in range(1 + retries):  # the first try and its retries, all failing
                failures = lambda_module.handler(event, _LambdaContext())["batchItemFailures"]
                assert failures, "the lake is down: the batch must fail"
            first, last = (event["Records"][i]["kinesis"]["sequenceNumber"] for i in (0, -1))
            sqs.send_message(
                QueueUrl=queue,
                MessageBody=json.dumps(
                    {
                        "requestContext": {
                            "condition": "RetryAttemptsExhausted",
                            "approximateInvokeCount": 1 + retries,
                        },
                        "KinesisBatchInfo": {
                            "shardId": event["Records"][0]["eventID"].split(":")[0],
                            "streamArn": event["Records"][0]["eventSourceARN"],
                            "startSequenceNumber": first,
                            "endSequenceNumber": last,
                            "batchSize": len(event["Records"]),
                        },
                    }
                ),
            )
            given_up = time.time()
            skipped = axis.period_end(given_up, alarm.period)
            axis.wait_until(skipped)
        assert axis.state(alarm, probe.points, empty) == OK
        assert axis.state(alarm, probe.points, skipped) == ALARM
    finally:
        server.stop()


def test_a_verification_that_finds_a_divergence_fires_the_verify_mismatch_alarm(totesys_dsn, home, monkeypatch):
    """`totes run --verify-every`'s rounds (a real pipeline here, verifying every few seconds)
    emit MismatchedRows: 0 while in sync (OK), more once a row the source never had is planted
    in the lake (ALARM)."""
    from tests.run_process import _config, _plant_lake_extra, _seed
    from totes_cli.pipeline import Pipeline
    from totes_cli.verify_cmd import emit_emf

    monkeypatch.delenv("AWS_ENDPOINT_URL_KINESIS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    _seed(totesys_dsn)
    alarm = metric_alarms({}, references("unused"))["verify_mismatch"]
    lines: list[str] = []
    results = []

    def on_verified(result) -> None:
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            emit_emf(result)
        lines.extend(buffer.getvalue().splitlines())
        results.append(result)

    pipeline = Pipeline(_config(totesys_dsn, home, verify_every=2.0, on_verified=on_verified))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    axis = Axis(k=300, start=time.time())  # 5 min = 1 s
    try:
        wait_for(lambda: not pipeline.errors and any(r.in_sync for r in results), 180, "a verification in sync")
        in_sync_at = time.time()
        _plant_lake_extra(totesys_dsn, pipeline.layout, 10**6)
        wait_for(
            lambda: not pipeline.errors and results and not results[-1].in_sync, 120, "a verification that differs"
        )
    finally:
        pipeline.stop.set()
        runner.join(120)
    assert not pipeline.errors, pipeline.errors
    points = [p for p in emf_datapoints(lines) if p.metric == "MismatchedRows"]
    mismatch = [p for p in points if p.value > 0]
    healthy = [p for p in points if p.value == 0 and p.timestamp <= in_sync_at]
    assert mismatch and healthy
    assert [r.extra for r in results[-1].reports if r.table == "public.sales_order"] == [[10**6]]
    assert axis.state(alarm, points, axis.period_end(healthy[-1].timestamp, alarm.period)) == OK
    assert axis.state(alarm, points, axis.period_end(mismatch[0].timestamp, alarm.period)) == ALARM
