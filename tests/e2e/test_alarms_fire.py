"""Every alarm of infra/alarms.tf seen to fire, and the healthy run staying OK.

Each fault is produced for real on the local stack (PostgreSQL, kinesalite, the lake folder,
`totes reader|processor|sync --emf` as separate processes, or the Lambda entry point). The
metrics are the ones the stages print (EMF lines on stdout, read from their output) or, for
metrics AWS itself reports (Kinesis iterator age, Lambda errors, RDS slot lag), the same
quantity measured locally by a stand-in. Each alarm's own definition is read from the
Terraform and evaluated by `local_stack.cloudwatch`.

Time: metrics carry their real times; the evaluator's time axis runs `K` times faster from
the start of a test, so an alarm over 15 minutes is seen in seconds (the alarms are not
edited). K is chosen so that every stage still reports at least once per period. Once a
stage has stopped for good, the evaluator may be asked about any later time: nothing more
can come from it.
"""

from __future__ import annotations

import io
import json
import math
import random
import threading
import time
import uuid
from contextlib import redirect_stdout
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest

from change_events.kinesis import kinesis_client
from change_events import encode_events
from local_stack.cloudwatch import ALARM, OK, Datapoint, MetricAlarm, emf_datapoints, evaluate
from stream_processors.poller import ShardOffsets, lambda_record
from tests.moto_s3 import UNREACHABLE_S3
from tests.conftest import make_scratch_dir
from tests.e2e_helpers import current_lsn, execute
from tests.run_process import kill_9, wait_for
from tests.reader_harness import FAST, running_reader
from tests.fakes import MemorySink
from tests.stream_helpers import new_stream
from tests.terraform_alarms import metric_alarms
from tests.run_process import Stages
from totes_cli.bootstrap import StatePaths
from totesys.simulator import Simulator

# Real faults on a real local stack: minutes each on a loaded 2-core machine, above the suite's
# default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

LOCAL_DB = "totesys-local"
FUNCTION = "totes-cdc-processor"


@dataclass
class Axis:
    """Real seconds → the evaluator's seconds, `k` times faster from `start`."""

    k: float
    start: float

    def virtual(self, real: float) -> float:
        return self.start + (real - self.start) * self.k

    def real(self, virtual: float) -> float:
        return self.start + (virtual - self.start) / self.k

    def period_end(self, real: float, period: int, later: int = 0) -> float:
        """The end of the period holding `real` (plus `later` periods), on the virtual axis."""
        return (math.floor(self.virtual(real) / period) + 1 + later) * period

    def state(self, alarm: MetricAlarm, points: list[Datapoint], at_virtual: float) -> str:
        moved = [replace(p, timestamp=self.virtual(p.timestamp)) for p in points]
        return evaluate(alarm, moved, at_virtual).state

    def wait_until(self, at_virtual: float) -> None:
        """Wait for real time to reach a virtual time (for stages that are still running)."""
        time.sleep(max(0.0, self.real(at_virtual) - time.time() + 0.05))


def silent_for_good(axis: Axis, alarm: MetricAlarm, stopped_at: float) -> float:
    """A virtual time at which a stage stopped at `stopped_at` has been silent for the whole
    evaluation range (evaluation_periods + 2 periods, see local_stack.cloudwatch)."""
    return axis.period_end(stopped_at, alarm.period, later=alarm.evaluation_periods + 2)


class Probe:
    """Samples one quantity every `every` seconds in a thread, as a stand-in for a metric AWS
    reports itself."""

    def __init__(self, namespace: str, metric: str, dimensions: dict, measure, every: float = 0.5):
        self.points: list[Datapoint] = []
        self._key = (namespace, metric, frozenset(dimensions.items()))
        self._measure, self._every = measure, every
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                value = self._measure()
            except Exception as error:  # reported by stop()
                self.errors.append(error)
                return
            if value is not None:
                self.points.append(Datapoint(*self._key, time.time(), float(value)))

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, self.errors


def iterator_age_probe(endpoint: str, stream: str, offsets: Path) -> Probe:
    """GetRecords.IteratorAgeMilliseconds as Kinesis measures it for the consumer's next
    GetRecords: now minus the arrival of the first record after the processor's last
    processed one (0 when it has read everything). In real milliseconds: the processor's
    own latency does not shrink with the time axis."""
    client = kinesis_client(endpoint_url=endpoint)

    def measure() -> float:
        done = ShardOffsets(offsets)
        oldest = 0.0
        for shard in client.list_shards(StreamName=stream)["Shards"]:
            offset = done.get(shard["ShardId"])
            start = (
                {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": offset}
                if offset
                else {"ShardIteratorType": "TRIM_HORIZON"}
            )
            iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"], **start)["ShardIterator"]
            records = client.get_records(ShardIterator=iterator, Limit=1)["Records"]
            if records:
                arrived = records[0]["ApproximateArrivalTimestamp"].timestamp()
                oldest = max(oldest, (time.time() - arrived) * 1000)
        return oldest

    return Probe("AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds", {"StreamName": stream}, measure)


def slot_lag_probe(dsn: str, slot: str) -> Probe:
    """RDS's OldestReplicationSlotLag, for our slot: the WAL the server keeps for it."""

    def measure() -> float | None:
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                )
                row = cur.fetchone()
        finally:
            conn.close()
        return row[0] if row and row[0] is not None else None

    return Probe("AWS/RDS", "OldestReplicationSlotLag", {"DBInstanceIdentifier": LOCAL_DB}, measure)


