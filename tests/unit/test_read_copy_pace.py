"""The copy for readers paced by its cost (warehouse_sync.read_copy): a copy that took C
seconds is followed by the next only C * (1 / share - 1) later, so a large warehouse's copies
do not take most of the sync's time. Counted on a fake clock; no file is copied."""

from __future__ import annotations

from types import SimpleNamespace

from warehouse_sync import read_copy
from warehouse_sync.read_copy import ReadCopyPublisher


def _publisher(monkeypatch, tmp_path, copy_seconds: float, **options) -> tuple[ReadCopyPublisher, list, list]:
    now, copies = [0.0], []

    def copy(connection, database, target):  # a copy of a large file: it takes copy_seconds
        now[0] += copy_seconds
        copies.append(now[0])
        return target

    monkeypatch.setattr(read_copy, "publish_copy", copy)
    target = SimpleNamespace(dialect="duckdb", path=str(tmp_path / "warehouse.duckdb"), connection=None)
    return ReadCopyPublisher(target, clock=lambda: now[0], **options), now, copies


def _sync_every_second(publisher: ReadCopyPublisher, now: list, seconds: int) -> None:
    for _ in range(seconds):
        publisher.after_sync(changed=True)
        now[0] += 1.0


def test_a_costly_copy_is_made_at_most_its_share_of_the_time(monkeypatch, tmp_path):
    publisher, now, copies = _publisher(monkeypatch, tmp_path, 2.0, max_share=0.1)
    _sync_every_second(publisher, now, 100)
    # each copy takes 2 s and is followed by 18 s without one: at most a tenth of the time
    assert len(copies) <= 100 * 0.1 / 2.0 + 1
    assert all(later - earlier >= 20.0 for earlier, later in zip(copies, copies[1:]))
    assert publisher.pause() == 18.0


def test_a_cheap_copy_keeps_the_least_interval_and_no_share_keeps_it_too(monkeypatch, tmp_path):
    cheap, now, copies = _publisher(monkeypatch, tmp_path, 0.01, max_share=0.1)
    _sync_every_second(cheap, now, 20)
    assert len(copies) >= 19, "a copy of 10 ms waits its 1 s, not more"
    unpaced, now, copies = _publisher(monkeypatch, tmp_path, 2.0)
    _sync_every_second(unpaced, now, 20)
    assert len(copies) >= 6, "without a share, only the least interval (1 s) keeps copies apart"


def test_the_last_commit_is_published_when_the_sync_stops(monkeypatch, tmp_path):
    publisher, now, copies = _publisher(monkeypatch, tmp_path, 2.0, max_share=0.1)
    _sync_every_second(publisher, now, 3)
    assert len(copies) == 1
    publisher.close()  # changes since the last copy: published however recent it was
    assert len(copies) == 2
