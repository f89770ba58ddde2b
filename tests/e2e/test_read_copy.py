"""Reading a DuckDB warehouse that another process writes (warehouse_sync/read_copy.py): the
reader gets the last state the writer published, a committed one; without a copy, one
sentence; a writer that starts while a reader holds the file waits for it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cli_helpers import totes
from warehouse_sync.read_copy import ReadCopyPublisher, published_path
from warehouse_sync.targets import open_target


def count(home, warehouse) -> subprocess.CompletedProcess[str]:
    return totes(
        "query",
        "SELECT count(*) AS n, sum(v) AS total FROM numbers",
        "--warehouse",
        str(warehouse),
        "--format",
        "json",
        home=home,
        timeout=60,
    )


def test_a_reader_beside_the_writer_sees_the_last_published_commit(tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    target = open_target(str(warehouse))  # the writer: it holds the file's lock from now on
    readers = ReadCopyPublisher(target, min_interval=3600)
    try:
        target.execute("CREATE TABLE numbers (v integer)")
        target.begin()
        target.execute("INSERT INTO numbers SELECT range FROM range(10)")
        target.commit()
        readers.after_sync(True)  # the first copy is made at once
        assert published_path(warehouse).exists()
        first = count(tmp_path, warehouse)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout) == [{"n": 10, "total": 45}]
        # publishing left the writer's lock in place: no second writer gets in
        second_writer = subprocess.run(
            [sys.executable, "-c", f"import duckdb; duckdb.connect({str(warehouse)!r})"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second_writer.returncode != 0 and "Could not set lock" in second_writer.stderr

        target.begin()
        target.execute("INSERT INTO numbers VALUES (100)")
        target.execute("DELETE FROM numbers WHERE v = 0")
        target.commit()
        target.begin()
        target.execute("INSERT INTO numbers VALUES (1000)")  # not committed when the copy is made
        readers.after_sync(True)  # too soon after the last copy: nothing published
        assert json.loads(count(tmp_path, warehouse).stdout) == [{"n": 10, "total": 45}]
        target.rollback()
        readers.min_interval = 0
        readers.after_sync(False)  # now due: the commit made before is published, the rollback not
        assert json.loads(count(tmp_path, warehouse).stdout) == [{"n": 10, "total": 145}]
    finally:
        readers.close()
        target.close()


def test_a_warehouse_being_written_with_no_copy_yet_is_one_sentence(tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    target = open_target(str(warehouse))
    try:
        target.execute("CREATE TABLE numbers (v integer)")
        result = count(tmp_path, warehouse)
    finally:
        target.close()
    assert result.returncode == 1
    assert "is being written and has no copy for readers yet" in result.stderr
    assert "Traceback" not in result.stderr and "Could not set lock" not in result.stderr


def test_a_writer_starting_while_a_reader_holds_the_file_waits_for_it(tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    open_target(str(warehouse)).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import duckdb, sys, time\n"
                f"c = duckdb.connect({str(warehouse)!r}, read_only=True)\n"
                "print('holding', flush=True)\n"
                "time.sleep(2)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        target = open_target(str(warehouse))  # would fail at once with "Could not set lock"
        target.close()
    finally:
        holder.wait(30)
    assert holder.returncode == 0