def references(stream: str) -> dict:
    return {
        "aws_kinesis_stream.changes.name": stream,
        "aws_lambda_function.processor.function_name": FUNCTION,
        "aws_sqs_queue.processor_failures.name": "totes-cdc-processor-failures",
    }


class Changes:
    """A small steady business: a few sales orders changed every 0.3 s, in a thread."""

    def __init__(self, dsn: str):
        self.dsn, self._stop = dsn, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT sales_order_id FROM sales_order")
                ids = [row[0] for row in cur.fetchall()]
                rng = random.Random(5)
                while not self._stop.wait(0.3):
                    cur.execute(
                        "UPDATE sales_order SET units_sold = units_sold + 1 WHERE sales_order_id = ANY(%s)",
                        (rng.sample(ids, min(3, len(ids))),),
                    )
        finally:
            conn.close()

    def __enter__(self) -> "Changes":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def emitted(stages: Stages) -> list[Datapoint]:
    lines = []
    for stage in ("reader", "processor", "sync"):
        path = stages.log(stage)
        if path.exists():
            lines += path.read_text(errors="replace").splitlines()
    return emf_datapoints(lines)


def reported(stages: Stages, service: str, metric: str, since: float = 0.0) -> list[Datapoint]:
    return [
        p
        for p in emitted(stages)
        if p.metric == metric and ("service", service) in p.dimensions and p.timestamp >= since
    ]


def drop_slot_when_inactive(dsn: str, slot: str) -> None:
    def dropped() -> bool:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                row = cur.fetchone()
                if row is None:
                    return True
                if not row[0]:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    return True
                return False
        finally:
            conn.close()

    wait_for(dropped, 30, f"slot {slot} to be free and dropped")


