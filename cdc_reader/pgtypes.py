"""Column values of pgoutput's text format → exact Python values, chosen by type OID.

Why one file (~500 lines): one converter per type family, all chosen by OID from one table;
they share the session-setting rules the file starts with.

pgoutput sends every column in the text output format of its type (the reader never asks
for `binary 'true'`). That text depends on a few session settings of the connection that
decodes the slot, so the reader must run it with:

    DateStyle = 'ISO, MDY'   IntervalStyle = 'postgres'   bytea_output = 'hex'
    extra_float_digits >= 1 (the default since PostgreSQL 12; 3 is fine too)
    TimeZone: anything (timestamptz values carry their offset and are turned into UTC)

`SESSION_SETTINGS` lists them. Conversions, by type:

| PostgreSQL type                       | Python value                                         |
|---------------------------------------|------------------------------------------------------|
| int2, int4, int8, oid, xid            | int                                                  |
| numeric                               | decimal.Decimal, exact digits and scale ('12.50'),   |
|                                       | NaN / Infinity / -Infinity as the Decimal specials   |
| float4, float8                        | float (nan, inf kept)                                |
| text, varchar, bpchar, name, "char"   | str (bpchar keeps its blank padding)                 |
| bool                                  | bool                                                 |
| timestamp                             | naive datetime (microseconds kept)                   |
| timestamptz                           | aware datetime in UTC                                |
| date                                  | datetime.date                                        |
| time / timetz                         | datetime.time (timetz: with its fixed UTC offset)    |
| uuid                                  | uuid.UUID                                            |
| json, jsonb                           | str: the server's JSON text, byte for byte (never    |
|                                       | parsed and re-serialised, so nothing is reordered or |
|                                       | reformatted; `json.loads` it where needed)           |
| bytea                                 | bytes (hex and escape output formats)                |
| arrays of any type above              | list (nested lists for multi-dimensional arrays,     |
|                                       | None for NULL elements; lower bounds are dropped)    |
| interval, money, inet, xml, ranges, …  | str, the server's text                               |
| enums, domains, any unknown type      | str                                                  |

Values Python cannot represent are kept as the server's text instead of raising, so no row
is ever lost: 'infinity' / '-infinity' timestamps and dates, BC dates ('0044-03-15 BC'),
years after 9999, and the time '24:00:00'. A consumer that needs a typed column can map these
strings explicitly. Anything else that does not parse (e.g. a non-ISO DateStyle) raises
`PgtypesError` naming the column, the type and the value.

`Converter(relation)` turns a `TupleData` of that relation into `Row(values, unchanged)`:
a dict {column: value} and the names of the columns sent as unchanged TOAST ('u'), which are
absent from `values` and must never be read as NULL. Use `convert_key` for an old tuple of
kind 'K' (only the replica-identity columns are real there; the others arrive as nulls).
Under REPLICA IDENTITY FULL every column is flagged as key in the Relation, so the primary
key of such a table has to come from the catalog. `ConverterCache` keeps one Converter per
relation id from a stream's Relation and Type messages.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

from cdc_reader.pgoutput import (
    BINARY_KIND,
    NULL_KIND,
    TEXT_KIND,
    UNCHANGED_KIND,
    Relation,
    TupleData,
    Type,
)

__all__ = [
    "SESSION_SETTINGS",
    "Converter",
    "ConverterCache",
    "PgtypesError",
    "Row",
    "TypeRegistry",
    "parse_array",
]

#: Session settings the decoding connection must use for the text formats parsed here.
SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "bytea_output": "hex",
    "extra_float_digits": "3",
}


class PgtypesError(ValueError):
    """A column value could not be converted; the message names column, type and value."""


Parser = Callable[[str], Any]

# -- type OIDs (pg_type.dat) ------------------------------------------------------------------

BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID, XID = 16, 17, 18, 19, 20, 21, 23, 25, 26, 28
JSON, XML, FLOAT4, FLOAT8, MONEY = 114, 142, 700, 701, 790
BPCHAR, VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = (
    1042, 1043, 1082, 1083, 1114, 1184, 1186, 1266,
)
NUMERIC, UUID_OID, JSONB, XID8 = 1700, 2950, 3802, 5069


# -- scalar parsers (all take the value's text) ----------------------------------------------

def _bool(text: str) -> bool:
    if text == "t":
        return True
    if text == "f":
        return False
    raise ValueError("not a boolean")


def _identity(text: str) -> str:
    return text


def _is_special_datetime(text: str) -> bool:
    """Text of a date/time value Python cannot hold: ±infinity, BC, year > 9999, 24:00."""
    if text in ("infinity", "-infinity") or text.endswith(" BC"):
        return True
    dash = text.find("-")
    return dash > 4 or text.startswith("24:00:00")


def _timestamp(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        if _is_special_datetime(text):
            return text
        raise


_UTC = timezone.utc


def _timestamptz(text: str) -> datetime | str:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        if _is_special_datetime(text):
            return text
        raise
    if value.tzinfo is _UTC:
        return value
    try:
        return value.astimezone(_UTC)
    except OverflowError:  # 0001-01-01 00:30+01 has no UTC datetime
        return text


def _date(text: str) -> date | str:
    try:
        return date.fromisoformat(text)
    except ValueError:
        if _is_special_datetime(text):
            return text
        raise


def _time(text: str) -> time | str:
    try:
        return time.fromisoformat(text)
    except ValueError:
        if _is_special_datetime(text):
            return text
        raise


def _bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        return binascii.unhexlify(text[2:])
    return _bytea_escape(text)


def _bytea_escape(text: str) -> bytes:
    """The `bytea_output = 'escape'` format: backslash-octal escapes, '\\\\' for a backslash."""
    raw = text.encode("latin-1")  # escape output is pure ASCII
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte != 0x5C:
            out.append(byte)
            i += 1
        elif raw[i + 1 : i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        else:
            digits = raw[i + 1 : i + 4]
            if len(digits) != 3 or not digits.isdigit():
                raise ValueError("bad escape in bytea")
            out.append(int(digits, 8))
            i += 4
    return bytes(out)


def _uuid(text: str) -> UUID:
    return UUID(text)


# -- arrays ----------------------------------------------------------------------------------

def parse_array(text: str, element: Parser = _identity, delimiter: str = ",") -> list:
    """Parse an array's text form (`{1,2,NULL}`, `{{"a b","c\\"d"},{x,NULL}}`, `[0:1]={…}`)."""
    if text[:1] == "[":  # explicit bounds decoration, e.g. "[0:2]={1,2,3}"
        text = text[text.index("=") + 1 :]
    if text[:1] != "{" or text[-1:] != "}":
        raise ValueError("not an array literal")
    # Fast path: one dimension, nothing quoted or escaped (numbers, dates, uuids, ...).
    if '"' not in text and "\\" not in text and " " not in text and "{" not in text[1:]:
        body = text[1:-1]
        if not body:
            return []
        return [None if item == "NULL" else element(item) for item in body.split(delimiter)]
    value, end = _parse_array_at(text, 0, element, delimiter)
    if end != len(text):
        raise ValueError("trailing characters after array")
    return value


