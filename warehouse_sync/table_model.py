"""The tables' building blocks: logical types per engine, SQL quoting, and the Table and Column model.

Type choices:

| §3 type             | PostgreSQL    | DuckDB                                          |
|---------------------|---------------|-------------------------------------------------|
| int                 | integer       | INTEGER                                         |
| varchar             | varchar       | VARCHAR                                         |
| numeric(10,2)       | numeric(10,2) | DECIMAL(10,2)                                   |
| numeric             | numeric       | DECIMAL(18,2) (*)                               |
| SERIAL              | SERIAL        | INTEGER DEFAULT nextval('<table>_<column>_seq') |
| date, time, boolean | same          | same                                            |

(*) DuckDB has no unconstrained exact numeric (a bare DECIMAL is DECIMAL(18,3)). The source
columns behind `item_unit_price` and `payment_amount` are numeric(10,2), so DECIMAL(18,2)
holds every value exactly, with room for sums. `time` keeps microseconds on both engines
(the source's milliseconds survive).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

POSTGRES = "postgresql"
DUCKDB = "duckdb"

# Logical type → (PostgreSQL, DuckDB); its polars type is `_polars_types`'s.
TYPES: dict[str, tuple[str, str]] = {
    "int": ("integer", "INTEGER"),
    "bigint": ("bigint", "BIGINT"),
    "varchar": ("varchar", "VARCHAR"),
    "date": ("date", "DATE"),
    "time": ("time", "TIME"),
    "boolean": ("boolean", "BOOLEAN"),
    "money": ("numeric(10,2)", "DECIMAL(10,2)"),
    "numeric": ("numeric", "DECIMAL(18,2)"),
    "timestamp": ("timestamp", "TIMESTAMP"),
    "timestamptz": ("timestamptz", "TIMESTAMPTZ"),
    "serial": ("SERIAL", "INTEGER"),
}
_DECIMAL = re.compile(r"decimal\((\d+),(\d+)\)")


@cache
def _polars_types() -> dict[str, pl.DataType]:
    """The polars type of each of TYPES, made on first use: the tables' names and DDL load
    without polars (a catch-up with nothing new reads the checkpoint and no frame)."""
    import polars as pl

    return {
        "int": pl.Int32(),
        "bigint": pl.Int64(),
        "varchar": pl.String(),
        "date": pl.Date(),
        "time": pl.Time(),
        "boolean": pl.Boolean(),
        "money": pl.Decimal(10, 2),
        "numeric": pl.Decimal(18, 2),
        "timestamp": pl.Datetime("us"),
        "timestamptz": pl.Datetime("us", "UTC"),
        "serial": pl.Int32(),
    }


def logical_type(name: str) -> tuple[str, str, pl.DataType]:
    """(PostgreSQL, DuckDB, polars) of a logical type: one of TYPES, or 'decimal(p,s)'
    (a mirror column widened to the lake's decimal)."""
    if name in TYPES:
        return (*TYPES[name], _polars_types()[name])
    match = _DECIMAL.fullmatch(name)
    if match is None:
        raise KeyError(name)
    import polars as pl

    precision, scale = int(match[1]), int(match[2])
    return f"numeric({precision},{scale})", f"DECIMAL({precision},{scale})", pl.Decimal(precision, scale)


def quote_identifier(name: str) -> str:
    """`name` as an SQL identifier: double quotes, inner ones doubled. DuckDB and PostgreSQL
    share the rule, so the statements both engines run quote every name with this (and
    `totes query` its DuckDB session's), whatever the name holds."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """`value` as an SQL string literal (single quotes, inner ones doubled), in both engines."""
    return "'" + value.replace("'", "''") + "'"


def column_list(names) -> str:
    """`"a", "b", ...`: quoted names, comma-separated."""
    return ", ".join(map(quote_identifier, names))


@dataclass(frozen=True)
class Index:
    """A PostgreSQL-only index `<table>_<suffix>` on `column`; `unique_current`: unique
    among the rows that are `is_current` (a partial index)."""

    suffix: str
    column: str
    unique_current: bool = False


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table in the terms of §3 (`parse_column` reads 'name type [null]'), a
    fixed record: slots, no per-column dict (the model holds some 200 of them)."""

    name: str
    type: str
    """A logical type: a key of TYPES, or 'decimal(p,s)' (see `logical_type`)."""
    nullable: bool = False
    """§3 marks it NULL; every other column is NOT NULL."""
    references: str | None = None
    """The dimension table this column points at (its primary key)."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: str
    """Primary key column (a surrogate `*_record_id` for facts)."""
    business_key: str | None = None
    """Facts: the source row's id, repeated across its versions."""
    indexes: tuple[Index, ...] = field(default=())
    """PostgreSQL-only extra indexes."""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def polars_schema(self) -> dict[str, pl.DataType]:
        return {c.name: logical_type(c.type)[2] for c in self.columns}

    @property
    def foreign_keys(self) -> list[Column]:
        return [c for c in self.columns if c.references]

    @property
    def is_fact(self) -> bool:
        return self.business_key is not None

    @property
    def sequence(self) -> str:
        return f"{self.name}_{self.key}_seq"


def parse_column(spec: str, references: str | None = None) -> Column:
    """'name type' or 'name type null'."""
    parts = spec.split()
    return Column(parts[0], parts[1], nullable=len(parts) > 2 and parts[2] == "null", references=references)


def define_table(
    name: str, key: str, *specs: str | Column, business_key: str | None = None, indexes: tuple[Index, ...] = ()
) -> Table:
    columns = tuple(s if isinstance(s, Column) else parse_column(s) for s in specs)
    return Table(name, columns, key, business_key, indexes)


def sql_type(logical: str, dialect: str) -> str:
    postgres, duckdb, _ = logical_type(logical)
    return postgres if dialect == POSTGRES else duckdb


def conform(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """`frame` with exactly the columns of `schema`, in its order and types."""
    import polars as pl

    if frame.width == 0 or frame.height == 0:
        return pl.DataFrame(schema=schema)
    return frame.select([pl.col(name).cast(dtype) for name, dtype in schema.items()])
