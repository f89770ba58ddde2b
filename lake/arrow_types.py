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
  nothing; a consumer that needs the elements parses it.
- totesys keeps some dates in `text` columns ('YYYY-MM-DD'): those stay strings here, as the
  source typed them.

A value the target type cannot hold ('infinity' timestamps, BC dates, years after 9999, a
NaN numeric(p,s), an out-of-range number) makes `convert_column` raise `ValueConversionError`
naming the column, its type, the first bad value and the positions of every bad row, so the
writer can set those events aside (dead letters) and store the rest.

When a source column changes type, the lake column takes `common_type(lake, source)`: the
narrowest type that holds every value of both, so no event is ever refused for its type:

| lake type + new source type                  | lake column becomes                          |
|----------------------------------------------|----------------------------------------------|
| int16 < int32 < int64 (either way)           | the wider integer                            |
| decimal(p1,s1) + decimal(p2,s2)              | decimal(max integer digits + max s, max s)   |
| integer + decimal(p,s)                       | decimal wide enough for both (19 digits for int64) |
| float32 + float64, int16/int32 + float64     | float64                                      |
| date + timestamp                             | timestamp (midnight)                         |
| anything else, or wider than decimal(38)     | string: every value in its text form         |

Old values are converted with `cast_column` (exactly; to string as PostgreSQL renders
integers, decimals and dates; booleans as 't'/'f', bytea as '\\x…', timestamps as
'YYYY-MM-DD HH:MM:SS.ffffff'). The same table, read the other way round, tells the writer
that a narrowed source column (bigint → integer) still fits the wider lake column as it is.
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
    if len(text) and not pc.all(pc.or_(valid, pc.is_null(text))).as_py():  # all() of nothing is null
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


def convert_column(values: Sequence[str | None] | pa.Array | pa.ChunkedArray, type_name: str, column: str) -> pa.Array:
    """Text values of one column (a list, or an Arrow string array) → an Arrow array of
    `arrow_type(type_name)`.

    Raises ValueConversionError (with every bad row's position) when values do not fit."""
    target = arrow_type(type_name)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    text = values if isinstance(values, pa.Array) else pa.array(values, type=pa.string())
    convert = _converter(target)
    if convert is None:
        return text
    try:
        return convert(text, target)
    except (pa.ArrowException, ValueError, pl.exceptions.PolarsError):
        pass
    # Slow path, only when something does not fit: find every row that fails on its own.
    if isinstance(values, pa.Array):
        values = values.to_pylist()
    bad = [i for i, value in enumerate(values) if value is not None and not _fits(value, convert, target)]
    if not bad:  # the vectorised cast failed for a reason no single value shows
        raise ValueConversionError(column, type_name, None, list(range(len(values))))
    raise ValueConversionError(column, type_name, values[bad[0]], bad)


# -- schema changes --------------------------------------------------------------------------

_INTEGER_DIGITS = {pa.int16(): 5, pa.int32(): 10, pa.int64(): 19}
"""Decimal digits an integer type needs (its range, sign aside)."""


def _decimal_parts(type_: pa.DataType) -> tuple[int, int] | None:
    """(integer digits, scale) of a decimal or integer type, else None."""
    if pa.types.is_decimal(type_):
        return type_.precision - type_.scale, type_.scale
    return (_INTEGER_DIGITS[type_], 0) if type_ in _INTEGER_DIGITS else None


def common_type(lake: pa.DataType, source: pa.DataType) -> pa.DataType:
    """The narrowest type that holds every value of both `lake` and `source` (see above)."""
    if lake == source:
        return lake
    if pa.types.is_integer(lake) and pa.types.is_integer(source):
        return lake if lake.bit_width >= source.bit_width else source
    old, new = _decimal_parts(lake), _decimal_parts(source)
    if old is not None and new is not None:
        digits, scale = max(old[0], new[0]), max(old[1], new[1])
        if digits + scale <= _MAX_DECIMAL128_PRECISION:
            return pa.decimal128(digits + scale, scale)
        return pa.string()
    floats = {lake, source}
    if floats <= {pa.float32(), pa.float64(), pa.int16(), pa.int32()} and pa.float64() in floats:
        return pa.float64()
    if floats == {pa.date32(), pa.timestamp("us")}:
        return pa.timestamp("us")
    return pa.string()


def cast_column(values: pa.Array | pa.ChunkedArray, target: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """`values` as `target`, a `common_type` of their own type: exact, never rounding."""
    if values.type == target:
        return values
    if pa.types.is_string(target):
        if pa.types.is_boolean(values.type):
            return pc.if_else(values, "t", "f")
        if pa.types.is_binary(values.type):
            series = pl.Series(values=values)
            return ("\\x" + series.bin.encode("hex")).to_arrow().cast(pa.string())
    return pc.cast(values, target, safe=True)


def _fits(value: str, convert, target: pa.DataType) -> bool:
    try:
        convert(pa.array([value], type=pa.string()), target)
        return True
    except (pa.ArrowException, ValueError, pl.exceptions.PolarsError):
        return False