# What PostgreSQL's array input skips around unquoted elements (not Python's str.isspace set).
_ARRAY_SPACE = " \t\n\r\v\f"


def _parse_array_at(text: str, pos: int, element: Parser, delimiter: str) -> tuple[list, int]:
    # text[pos] == "{"
    items: list = []
    pos += 1
    n = len(text)
    if text[pos] == "}":
        return items, pos + 1
    while True:
        char = text[pos]
        if char == "{":
            sub, pos = _parse_array_at(text, pos, element, delimiter)
            items.append(sub)
        elif char == '"':
            pos += 1
            chunks = []
            while True:
                quote = text.find('"', pos)
                slash = text.find("\\", pos, quote if quote >= 0 else n)
                if quote < 0:
                    raise ValueError("unterminated quoted array element")
                if slash < 0:
                    chunks.append(text[pos:quote])
                    pos = quote + 1
                    break
                chunks.append(text[pos:slash])
                chunks.append(text[slash + 1])
                pos = slash + 2
            items.append(element("".join(chunks)))
        else:
            start = pos
            while text[pos] != delimiter and text[pos] != "}":
                pos += 2 if text[pos] == "\\" else 1
            raw = text[start:pos].strip(_ARRAY_SPACE)
            if raw.upper() == "NULL":
                items.append(None)
            else:
                if "\\" in raw:
                    raw = _unescape_unquoted(raw)
                items.append(element(raw))
        char = text[pos]
        if char == delimiter:
            pos += 1
        elif char == "}":
            return items, pos + 1
        else:
            raise ValueError(f"unexpected {char!r} in array at {pos}")


