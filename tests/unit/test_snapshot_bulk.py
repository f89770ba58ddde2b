"""The initial snapshot on the bulk path: COPY chunks under the slot's exported snapshot
straight into the lake, in parallel, resumable after a kill, in memory that does not grow
with the table (cdc_reader/bulk_snapshot.py, lake/snapshot_load.py)."""

from __future__ import annotations


from cdc_reader.copy_text import parse_copy_text


def test_copy_text_parses_into_arrow_exactly():
    data = b"1\t\\N\tplain\n2\t\t\\\\N is not null\\ttab\\nline\n3\tx\t\\\\\n"
    table = parse_copy_text(data, ["a", "b", "c"])
    assert table.to_pylist() == [
        {"a": "1", "b": None, "c": "plain"},
        {"a": "2", "b": "", "c": "\\N is not null\ttab\nline"},
        {"a": "3", "b": "x", "c": "\\"},
    ]
    assert parse_copy_text(b"\n\\N\n", ["only"]).column(0).to_pylist() == ["", None]
