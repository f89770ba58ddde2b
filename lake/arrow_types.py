"""PostgreSQL column types → Arrow types, and whole columns of text values → typed Arrow arrays.

Change events carry every value in PostgreSQL's text output form (see `change_events`). The
lake stores typed columns, converted one column at a time with vectorised casts (pyarrow
compute, polars for hex), never value by value in Python:

| `type_name` (format_type())                  | Arrow type                    | text form read  |
|----------------------------------------------|-------------------------------|-----------------|
| smallint / integer / bigint (oid, xid → bigint)| int16 / int32 / int64       | '42'            |
| numeric(p,s), p <= 38                        | decimal128(p, s), exact       | '12.50'         |
| numeric (unconstrained) or p > 38            | string (the exact text)       | '1.000000001'   |
| real / double precision                      | float32 / float64             | 'NaN', '1e+30'  |
| boolean                                      | bool                          | 't' / 'f'       |
| timestamp[(n)] without time zone             | timestamp('us')               | '2024-05-01 12:34:56.123' |
| timestamp[(n)] with time zone                | timestamp('us', 'UTC')        | '... 12:34:56+01' |
| date                                         | date32                        | '2024-05-01'    |
| bytea                                        | binary                        | '\\x00ff' (hex) |
| text, varchar, char, enums, uuid, json(b),   | string (the server's text)    |                 |
| interval, time, arrays ('integer[]'), others |                               |                 |

Choices worth knowing:
- An unconstrained `numeric` has no fixed scale, so no Arrow decimal holds every value
  exactly; it stays the server's text (never a float). The warehouse casts it where it knows
  the scale. `numeric(p,s)` values also accept NaN in PostgreSQL: such a value does not
  convert (see below).
- Arrays keep their text form ('{1,2,NULL}'): one string column reads everywhere and loses
  nothing; `cdc_reader.pgtypes.parse_array` parses it when needed.
- totesys keeps some dates in `text` columns ('YYYY-MM-DD'): those stay strings here, as the
  source typed them.

A value the target type cannot hold ('infinity' timestamps, BC dates, years after 9999, a
NaN numeric(p,s), an out-of-range number) makes `convert_column` raise `ValueConversionError`
naming the column, its type, the first bad value and the positions of every bad row, so the
writer can set those events aside (dead letters) and store the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from lake.errors import ValueConversionError

_INTEGERS = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "oid": pa.int64(),
    "xid": pa.int64(),
    "xid8": pa.int64(),
}
_FLOATS = {"real": pa.float32(), "double precision": pa.float64()}
_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")
_TIMESTAMP = re.compile(r"timestamp(?:\(\d\))? (with|without) time zone")
_MAX_DECIMAL128_PRECISION = 38


def arrow_type(type_name: str) -> pa.DataType:
    """The lake's Arrow type for a column of PostgreSQL type `type_name` (format_type())."""
    name = type_name.strip()
    if name in _INTEGERS:
        return _INTEGERS[name]
    if name in _FLOATS:
        return _FLOATS[name]
    if name == "boolean":
        return pa.bool_()
    if name == "date":
        return pa.date32()
    if name == "bytea":
        return pa.binary()
    if name.endswith("[]"):
        return pa.string()
    numeric = _NUMERIC.fullmatch(name.replace(" ", ""))
    if numeric:
        precision, scale = int(numeric[1]), int(numeric[2])
        if precision <= _MAX_DECIMAL128_PRECISION:
            return pa.decimal128(precision, scale)
        return pa.string()
    timestamp = _TIMESTAMP.fullmatch(name)
    if timestamp:
        return pa.timestamp("us", "UTC") if timestamp[1] == "with" else pa.timestamp("us")
    if name in ("timestamp", "timestamp without time zone"):
        return pa.timestamp("us")
    if name in ("timestamptz", "timestamp with time zone"):
        return pa.timestamp("us", "UTC")
    return pa.string()


# -- vectorised text → Arrow -----------------------------------------------------------------

def _cast(text: pa.Array, target: pa.DataType) -> pa.Array:
    return pc.cast(text, target, safe=True)


def _boolean(text: pa.Array, target: pa.DataType) -> pa.Array:
    valid = pc.is_in(text, pa.array(["t", "f"]))
    if not pc.all(pc.or_(valid, pc.is_null(text))).as_py():
        raise ValueError("not a boolean ('t'/'f')")
    return pc.equal(text, "t")


def _bytea(text: pa.Array, target: pa.DataType) -> pa.Array:
    series = pl.Series(values=text)
    if not series.drop_nulls().str.starts_with("\\x").all():
        raise ValueError("bytea not in hex output format ('\\x…'; set bytea_output = 'hex')")
    return series.str.slice(2).str.decode("hex").to_arrow().cast(pa.binary())


def _converter(target: pa.DataType) -> Callable[[pa.Array, pa.DataType], pa.Array] | None:
    if pa.types.is_string(target):
        return None
    if pa.types.is_boolean(target):
        return _boolean
    if pa.types.is_binary(target):
        return _bytea
    return _cast


def convert_column(values: Sequence[str | None], type_name: str, column: str) -> pa.Array:
    """Text values of one column → an Arrow array of `arrow_type(type_name)`.

    Raises ValueConversionError (with every bad row's position) when values do not fit."""
    target = arrow_type(type_name)
    text = pa.array(values, type=pa.string())
    convert = _converter(target)
    if convert is None:
        return text
    try:
        return convert(text, target)
    except (pa.ArrowException, ValueError, pl.exceptions.PolarsError):
        pass
    # Slow path, only when something does not fit: find every row that fails on its own.
    bad = [i for i, value in enumerate(values) if value is not None and not _fits(value, convert, target)]
    if not bad:  # the vectorised cast failed for a reason no single value shows
        raise ValueConversionError(column, type_name, None, list(range(len(values))))
    raise ValueConversionError(column, type_name, values[bad[0]], bad)


def _fits(value: str, convert, target: pa.DataType) -> bool:
    try:
        convert(pa.array([value], type=pa.string()), target)
        return True
    except (pa.ArrowException, ValueError, pl.exceptions.PolarsError):
        return False
