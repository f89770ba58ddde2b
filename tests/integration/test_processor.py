"""The stream processor: the Lambda handler on real Lambda-shaped events, and the local poller
on kinesalite feeding the same code. Poison records are contained; replays and crashes
change nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import KinesisDataStreamModel

from cdc_reader.publisher import Publisher
from change_events import Watermark, encode_events, encode_watermark
from lake.dead_letters import list_dead_letters
from lake.layout import LakeLayout
from lake.writer import LakeWriter
from stream_processors import handler as lambda_module
from stream_processors.handler import StreamProcessor
from stream_processors.poller import LocalPoller, ShardOffsets
from tests.moto_s3 import UNREACHABLE_S3
from tests.lake_fixtures import SALES_ORDER, expected_state, lake_state, sales_order_row, table_snapshot
from tests.stream_helpers import new_stream
from tests.stream_helpers import SHARD, kinesis_event, publish_events, workload
from tests.fakes import ScriptedFlakyKinesis


def test_the_event_is_a_valid_lambda_kinesis_event():
    parsed = parse(event=kinesis_event([encode_events(workload(2))]), model=KinesisDataStreamModel)
    assert parsed.Records[0].kinesis.sequenceNumber == "1"


def _processed(tmp_path, payloads: list[bytes], dead_letters: int, landed: list) -> tuple[StreamProcessor, LakeLayout]:
    """`payloads` processed into a lake at `tmp_path`: no record is handed back to Kinesis,
    `dead_letters` of them are dead-lettered, and the lake's sales orders are those of `landed`."""
    processor = StreamProcessor(LakeWriter(tmp_path))
    outcome = processor.process(kinesis_event(payloads))
    assert outcome.response == {"batchItemFailures": []}
    assert outcome.dead_letters == dead_letters
    layout = LakeLayout(tmp_path)
    assert lake_state(layout, "public.sales_order", ("sales_order_id",)) == expected_state(landed, "public.sales_order")
    return processor, layout


def test_a_poison_record_is_dead_lettered_while_its_neighbours_land(tmp_path):
    events = workload()
    half = len(events) // 2
    payloads = [
        encode_events(events[:half]),
        b"\x00garbage that is not a record",
        encode_events(events[half:]),
        encode_watermark(Watermark(events[-1].lsn)),
    ]
    processor, layout = _processed(tmp_path, payloads, dead_letters=1, landed=events)
    (letter,) = list_dead_letters(layout)
    assert letter.record == payloads[1] and "not a totes-cdc record" in letter.reason
    assert letter.shard == SHARD and letter.sequence_number == "2"
    assert processor.lake.lake_watermark([SHARD]) == events[-1].lsn


def test_a_replayed_batch_changes_nothing(tmp_path):
    events = workload()
    event = kinesis_event([encode_events(events[:40]), encode_events(events[40:])])
    processor = StreamProcessor(LakeWriter(tmp_path))
    processor.process(event)
    layout = LakeLayout(tmp_path)
    before = (
        table_snapshot(layout, "changes", "public.sales_order"),
        table_snapshot(layout, "tables", "public.sales_order"),
    )
    again = processor.process(event)
    assert again.appended == 0
    assert (
        table_snapshot(layout, "changes", "public.sales_order"),
        table_snapshot(layout, "tables", "public.sales_order"),
    ) == before


def test_when_the_lake_cannot_be_written_the_whole_batch_is_retried(tmp_path, monkeypatch):
    processor = StreamProcessor(LakeWriter(tmp_path))

    def broken(*args, **kwargs):
        raise OSError("S3 is down")

    monkeypatch.setattr(processor.lake, "write_batch", broken)
    outcome = processor.process(kinesis_event([encode_events(workload(3))], start=41))
    assert outcome.response == {"batchItemFailures": [{"itemIdentifier": "41"}]}


