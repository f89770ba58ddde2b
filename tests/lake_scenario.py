"""The lake tests' scenario: a lake in a folder or on moto's S3 (the `new_lake` fixture), one
shard's batches of sales orders and payments, and the reference a clean run must equal."""

from __future__ import annotations

import itertools
import uuid

import pytest

from lake import LakeLayout, LakeWriter
from tests.lake_fixtures import PAYMENT, SALES_ORDER, TODAY, Source, payment_row, sales_order_row, table_snapshot
from tests.moto_s3 import moto_s3  # noqa: F401  (the session's S3 server, a fixture)


SO, PAY = SALES_ORDER.table, PAYMENT.table
SO_KEY, PAY_KEY = SALES_ORDER.key_names, PAYMENT.key_names


@pytest.fixture(name="new_lake", params=["folder", "s3"])
def lake_under_test(request, tmp_path):
    """Makes empty lakes (each call a new root) on the parametrised storage."""
    if request.param == "s3":
        s3 = request.getfixturevalue("moto_s3")
        return lambda: LakeLayout(f"s3://{s3.BUCKET}/{uuid.uuid4().hex[:12]}", s3.storage_options)
    counter = itertools.count()
    return lambda: LakeLayout(tmp_path / f"lake{next(counter)}")


def writer(layout: LakeLayout) -> LakeWriter:
    return LakeWriter(layout, today=lambda: TODAY)


def scenario() -> list[list]:
    """Batches of one shard, in order: a snapshot, then updates with TOAST-unchanged columns,
    deletes, a re-insert, across two tables (and transactions spanning both)."""
    src = Source()
    batches = [
        src.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 13)])
        + src.snapshot(PAYMENT, [payment_row(i) for i in range(1, 5)], start_seq=12)
    ]
    with src.transaction() as t1:
        t1.update(SALES_ORDER, sales_order_row(2, 1))
        t1.update(SALES_ORDER, sales_order_row(3, 1), unchanged=("agreed_payment_date",))
        t1.delete(SALES_ORDER, {"sales_order_id": "4"})
        t1.insert(SALES_ORDER, sales_order_row(13))
        t1.update(PAYMENT, payment_row(1, paid=True))
    with src.transaction() as t2:
        t2.update(SALES_ORDER, sales_order_row(3, 2), unchanged=("agreed_payment_date", "agreed_delivery_date"))
        t2.insert(SALES_ORDER, sales_order_row(14))
        t2.delete(SALES_ORDER, {"sales_order_id": "13"})
        t2.update(PAYMENT, payment_row(2, paid=True))
    batches.append(t1.events + t2.events)
    with src.transaction() as t3:
        t3.insert(SALES_ORDER, sales_order_row(4, 5))
        t3.update(SALES_ORDER, sales_order_row(5, 1))
        t3.delete(PAYMENT, {"payment_id": "3"})
    batches.append(t3.events)
    with src.transaction() as t4:
        t4.update(SALES_ORDER, sales_order_row(14, 1), unchanged=("unit_price",))
        t4.update(SALES_ORDER, sales_order_row(6, 3))
    batches.append(t4.events)
    return batches


def run(layout: LakeLayout, batches, shard: str = "s1") -> LakeLayout:
    lake = writer(layout)
    for batch in batches:
        lake.write_batch(shard, batch)
    return layout


def assert_same_lake(got: LakeLayout, want: LakeLayout, tables=(SO, PAY)) -> None:
    for table in tables:
        for kind in ("changes", "tables"):
            assert table_snapshot(got, kind, table) == table_snapshot(want, kind, table), f"{kind}/{table}"
