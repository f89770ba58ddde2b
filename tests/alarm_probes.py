"""The alarm tests' instruments: a time axis faster than the clock, probes that measure what AWS
itself would report (iterator age, slot lag), changes written to the source, and the metrics the
stages emitted; the scratch home the tests run in."""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg2
import pytest

from change_events.kinesis import kinesis_client
from local_stack.cloudwatch import Datapoint, MetricAlarm, emf_datapoints, evaluate
from stream_processors.poller import ShardOffsets
from tests.conftest import scratch_folder
from tests.run_process import wait_for
from tests.run_process import Stages

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


class _InAThread:
    """`_run` in a thread of its own for the length of a `with` block: it should return soon
    after `_stop` is set, as the block ends."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


class Probe(_InAThread):
    """Samples one quantity every `every` seconds in a thread, as a stand-in for a metric AWS
    reports itself."""

    def __init__(self, namespace: str, metric: str, dimensions: dict, measure, every: float = 0.5):
        super().__init__()
        self.points: list[Datapoint] = []
        self._key = (namespace, metric, frozenset(dimensions.items()))
        self._measure, self._every = measure, every
        self.errors: list[BaseException] = []

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                value = self._measure()
            except Exception as error:  # reported by stop()
                self.errors.append(error)
                return
            if value is not None:
                self.points.append(Datapoint(*self._key, time.time(), float(value)))

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
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


class Changes(_InAThread):
    """A small steady business: a few sales orders changed every 0.3 s, in a thread."""

    def __init__(self, dsn: str):
        super().__init__()
        self.dsn = dsn

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


@pytest.fixture(name="home")
def alarm_home():
    """A scratch home for one test (short path: kinesalite and PostgreSQL sockets dislike long ones)."""
    yield from scratch_folder("totes-alarms-")
