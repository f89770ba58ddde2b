"""COPY ... TO STDOUT in text form → Arrow string columns, in batches cut at line ends.

The text form is the one pgoutput sends; `totes verify` reads the source this way and types
the columns with the lake's converters (`lake.arrow_types`), as the stream processor does.
(The initial snapshot reads in binary over ADBC instead: cdc_reader/bulk_snapshot.py.)
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cdc_reader.snapshot import _ESCAPE, _unescape_one


def parse_copy_text(data: bytes, names: list[str]) -> pa.Table:
    """Whole lines of COPY ... TO STDOUT (text format) as string columns; NULL as null."""
    labels = [f"c{i}" for i in range(len(names))]
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=labels, block_size=max(1 << 20, len(data) + 1)),
        parse_options=pacsv.ParseOptions(
            delimiter="\t", quote_char=False, escape_char=False, newlines_in_values=False, ignore_empty_lines=False
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={label: pa.string() for label in labels},
            null_values=["\\N"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    columns = []
    for column in table.columns:
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if pc.any(pc.match_substring(column, "\\")).as_py():
            column = pa.array(
                [None if v is None else _ESCAPE.sub(_unescape_one, v) for v in column.to_pylist()], pa.string()
            )
        columns.append(column)
    return pa.Table.from_arrays(columns, names=names)


class CopyBatches:
    """A file-like sink for copy_expert: COPY output cut at line ends into batches of at
    most about `batch_bytes`, each handed to `on_batch` as string columns."""

    def __init__(self, names: list[str], batch_bytes: int, on_batch: Callable[[pa.Table, int], None]):
        self.names = names
        self.batch_bytes = batch_bytes
        self.on_batch = on_batch
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data) -> int:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self._parts.append(data)
        self._size += len(data)
        if self._size >= self.batch_bytes:
            buffer = b"".join(self._parts)
            end = buffer.rfind(b"\n") + 1
            self._parts, self._size = [buffer[end:]], len(buffer) - end
            if end:
                self.on_batch(parse_copy_text(buffer[:end], self.names), end)
        return len(data)

    def close(self) -> None:
        buffer = b"".join(self._parts)
        self._parts, self._size = [], 0
        if buffer and not buffer.endswith(b"\n"):
            raise ValueError("COPY output ended inside a row")
        if buffer:
            self.on_batch(parse_copy_text(buffer, self.names), len(buffer))