@pytest.fixture
def home():
    import shutil

    path = make_scratch_dir("totes-alarms-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_each_stage_fault_fires_its_alarm_and_the_healthy_pipeline_stays_ok(totesys_dsn, kinesis, kinesalite_url, home):
    dsn = totesys_dsn
    with Simulator(dsn, seed=17) as simulator:
        simulator.seed_history(2, until=datetime(2024, 11, 15, 18))
    stream, slot = new_stream(kinesis, shards=2), f"alarms_{uuid.uuid4().hex[:8]}"
    stages = Stages(dsn, stream, kinesalite_url, home)
    axis = Axis(k=20, start=time.time())  # 5 min = 15 s; the reader reports every 5 s, the sync every 10 s
    # Thresholds a small deployment would set (-var): 1 MiB of WAL, records 10 s old.
    alarms = metric_alarms(
        {"unconfirmed_wal_alarm_bytes": 1 << 20, "iterator_age_alarm_ms": 10_000, "source_db_instance_id": LOCAL_DB},
        references(stream),
    )
    assert set(alarms) >= {
        "stream_iterator_age",
        "dead_letters",
        "processor_silent",
        "reader_unconfirmed_wal",
        "reader_slot_lost",
        "reader_silent",
        "sync_silent",
        "source_slot_lag",
    }
    offsets = StatePaths(str(stages.lake), home).offsets(stream)
    try:
        stages.start("reader", "--emf", "--slot", slot)
        stages.start("processor", "--emf", "--window", "0.2")
        stages.wait_lake(current_lsn(dsn))
        stages.start("sync", "--emf", "--interval", "0.5")
        with Changes(dsn), iterator_age_probe(kinesalite_url, stream, offsets) as age, slot_lag_probe(dsn, slot) as lag:
            for service, metric in (("reader", "EventsPerSecond"), ("processor", "Events"), ("sync", "SyncRuns")):
                wait_for(
                    lambda: reported(stages, service, metric), 60, f"the {service}'s first EMF line", log=stages.logs
                )

            # Healthy: a whole period after every stage reported, every alarm is OK.
            healthy = axis.period_end(time.time(), 300, later=1)
            axis.wait_until(healthy)
            everything = lambda: emitted(stages) + age.points + lag.points  # noqa: E731
            states = {name: axis.state(alarm, everything(), healthy) for name, alarm in alarms.items()}
            assert states == {name: OK for name in alarms}, states

            # A poison record: dead-lettered, the dead-letters alarm fires for its period.
            kinesis.put_record(StreamName=stream, Data=b"\x00 not a change batch", PartitionKey="poison")
            [poisoned] = wait_for(
                lambda: [p for p in reported(stages, "processor", "DeadLetters") if p.value > 0],
                60,
                "the dead letter to be reported",
                log=stages.logs,
            )
            at = axis.period_end(poisoned.timestamp, 300)
            axis.wait_until(at)
            assert axis.state(alarms["dead_letters"], emitted(stages), at) == ALARM

            # The processor stopped: nothing writes the lake; records wait in the stream,
            # and the reader cannot confirm the WAL it reads (a burst of changes meanwhile).
            assert stages.stop("processor") == 0, stages.tail("processor")
            stopped = time.time()
            execute(dsn, "UPDATE sales_order SET agreed_delivery_location_id = agreed_delivery_location_id")
            execute(
                dsn,
                "CREATE TABLE wal_filler AS SELECT string_agg(md5(random()::text), '') AS x "
                "FROM generate_series(1, 2000) AS r, generate_series(1, 32) GROUP BY r",
            )  # 2 MB of WAL
            behind = axis.period_end(stopped, 300, later=2)  # three whole periods stopped
            axis.wait_until(behind)
            points = everything()
            assert axis.state(alarms["reader_unconfirmed_wal"], points, behind) == ALARM, [
                p.value for p in reported(stages, "reader", "UnconfirmedWalBytes", since=stopped)
            ]
            assert axis.state(alarms["stream_iterator_age"], points, behind) == ALARM
            assert (
                axis.state(
                    alarms["processor_silent"], points, silent_for_good(axis, alarms["processor_silent"], stopped)
                )
                == ALARM
            )
            assert axis.state(alarms["reader_silent"], points, behind) == OK  # the reader still reports

            stages.start("processor", "--emf", "--window", "0.2")
            stages.wait_lake(current_lsn(dsn))

            # The sync stopped, then the reader killed: each one's silence alarm fires.
            assert stages.stop("sync") == 0, stages.tail("sync")
            stopped = time.time()
            assert (
                axis.state(alarms["sync_silent"], everything(), silent_for_good(axis, alarms["sync_silent"], stopped))
                == ALARM
            )
            kill_9(stages.running.pop("reader"))
            stopped = time.time()
            assert (
                axis.state(
                    alarms["reader_silent"], everything(), silent_for_good(axis, alarms["reader_silent"], stopped)
                )
                == ALARM
            )

        # The slot dropped while the reader was down: it says so, exits 3 and reports SlotLost.
        drop_slot_when_inactive(dsn, slot)
        refused = stages.start("reader", "--emf", "--slot", slot)
        assert refused.wait(120) == 3, stages.tail("reader")
        stages.running.pop("reader")
        [lost] = reported(stages, "reader", "SlotLost")
        assert axis.state(alarms["reader_slot_lost"], emitted(stages), healthy) == OK
        assert axis.state(alarms["reader_slot_lost"], emitted(stages), axis.period_end(lost.timestamp, 60)) == ALARM
    finally:
        stages.stop_all()
        execute(
            dsn,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
            (slot,),
        )


def test_wal_a_slot_keeps_while_its_reader_is_down_fires_the_slot_lag_alarm(totesys_dsn, tmp_path):
    """Our tables idle, the server busy elsewhere. A streaming reader keeps the slot up with
    the server's WAL, heartbeats on or off (with nothing pending it confirms the server's WAL
    end); a reader that is down leaves every byte since on the source's disk, and RDS's
    slot-lag alarm fires."""
    dsn = totesys_dsn
    alarm = metric_alarms(
        {"source_db_instance_id": LOCAL_DB, "source_slot_lag_alarm_bytes": 1 << 20}, references("unused")
    )["source_slot_lag"]
    execute(dsn, "CREATE TABLE wal_filler (x text)")  # not published: the server's other work

    def busy_server(slot: str) -> tuple[str, float]:
        axis = Axis(k=120, start=time.time())  # 5 min = 2.5 s
        with slot_lag_probe(dsn, slot) as lag:
            until = axis.period_end(time.time(), alarm.period, later=alarm.evaluation_periods)
            while time.time() < axis.real(until):
                # About 1 MB/s of WAL (random text: TOAST does not compress it away), and what
                # lets a slot's restart point move on (a running-transactions record, as
                # checkpoints and the background writer log).
                execute(
                    dsn,
                    "INSERT INTO wal_filler SELECT string_agg(md5(random()::text), '') "
                    "FROM generate_series(1, 250) AS r, generate_series(1, 32) GROUP BY r",
                )
                execute(dsn, "SELECT pg_log_standby_snapshot()")
                time.sleep(0.25)
        return axis.state(alarm, lag.points, until), max(p.value for p in lag.points)

    slot = f"idle_{uuid.uuid4().hex[:8]}"
    try:
        for heartbeat_seconds in (0.2, 3600):
            config = replace(FAST, slot=slot, publication=slot, heartbeat_seconds=heartbeat_seconds)
            with running_reader(dsn, MemorySink(), tmp_path / f"{slot}.json", config):
                state, most = busy_server(slot)
            assert state == OK, f"{most:,.0f} bytes retained while streaming, heartbeats every {heartbeat_seconds} s"
        state, most = busy_server(slot)  # the reader down, its slot kept
        assert state == ALARM, f"only {most:,.0f} bytes retained while the reader was down"
    finally:
        execute(
            dsn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )


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
        until = axis.period_end(time.time(), period, later=periods - 1)
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
