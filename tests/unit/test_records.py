"""Record packing (cdc_reader.records): one shard's events, in order, into records that fit."""

from __future__ import annotations

import random
import string

import pytest

from cdc_reader.records import EventTooLargeError, pack
from change_events import decode
from tests.stream_helpers import ORDER, make_event


def test_pack_splits_in_order_and_within_the_limit():
    events = [make_event(ORDER, i, 1, i, text=f"{i:08d}" * 50) for i in range(500)]
    records = [(packed.record(), packed.events) for packed in pack(events, 5000)]
    assert len(records) > 5
    assert all(len(data) <= 5000 for data, _ in records)
    assert [e for data, _ in records for e in decode(data).events] == events
    assert [e for _, group in records for e in group] == events


def test_pack_compresses_a_lone_event_that_fits_only_compressed():
    big = make_event(ORDER, 1, 1, 0, text="same words " * 3000)  # 30 kB that compress well
    (packed,) = pack([big], 5000)
    assert packed.body is None and len(packed.data) <= 5000
    assert decode(packed.data).events == (big,)
    with pytest.raises(EventTooLargeError):
        pack([make_event(ORDER, 2, 1, 0, text="".join(random.Random(3).choices(string.ascii_letters, k=30000)))], 5000)
