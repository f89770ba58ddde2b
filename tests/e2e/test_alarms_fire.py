"""Every alarm of infra/alarms.tf seen to fire, and the healthy run staying OK (the Lambda's and
verify's alarms: test_alarms_lambda.py).

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

import time
import uuid
from dataclasses import replace
from datetime import datetime

import pytest

from local_stack.cloudwatch import ALARM, OK
from tests.e2e_helpers import current_lsn, execute
from tests.run_process import kill_9, wait_for
from tests.reader_harness import FAST, running_reader
from tests.fakes import MemorySink
from tests.stream_helpers import new_stream
from tests.terraform_alarms import metric_alarms
from tests.run_process import Stages
from totes_cli.bootstrap import StatePaths
from totesys.simulator import Simulator
from tests.alarm_probes import alarm_home  # noqa: F401  (the `home` fixture)
from tests.alarm_probes import (
    LOCAL_DB,
    Axis,
    silent_for_good,
    iterator_age_probe,
    slot_lag_probe,
    references,
    Changes,
    emitted,
    reported,
    drop_slot_when_inactive,
)


# Real faults on a real local stack: minutes each on a loaded 2-core machine, above the suite's
# default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


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
