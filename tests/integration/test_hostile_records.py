"""Guarantee 8 past the decoder: hostile values inside well-framed rows (numbers too large
for their type, out-of-range times, text where a number belongs) and type names no lake type
fits reach the lake through the processor, and each event ends stored or dead-lettered with
a reason; the batch never fails."""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataclasses import replace

from change_events import ChangeEvent, Column, Op, decode, encode_events
from lake.changelog import ChangeLog
from lake.dead_letters import list_dead_letters
from lake.layout import LakeLayout
from lake.writer import LakeWriter
from stream_processors.handler import StreamProcessor
from tests.lake_fixtures import PAYMENT, SALES_ORDER, sales_order_row
from tests.stream_helpers import kinesis_event

HOSTILE = [
    "99999999999999999999",
    "-9223372036854775809",
    "1e400",
    "NaN",
    "infinity",
    "-infinity",
    "294277-01-01 00:00:00",
    "0000-00-00",
    "2024-13-45 25:61:61",
    "t",
    "x",
    "",
    " 1",
    "\\xZZ",
    "12345678901234567890.12",
    "{1,2}",
    "é",
    "\x7f",
]
values = st.sampled_from(HOSTILE) | st.text(max_size=12) | st.none()
type_names = st.sampled_from(
    [
        "numeric(0,0)",
        "numeric(38,50)",
        "numeric(99999999999999999999,2)",
        "numeric(10,-2)",
        "timestamp(9) with time zone",
        "integer[]",
        "bytea",
        "boolean",
        "real",
        "date",
        "smallint",
        "xid8",
    ]
) | st.text(min_size=1, max_size=12).filter(lambda t: "\x00" not in t)


@settings(max_examples=12, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.dictionaries(st.sampled_from(SALES_ORDER.column_names[1:]), values, max_size=4), min_size=1, max_size=6
    ),
    st.dictionaries(st.sampled_from(PAYMENT.column_names[1:]), values, max_size=3),
    type_names,
)
def test_hostile_values_are_stored_or_dead_lettered_and_the_batch_goes_through(changes, payment, type_name):
    events = [
        ChangeEvent(
            SALES_ORDER,
            Op.INSERT,
            0x1000,
            seq,
            1,
            None,
            {"sales_order_id": str(seq)},
            after={**sales_order_row(seq), "sales_order_id": str(seq), **change},
        )
        for seq, change in enumerate(changes)
    ]
    payment_row = {name: "1" for name in PAYMENT.column_names} | payment
    events.append(ChangeEvent(PAYMENT, Op.INSERT, 0x1000, len(events), 1, None, {"payment_id": "1"}, after=payment_row))
    odd = replace(PAYMENT, table="public.odd", columns=PAYMENT.columns + (Column("odd", type_name, 0),))
    events.append(
        ChangeEvent(
            odd, Op.INSERT, 0x1000, len(events), 1, None, {"payment_id": "1"}, after={**payment_row, "odd": "1"}
        )
    )
    record = encode_events(events)
    assert decode(record).events == tuple(events)  # well framed: only the values are hostile
    with tempfile.TemporaryDirectory() as root:
        outcome = StreamProcessor(LakeWriter(root)).process(kinesis_event([record]))
        assert outcome.response == {"batchItemFailures": []}
        layout = LakeLayout(root)
        stored = set()
        for table in (SALES_ORDER.table, PAYMENT.table, "public.odd"):
            log = ChangeLog(layout, table)
            if log.refresh() is not None:
                rows = log.read()
                stored |= set(zip(rows.column("_lsn").to_pylist(), rows.column("_seq").to_pylist()))
        refused = {e.event_id for letter in list_dead_letters(layout) for e in decode(letter.record).events}
        assert all(letter.reason for letter in list_dead_letters(layout))
        assert stored | refused == {e.event_id for e in events} and not stored & refused


def test_a_state_merge_that_fails_for_the_data_leaves_the_log_and_the_shard_flowing(tmp_path, monkeypatch):
    from lake.state import StateTable
    from tests.lake_fixtures import TODAY, Source, expected_state, lake_state

    source = Source()
    first = source.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 6)])
    with source.transaction() as tx:
        tx.update(SALES_ORDER, sales_order_row(2, version=1))
    writer = LakeWriter(tmp_path, today=lambda: TODAY)
    real_apply = StateTable.apply

    def refusing(*args, **kwargs):
        raise ValueError("a merge predicate the data breaks")

    monkeypatch.setattr(StateTable, "apply", refusing)
    result = writer.write_batch("s1", first, markers=[source.lsn])
    assert result.appended == 5 and "a merge predicate the data breaks" in result.state_errors[SALES_ORDER.table]
    assert writer.lake_watermark(["s1"]) == source.lsn  # the change log has them: the watermark moves

    monkeypatch.setattr(StateTable, "apply", real_apply)  # the cause is fixed
    result = writer.write_batch("s1", tx.events)
    assert not result.state_errors
    layout = LakeLayout(tmp_path)
    assert lake_state(layout, SALES_ORDER.table, SALES_ORDER.key_names) == expected_state(
        first + tx.events, SALES_ORDER.table
    )