def test_the_lambda_entry_point(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOTES_LAKE", str(tmp_path))
    monkeypatch.setattr(lambda_module, "_processor", None)

    class Context:
        function_name, memory_limit_in_mb, invoked_function_arn, aws_request_id = "p", 512, "arn:p", "r-1"

    events = workload(5)
    assert lambda_module.handler(kinesis_event([encode_events(events)]), Context()) == {"batchItemFailures": []}
    assert lake_state(LakeLayout(tmp_path), "public.sales_order", ("sales_order_id",)) == expected_state(
        events, "public.sales_order"
    )
    assert '"Events"' in capsys.readouterr().out  # EMF metrics on stdout


def test_local_poller_feeds_the_handler_and_survives_a_crash_before_saving_offsets(tmp_path, kinesis):
    stream = new_stream(kinesis, shards=2)
    events = workload(60)
    publisher = Publisher(kinesis, stream)
    publish_events(publisher, events)
    publisher.publish_watermark(events[-1].lsn)
    publisher.flush()

    offsets = tmp_path / "offsets.json"
    lake = tmp_path / "lake"

    class CrashingOffsets(ShardOffsets):
        def set(self, shard, sequence_number):
            raise KeyboardInterrupt("killed after the lake commit, before the offset")

    crashing = LocalPoller(
        kinesis, stream, StreamProcessor(LakeWriter(lake)), CrashingOffsets(offsets), batch_window=0.0
    )
    with pytest.raises(KeyboardInterrupt):
        for _ in range(5):
            crashing.poll_once()
    assert not Path(offsets).exists()

    poller = LocalPoller(kinesis, stream, StreamProcessor(LakeWriter(lake)), ShardOffsets(offsets), batch_window=0.0)
    for _ in range(10):
        poller.poll_once()
    layout = LakeLayout(lake)
    assert lake_state(layout, "public.sales_order", ("sales_order_id",)) == expected_state(events, "public.sales_order")
    logged = table_snapshot(layout, "changes", "public.sales_order")
    assert len(logged) == len({(r["_lsn"], r["_seq"]) for r in logged}) == len(events)
    shards = [s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"]]
    assert poller.processor.lake.lake_watermark(shards) == events[-1].lsn
    assert set(ShardOffsets(offsets)._offsets) <= set(shards)


# -- hostile records, outages, a flaky stream ----------------------------------------------------


def test_events_the_lake_refuses_for_their_content_are_dead_lettered_and_the_shard_flows(tmp_path):
    from change_events import Column, Op, TableSchema
    from change_events import ChangeEvent as Event

    good = workload(3)
    odd = TableSchema("public.odd", (Column("id", "integer", 23, -1, True), Column("amount", "numeric(0,0)", 1700)))
    twins = TableSchema("public.twins", (Column("id", "integer", 23, -1, True), Column("ID", "integer", 23)))
    lsn = good[-1].lsn + 1
    hostile = [
        Event(odd, Op.INSERT, lsn, 0, 900, None, {"id": "1"}, after={"id": "1", "amount": "1"}),
        Event(twins, Op.INSERT, lsn, 1, 900, None, {"id": "1"}, after={"id": "1", "ID": "2"}),
        Event(
            SALES_ORDER,
            Op.INSERT,
            lsn,
            2,
            900,
            None,
            {"sales_order_id": "99999999999999999999"},
            after={**sales_order_row(7), "sales_order_id": "99999999999999999999"},
        ),
    ]
    payloads = [
        encode_events(good),
        encode_events(hostile[:2]),
        encode_events(hostile[2:]),
        encode_watermark(Watermark(lsn)),
    ]
    processor, layout = _processed(tmp_path, payloads, dead_letters=3, landed=good)
    reasons = {letter.source_table: letter.reason for letter in list_dead_letters(layout)}
    assert "precision" in reasons["public.odd"] and "case-insensitive" in reasons["public.twins"]
    assert "does not convert" in reasons["public.sales_order"]
    assert processor.lake.lake_watermark([SHARD]) == lsn


def test_an_outage_is_retried_logged_and_counted_not_dead_lettered(tmp_path, capsys, caplog):
    from aws_lambda_powertools import Metrics

    down = dict(UNREACHABLE_S3)
    metrics = Metrics(namespace="totes-cdc-test", service="processor")
    processor = StreamProcessor(LakeWriter(LakeLayout("s3://lake/unreachable", down)), metrics)
    outcome = processor.process(kinesis_event([encode_events(workload(2))], start=7))
    assert outcome.response == {"batchItemFailures": [{"itemIdentifier": "7"}]}
    assert outcome.dead_letters == 0 and "lake write failed: OSError" in outcome.retry_reason
    metrics.flush_metrics()
    out = capsys.readouterr().out
    assert '"BatchRetries"' in out
    [logged] = [r for r in caplog.records if r.getMessage() == "batch failed; it will be retried"]
    assert "Connection refused" in logged.reason and "\x1b" not in logged.reason


def _client_error(code: str, status: int, operation: str = "GetRecords"):
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


def test_consumer_side_kinesis_errors_are_retried_and_never_end_the_poller(tmp_path, kinesis):
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    stream = new_stream(kinesis, shards=1)
    events = workload(20)
    publisher = Publisher(kinesis, stream)
    publish_events(publisher, events, flush=True)  # several records, so the iterator expires half way
    publisher.publish_watermark(events[-1].lsn)
    publisher.flush()
    faults = {
        "get_records": [
            _client_error("ProvisionedThroughputExceededException", 400),
            None,
            _client_error("ExpiredIteratorException", 400),
            _client_error("InternalFailure", 500),
            None,
            EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
            ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ],
        "get_shard_iterator": [_client_error("LimitExceededException", 400, "GetShardIterator")],
    }
    lake = tmp_path / "lake"
    poller = LocalPoller(
        ScriptedFlakyKinesis(kinesis, faults),
        stream,
        StreamProcessor(LakeWriter(lake)),
        ShardOffsets(tmp_path / "o.json"),
        batch_window=0.0,
        max_batch_records=3,
        backoff=0.01,
    )
    for _ in range(200):
        poller.poll_once()
        if not any(faults.values()) and poller.processor.lake.lake_watermark([*poller.shards]) == events[-1].lsn:
            break
        time.sleep(0.01)
    layout = LakeLayout(lake)
    assert lake_state(layout, "public.sales_order", ("sales_order_id",)) == expected_state(events, "public.sales_order")
    logged = table_snapshot(layout, "changes", "public.sales_order")
    assert len(logged) == len({(r["_lsn"], r["_seq"]) for r in logged}) == len(events)
    assert poller.read_retries == 5


def test_the_lambda_entry_point_backs_off_while_the_lake_is_down(tmp_path, monkeypatch):
    """The event source mapping retries a failed batch at once; the warm function pauses
    before reporting the failure, longer for each consecutive failure of the shard."""
    monkeypatch.setattr(lambda_module, "_failures", {})
    pauses: list[float] = []
    monkeypatch.setattr(lambda_module.time, "sleep", pauses.append)
    down = dict(UNREACHABLE_S3)
    monkeypatch.setattr(
        lambda_module,
        "_processor",
        StreamProcessor(LakeWriter(LakeLayout("s3://lake/down", down)), lambda_module._metrics),
    )

    class Context:
        function_name, memory_limit_in_mb, invoked_function_arn, aws_request_id = "p", 512, "arn:p", "r-1"

        def get_remaining_time_in_millis(self):
            return 900_000

    event = kinesis_event([encode_events(workload(1))])
    for _ in range(3):
        assert lambda_module.handler(event, Context()) == {"batchItemFailures": [{"itemIdentifier": "1"}]}
    assert pauses == [1.0, 2.0, 4.0]
    monkeypatch.setattr(lambda_module, "_processor", StreamProcessor(LakeWriter(tmp_path), lambda_module._metrics))
    assert lambda_module.handler(event, Context()) == {"batchItemFailures": []}
    assert lambda_module._failures == {} and len(pauses) == 3


def _publish(publisher: Publisher, transactions: list[list], mark: bool = True) -> None:
    for events in transactions:
        for event in events:
            publisher.add(event)
        publisher.end_transaction(events[-1].lsn)
    if mark:
        publisher.publish_watermark(transactions[-1][-1].lsn)
    publisher.flush()


def test_a_trickle_of_small_transactions_is_gathered_into_few_lake_commits(tmp_path, kinesis):
    stream = new_stream(kinesis, shards=1)
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    events = workload(6)
    transactions = [[e for e in events if e.lsn == lsn] for lsn in sorted({e.lsn for e in events})]
    publisher = Publisher(kinesis, stream)
    lake = LakeWriter(tmp_path / "lake")
    poller = LocalPoller(
        kinesis,
        stream,
        StreamProcessor(lake),
        ShardOffsets(tmp_path / "offsets.json"),
        batch_window=0.0,
        quiet_window=3600.0,
        min_batch_bytes=1 << 30,
    )
    log = lambda: lake.change_log("public.sales_order", shard).refresh()  # noqa: E731

    _publish(publisher, transactions[:1], mark=False)
    poller.poll_once()  # the first records after a quiet spell go at once
    assert log().version() == 1
    publisher.publish_watermark(transactions[0][-1].lsn)
    publisher.flush()
    poller.poll_once()  # a marker alone is not held: the watermark moves
    assert lake.lake_watermark([shard]) == transactions[0][-1].lsn

    for transaction in transactions[1:]:  # a trickle: each would have been a commit per window
        _publish(publisher, [transaction])
        poller.poll_once()
    assert log().version() == 1
    assert lake.lake_watermark([shard]) == transactions[0][-1].lsn

    poller.min_batch_bytes = 0  # enough gathered: the window closes
    poller.poll_once()
    assert log().version() == 2
    assert lake.lake_watermark([shard]) == transactions[-1][-1].lsn
    layout = LakeLayout(tmp_path / "lake")
    assert lake_state(layout, "public.sales_order", ("sales_order_id",)) == expected_state(events, "public.sales_order")
    assert len(table_snapshot(layout, "changes", "public.sales_order")) == len(events)

    idle = transactions[-1][-1].lsn
    for beat in (1, 2):  # heartbeats: transactions without events of ours, then a marker each
        publisher.end_transaction(idle + beat)
        publisher.publish_watermark(idle + beat)
        publisher.flush()
        poller.poll_once()
    assert lake.lake_watermark([shard]) == idle + 1  # the first went with the events' window ...
    progress = lake.progress.refresh().version()
    publisher.end_transaction(idle + 3)
    publisher.publish_watermark(idle + 3)
    publisher.flush()
    poller.poll_once()  # ... the next ones wait for the quiet window: one commit for many heartbeats
    assert lake.progress.refresh().version() == progress
    poller.quiet_window = 0.0
    poller.poll_once()
    assert lake.lake_watermark([shard]) == idle + 3