def _unescape_unquoted(raw: str) -> str:
    out = []
    i = 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw):
            out.append(raw[i + 1])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def _array_of(element: Parser, delimiter: str = ",") -> Parser:
    def parse(text: str) -> list:
        return parse_array(text, element, delimiter)

    return parse


# -- the type table --------------------------------------------------------------------------

_SCALARS: dict[int, Parser] = {
    BOOL: _bool,
    BYTEA: _bytea,
    CHAR: _identity,
    NAME: _identity,
    INT8: int,
    INT2: int,
    INT4: int,
    TEXT: _identity,
    OID: int,
    XID: int,
    XID8: int,
    JSON: _identity,
    XML: _identity,
    FLOAT4: float,
    FLOAT8: float,
    MONEY: _identity,
    BPCHAR: _identity,
    VARCHAR: _identity,
    DATE: _date,
    TIME: _time,
    TIMESTAMP: _timestamp,
    TIMESTAMPTZ: _timestamptz,
    INTERVAL: _identity,
    TIMETZ: _time,
    NUMERIC: Decimal,
    UUID_OID: _uuid,
    JSONB: _identity,
}

# array type OID -> element type OID
_ARRAYS: dict[int, int] = {
    1000: BOOL, 1001: BYTEA, 1002: CHAR, 1003: NAME, 1016: INT8, 1005: INT2, 1007: INT4,
    1009: TEXT, 1028: OID, 1011: XID, 271: XID8, 199: JSON, 143: XML, 1021: FLOAT4,
    1022: FLOAT8, 791: MONEY, 1014: BPCHAR, 1015: VARCHAR, 1182: DATE, 1183: TIME,
    1115: TIMESTAMP, 1185: TIMESTAMPTZ, 1187: INTERVAL, 1270: TIMETZ, 1231: NUMERIC,
    2951: UUID_OID, 3807: JSONB,
}


class TypeRegistry:
    """Type OID → parser. Built-in types are known; others fall back to str.

    `register(oid, parser)` adds or overrides a type (the parser takes the value's text);
    `register_array(array_oid, element_oid)` makes an array of a user type (e.g. an enum
    array, whose OIDs the reader can read from pg_type) parse into a list.
    `observe(Type)` records the names pgoutput sends for user types.
    """

    def __init__(self) -> None:
        self._parsers: dict[int, Parser] = dict(_SCALARS)
        for array_oid, element_oid in _ARRAYS.items():
            self._parsers[array_oid] = _array_of(_SCALARS[element_oid])
        self.type_names: dict[int, str] = {}

    def register(self, oid: int, parser: Parser) -> None:
        self._parsers[oid] = parser

    def register_array(self, array_oid: int, element_oid: int, delimiter: str = ",") -> None:
        self._parsers[array_oid] = _array_of(self.parser(element_oid), delimiter)

    def observe(self, message: Type) -> None:
        self.type_names[message.type_oid] = f"{message.namespace}.{message.name}"

    def parser(self, oid: int) -> Parser:
        return self._parsers.get(oid, _identity)

    def knows(self, oid: int) -> bool:
        return oid in self._parsers


DEFAULT_TYPES = TypeRegistry()


class Row(NamedTuple):
    """A converted tuple: column values, and the columns that were unchanged TOAST ('u')."""

    values: dict[str, Any]
    unchanged: list[str]


