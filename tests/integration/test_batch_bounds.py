"""A backlog read in one GetRecords is handed to the lake in batches of at most
`max_batch_bytes` of events (stream_processors.poller): memory follows the batch, not how far
behind the shard is. Counted, not timed."""

from __future__ import annotations

import base64

from cdc_reader.publisher import Publisher
from change_events.codec import events_body_size
from lake import LakeWriter
from stream_processors.handler import StreamProcessor
from stream_processors.poller import LocalPoller, ShardOffsets
from tests.lake_fixtures import SALES_ORDER, Source, expected_state, lake_state, sales_order_row
from tests.stream_helpers import new_stream


def test_a_backlog_is_written_in_batches_bounded_by_bytes_and_lands_whole(tmp_path, kinesis):
    stream = new_stream(kinesis, shards=1)
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
    publisher = Publisher(kinesis, stream)
    src, events = Source(), []
    for n in range(40):  # a backlog: 40 transactions on the stream before the processor reads
        with src.transaction() as tx:
            for order in range(n * 10, n * 10 + 10):
                tx.insert(SALES_ORDER, sales_order_row(order))
        events += tx.events
        for event in tx.events:
            publisher.add(event)
        publisher.end_transaction(tx.lsn)
        publisher.flush()  # a record or more per transaction
    publisher.publish_watermark(events[-1].lsn)
    publisher.flush()

    processor = StreamProcessor(LakeWriter(tmp_path / "lake"))
    cap = 8 * 1024
    batches: list[list[int]] = []
    process = processor.process

    def counted(event: dict):
        batches.append([events_body_size(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]])
        return process(event)

    processor.process = counted
    poller = LocalPoller(
        kinesis, stream, processor, ShardOffsets(tmp_path / "offsets.json"), batch_window=0.0, max_batch_bytes=cap
    )
    while processor.lake.lake_watermark([shard]) < events[-1].lsn:
        assert poller.poll_once() or batches, "nothing was read"
        assert len(batches) < 1000
    assert sum(len(b) for b in batches) >= 40
    assert len(batches) > 1, "the backlog is more than one batch's worth"
    assert all(sum(sizes) <= cap or len(sizes) == 1 for sizes in batches)
    table, keys = SALES_ORDER.table, SALES_ORDER.key_names
    assert lake_state(processor.lake.layout, table, keys) == expected_state(events, table)
    assert poller.events == len(events)


def test_the_default_batch_holds_at_most_4_mib_of_events(kinesis):
    """Decoded, a batch's events take about 8 times their uncompressed bytes (1.4 kB for a
    185-byte sales_order update) and every shard decodes its own beside the others: 4 MiB a
    batch keeps that near 32 MB a shard (16 MiB held 130 MB a shard in a backlog)."""
    from stream_processors.poller import _Shard

    stream = new_stream(kinesis, shards=1)
    poller = LocalPoller(kinesis, stream, processor=None, offsets=None)
    shard = _Shard("shard", None)
    mib = 1 << 20
    shard.sizes = [mib // 2] * 24 + [5 * mib] + [mib // 4] * 8  # 12 MiB, one record larger than a batch, 2 MiB
    shard.pending = [{"n": n} for n in range(len(shard.sizes))]
    batches = poller._batches(shard)
    held = [sum(shard.sizes[r["n"]] for r in batch) for batch in batches]
    assert held == [4 * mib, 4 * mib, 4 * mib, 5 * mib, 2 * mib]
    assert [r for batch in batches for r in batch] == shard.pending, "every record once, in order"
