"""Erasure (`totes lake forget`): the rows of the given keys leave no trace in any file of the
lake (bytes and decoded values of every version, change log and state, Delta log and
checkpoints), on a folder and on S3; every other key's history, and time travel over it,
stays as it was; the lake keeps taking writes; the erasure is recorded without its values."""

from __future__ import annotations

import itertools
import uuid

import pyarrow as pa
import pytest

from lake import LakeLayout, LakeWriter
from lake.erasure import ErasureError, erasures, forget
from lake.maintenance import checkpoint
from lake.timetravel import changes_as_of_lsn, state_as_of_lsn
from tests.lake_fixtures import moto_s3  # noqa: F401  (the session's S3 server, a fixture)
from tests.trace_search import lake_contents, traces
from tests.warehouse_fixtures import ScriptedSource

STAFF = "public.staff"


@pytest.fixture(params=["folder", "s3"])
def layout(request, tmp_path):
    if request.param == "s3":
        s3 = request.getfixturevalue("moto_s3")
        return LakeLayout(f"s3://{s3.BUCKET}/{uuid.uuid4().hex[:12]}", s3.storage_options)
    return LakeLayout(tmp_path / "lake")


def _staff(src: ScriptedSource, i: int, first: str, email: str) -> None:
    src.insert("staff", staff_id=str(i), first_name=first, last_name=f"Last{i}", department_id="1",
               email_address=email, created_at=src.now(), last_updated=src.now())


def _without(table: pa.Table, key: str) -> list[dict]:
    return [r for r in table.to_pylist() if str(r["staff_id"]) != key]


def test_forget_leaves_no_trace_of_the_rows_and_the_rest_of_history_intact(layout):
    writer = LakeWriter(layout)
    src = ScriptedSource()
    counter = itertools.count()

    def write() -> None:
        batch, src.events[:] = list(src.events), []
        assert not writer.write_batch(f"shardId-{next(counter) % 2:012d}", batch).rejected

    with src.transaction(snapshot=True):
        for i in range(1, 6):
            _staff(src, i, f"Kept{i}", f"kept{i}@terrifictotes.com")
        _staff(src, 7, "Zebedee-Forgotten", "zebedee.forgotten@terrifictotes.com")
    write()
    with src.transaction():
        src.update("staff", 7, first_name="Zebedee-Renamed", last_updated=src.now())
        src.update("staff", 2, first_name="Kept2-second", last_updated=src.now())
    write()
    checkpoint(layout, layout.changes_uri(STAFF))  # checkpoints (with statistics) hold the values too
    checkpoint(layout, layout.state_uri(STAFF))
    middle = src.lsn
    with src.transaction():
        src.update("staff", 7, email_address="zebedee.new@forgotten.example", last_updated=src.now())
        src.update("staff", 3, first_name="Kept3-second", last_updated=src.now())
        _staff(src, 8, "Kept8", "kept8@terrifictotes.com")
    write()
    with src.transaction():
        src.delete("staff", 7)
    write()
    forgotten = ["Zebedee-Forgotten", "Zebedee-Renamed", "zebedee.forgotten@terrifictotes.com",
                 "zebedee.new@forgotten.example"]
    assert {v for _, v in traces(lake_contents(layout), forgotten)} == set(forgotten)  # the search finds them
    before = {lsn: (state_as_of_lsn(layout, STAFF, lsn), changes_as_of_lsn(layout, STAFF, lsn))
              for lsn in (middle, src.lsn)}

    erased = forget(layout, STAFF, ["7"])

    assert (erased.change_rows, erased.state_rows) == (4, 1)  # snapshot, two updates, the delete; its tombstone
    assert traces(lake_contents(layout), forgotten) == []
    for lsn, (state, changes) in before.items():
        assert state_as_of_lsn(layout, STAFF, lsn).to_pylist() == _without(state, "7")
        assert changes_as_of_lsn(layout, STAFF, lsn).to_pylist() == _without(changes, "7")
    record = erasures(layout).to_pylist()
    assert [(r["table"], r["keys"], r["change_rows"], r["state_rows"]) for r in record] == [(STAFF, ["7"], 4, 1)]
    assert traces([("erasures", str(record).encode())], forgotten) == []

    with src.transaction():  # the lake goes on
        src.update("staff", 4, first_name="Kept4-after", last_updated=src.now())
    write()
    names = {r["staff_id"]: r["first_name"] for r in state_as_of_lsn(layout, STAFF, src.lsn).to_pylist()}
    assert names == {1: "Kept1", 2: "Kept2-second", 3: "Kept3-second", 4: "Kept4-after", 5: "Kept5", 8: "Kept8"}


def test_a_key_that_is_no_key_is_one_sentence(tmp_path):
    layout = LakeLayout(tmp_path / "lake")
    src = ScriptedSource()
    with src.transaction(snapshot=True):
        _staff(src, 1, "A", "a@b")
    LakeWriter(layout).write_batch("shardId-000000000000", src.events)
    with pytest.raises(ErasureError, match="numeric key column staff_id: give a number"):
        forget(layout, STAFF, ["1 OR true"])
    assert state_as_of_lsn(layout, STAFF, src.lsn).num_rows == 1