class Converter:
    """Converts TupleData of one Relation into `Row`s; built once per Relation message."""

    __slots__ = ("relation", "names", "key_columns", "encoding", "_plan", "_key_plan")

    def __init__(
        self,
        relation: Relation,
        types: TypeRegistry | None = None,
        *,
        encoding: str = "utf-8",
    ) -> None:
        types = types or DEFAULT_TYPES
        self.relation = relation
        self.encoding = encoding
        self.names: tuple[str, ...] = tuple(c.name for c in relation.columns)
        self.key_columns: tuple[str, ...] = relation.key_columns
        # A parser of None means "the text itself" (saves a call for text-like columns).
        self._plan = tuple(
            (c.name, None if (p := types.parser(c.type_oid)) is _identity else p, c.type_oid)
            for c in relation.columns
        )
        self._key_plan = tuple(
            (i, step) for i, step in enumerate(self._plan) if relation.columns[i].flags & 1
        )

    def convert(self, data: TupleData) -> Row:
        """All columns: {name: value} (None for SQL NULL) and the unchanged-TOAST names."""
        plan = self._plan
        if len(data) != len(plan):
            raise PgtypesError(
                f"{self.relation.qualified_name}: tuple has {len(data)} columns, "
                f"the relation {len(plan)}"
            )
        values: dict[str, Any] = {}
        unchanged: list[str] = []
        encoding = self.encoding
        name = raw = None
        oid = 0
        try:
            for (name, parse, oid), (kind, raw) in zip(plan, data):
                if kind == TEXT_KIND:
                    values[name] = (
                        raw.decode(encoding) if parse is None else parse(raw.decode(encoding))
                    )
                elif kind == NULL_KIND:
                    values[name] = None
                elif kind == UNCHANGED_KIND:
                    unchanged.append(name)
                else:
                    raise PgtypesError(self._binary_error(name, kind))
        except PgtypesError:
            raise
        except Exception as exc:
            raise PgtypesError(self._value_error(name, oid, raw, exc)) from exc
        return Row(values, unchanged)

    def convert_key(self, data: TupleData) -> dict[str, Any]:
        """Only the replica-identity columns (what a 'K' old tuple carries)."""
        if len(data) != len(self._plan):
            raise PgtypesError(
                f"{self.relation.qualified_name}: tuple has {len(data)} columns, "
                f"the relation {len(self._plan)}"
            )
        key: dict[str, Any] = {}
        for i, (name, parse, oid) in self._key_plan:
            kind, raw = data[i]
            if kind == TEXT_KIND:
                try:
                    text = raw.decode(self.encoding)
                    key[name] = text if parse is None else parse(text)
                except Exception as exc:
                    raise PgtypesError(self._value_error(name, oid, raw, exc)) from exc
            elif kind == NULL_KIND:
                key[name] = None
            else:
                if kind == BINARY_KIND:
                    raise PgtypesError(self._binary_error(name, kind))
                raise PgtypesError(
                    f"{self.relation.qualified_name}.{name}: key column sent as unchanged TOAST"
                )
        return key

    def _binary_error(self, name: str, kind: str) -> str:
        return (
            f"{self.relation.qualified_name}.{name}: value of kind {kind!r}; only the text "
            "format is converted (do not start replication with binary 'true')"
        )

    def _value_error(self, name, oid, raw, exc) -> str:
        shown = raw if raw is None or len(raw) <= 80 else raw[:80] + b"..."
        return (
            f"{self.relation.qualified_name}.{name}: cannot convert value {shown!r} of type "
            f"OID {oid}: {exc} (the decoding session needs {SESSION_SETTINGS})"
        )


class ConverterCache:
    """Keeps one Converter per relation id, fed with the Relation and Type messages of a stream."""

    def __init__(self, types: TypeRegistry | None = None, *, encoding: str = "utf-8") -> None:
        self.types = types or TypeRegistry()
        self.encoding = encoding
        self._converters: dict[int, Converter] = {}

    def observe(self, message: Relation | Type) -> None:
        if isinstance(message, Relation):
            self._converters[message.relation_id] = Converter(
                message, self.types, encoding=self.encoding
            )
        elif isinstance(message, Type):
            self.types.observe(message)

    def add_relations(self, relations: Iterable[Relation]) -> None:
        for relation in relations:
            self.observe(relation)

    def __getitem__(self, relation_id: int) -> Converter:
        try:
            return self._converters[relation_id]
        except KeyError:
            raise PgtypesError(
                f"no Relation message seen for relation id {relation_id}; "
                "changes cannot be converted before their relation's schema"
            ) from None

    def __contains__(self, relation_id: int) -> bool:
        return relation_id in self._converters
