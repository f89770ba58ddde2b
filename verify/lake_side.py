"""The lake side of `totes verify`: a key range of a table's state as of an LSN, rebuilt from
its change log (`lake.timetravel.state_as_of_lsn`, exact for any LSN)."""

from __future__ import annotations

import pyarrow as pa

from lake.delta_io import quote_identifier
from lake.layout import CHANGES, LakeLayout
from lake.schemas import data_columns
from lake.timetravel import TableNotInLake, open_table, state_as_of_lsn
from verify.core import KeyRange


def lake_chunk(layout: LakeLayout, table: str, key: str, chunk: KeyRange, lsn: int) -> pa.Table | None:
    """The live rows of `table` in `chunk` at `lsn`, source columns only (None: the lake has
    no such table)."""
    try:
        columns = data_columns(pa.schema(open_table(layout, CHANGES, table).schema()))
    except TableNotInLake:
        return None
    state = state_as_of_lsn(layout, table, lsn, where=chunk.sql(quote_identifier(key)))
    return state.select(columns)
