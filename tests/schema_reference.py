"""The tables of the schema reference (shared/reference/totesys-schema.md), read from the
document beside the repo rather than written out again, so the tests compare the project's
schemas with the reference, not with themselves: §2, the source database's tables
(`source_spec`), and §3.2, the warehouse's (`warehouse_spec`). Both fixtures skip the test
when the document is not there.

The reference's tables are written for people, so a row may stand for several columns:
`city, postal_code, country, phone | varchar` (one type for all), `created_date / created_time |
date / time` (one type each); a name may carry a remark in parentheses and be set in bold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from tests.conftest import SHARED

REFERENCE = SHARED / "reference" / "totesys-schema.md"

Column = tuple[str, str, bool]


@pytest.fixture(scope="session")
def schema_reference() -> str:
    """The reference document's text; skips the test when it is not beside the repo."""
    if not REFERENCE.is_file():
        pytest.skip(f"the schema reference is not available at {REFERENCE}")
    return REFERENCE.read_text(encoding="utf-8")


# -- §2: the source database ------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    tables: dict[str, list[Column]]
    """Each table's columns in order: (name, type as PostgreSQL's format_type() prints it, NOT NULL)."""
    foreign_keys: set[tuple[str, str, str, str, str, str]]
    """(table, column, referenced table, referenced column, ON UPDATE, ON DELETE)."""
    unique: set[tuple[str, str]]
    """(table, column) of each unique index other than a primary key."""
    enums: dict[str, list[str]]
    """Each enum type's labels, in order."""


SOURCE_TYPES = {"integer", "text", "boolean", "numeric(10,2)"}
"""§2's types that format_type() prints as §2 writes them; SPELLED_OUT, those it prints otherwise."""
SPELLED_OUT = [
    (r"varchar\((\d+)\)", r"character varying(\1)"),
    (r"timestamp\((\d)\)", r"timestamp(\1) without time zone"),
    (r'enum (".+")', r"\1"),
]
NOT_NULL = {"NOT NULL": True, "NULL": False}

FK_ACTIONS = ("CASCADE", "RESTRICT")
"""ON UPDATE and ON DELETE of every FK (§2's conventions), unless its row says ON DELETE SET NULL."""


@pytest.fixture(scope="session")
def source_spec(schema_reference) -> SourceSpec:
    return read_source_tables(schema_reference)


def read_source_tables(document: str) -> SourceSpec:
    """The tables of the section "## 2." of the reference document's text."""
    section = _section(document, r"## 2\.")
    enums = re.findall(r'`"(\w+)"` = \{([^}]*)\}', section)  # in the conventions shared by all tables
    spec = SourceSpec(
        {}, set(), set(), {name: [label.strip() for label in labels.split(",")] for name, labels in enums}
    )
    for table, (_, *rows) in _tables(section, r"### 2\.\d+").items():
        columns = spec.tables[table] = []
        for name_cell, type_cell, null_cell, notes in rows:
            if null_cell not in NOT_NULL:
                raise ValueError(f"{table}: unreadable null cell {null_cell!r}")
            names = _names(name_cell)
            columns.extend((name, _source_type(type_cell), NOT_NULL[null_cell]) for name in names)
            reference = re.match(r"FK → (\w+)(?:\.(\w+))?", notes)
            if reference:
                target, key = reference.group(1), reference.group(2) or f"{reference.group(1)}_id"
                on_update, on_delete = FK_ACTIONS
                if "ON DELETE SET NULL" in notes:
                    on_delete = "SET NULL"
                spec.foreign_keys.update((table, name, target, key, on_update, on_delete) for name in names)
            if re.search(r"\bUNIQUE\b", notes):
                spec.unique.update((table, name) for name in names)
    return spec


def _source_type(cell: str) -> str:
    """A §2 type cell (bold or not) as format_type() prints the type."""
    type_ = cell.replace("*", "").strip()
    for pattern, format_type in SPELLED_OUT:
        if re.fullmatch(pattern, type_):
            return re.sub(pattern, format_type, type_)
    if type_ not in SOURCE_TYPES:
        raise ValueError(f"unreadable source type {cell!r}")
    return type_


# -- §3.2: the warehouse ----------------------------------------------------------------------


@dataclass(frozen=True)
class WarehouseSpec:
    tables: dict[str, list[Column]]
    """Each table's columns in order: (name, type, nullable), facts ending with LINEAGE."""
    primary_keys: dict[str, str]
    foreign_keys: dict[str, dict[str, str]]
    """Per table that has any: column → the table it refers to."""


LINEAGE = [
    ("is_current", "boolean", False),
    ("is_deleted", "boolean", False),
    ("source_op", "varchar", False),
    ("source_lsn", "bigint", False),
    ("source_seq", "bigint", False),
    ("valid_from", "timestamptz", True),
    ("valid_to", "timestamptz", True),
]
"""What every fact ends with after its §3.2 columns: the project's own lineage (DESIGN.md,
"Warehouse tables"), which the reference does not list."""

WAREHOUSE_TYPES = {"int", "serial", "varchar", "date", "time", "numeric", "numeric(10,2)", "boolean"}
"""The types §3.2 says its tables use; any other cell is a misreading, not a new type."""

NOT_A_REFERENCE = {"–", "-", "", "PK"}
"""What a fact's FK cell says of a column that refers to no dimension."""


@pytest.fixture(scope="session")
def warehouse_spec(schema_reference) -> WarehouseSpec:
    return read_warehouse_tables(schema_reference)


def read_warehouse_tables(document: str) -> WarehouseSpec:
    """The tables of the section "### 3.2" of the reference document's text. A fact's FK cell
    names the dimension its row refers to; of a row's columns it is those whose type is the
    dimension key's type (the date of `created_date / created_time`, never the time)."""
    tables: dict[str, list[Column]] = {}
    primary_keys: dict[str, str] = {}
    references: dict[str, list[tuple[str, str, str]]] = {}  # table → (column, its type, dimension)
    for table, (header, *rows) in _tables(_section(document, r"### 3\.2"), "####").items():
        fk_cell = header.index("FK") if "FK" in header else None
        columns = tables[table] = []
        for cells in rows:
            row = _warehouse_columns(cells[0], cells[1])
            columns.extend(row)
            if any(re.match(r"PK\b", cell) for cell in cells[2:]):
                primary_keys[table] = row[0][0]
            if fk_cell is not None and cells[fk_cell] not in NOT_A_REFERENCE:
                dimension = cells[fk_cell].split()[0]
                references.setdefault(table, []).extend((name, type_, dimension) for name, type_, _ in row)
    key_types = {table: _type_of(tables[table], key) for table, key in primary_keys.items()}
    foreign_keys = {
        table: {name: dimension for name, type_, dimension in refs if type_ == key_types[dimension]}
        for table, refs in references.items()
    }
    for table in tables:
        if table.startswith("fact_"):
            tables[table] += LINEAGE
    return WarehouseSpec(tables, primary_keys, foreign_keys)


def _warehouse_columns(name_cell: str, type_cell: str) -> list[Column]:
    """(name, type, nullable) of the columns one row of §3.2 stands for."""
    names = _names(name_cell)
    types = [t.strip() for t in type_cell.split("/")] if "/" in type_cell else [type_cell] * len(names)
    if len(types) != len(names):
        raise ValueError(f"{name_cell!r}: {len(names)} columns but types {type_cell!r}")
    out = []
    for name, cell in zip(names, types):
        type_, _, null = cell.lower().partition(" ")
        if type_ not in WAREHOUSE_TYPES or null not in ("", "null"):
            raise ValueError(f"unreadable column {name!r} of type {cell!r}")
        out.append((name, type_, null == "null"))
    return out


def _type_of(columns: list[Column], column: str) -> str:
    return next(type_ for name, type_, _ in columns if name == column)


# -- reading the document ---------------------------------------------------------------------


def _section(document: str, heading: str) -> str:
    """The text under the heading that starts with `heading` (a pattern), up to the next
    heading of its level or above."""
    level = heading.split()[0].count("#")
    found = re.search(rf"^{heading} .*?$(.*?)(?=^#{{1,{level}}} |\Z)", document, re.MULTILINE | re.DOTALL)
    if found is None:
        raise ValueError(f"the reference has no section {heading!r}")
    return found.group(1)


def _tables(section: str, heading: str) -> dict[str, list[list[str]]]:
    """The markdown table under each heading `heading <name> ...` of `section`: name → its
    header's cells, then each row's (the `|---|` line left out, prose around it ignored)."""
    tables = {}
    for name, body in re.findall(rf"^{heading} (\w+).*?$(.*?)(?=^{heading} |\Z)", section, re.M | re.S):
        lines = [line.strip() for line in body.splitlines() if line.startswith("|")]
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
        tables[name] = [row for row in rows if not set("".join(row)) <= set("-: ")]
    return tables


def _names(cell: str) -> list[str]:
    """The column names of a name cell: `a`, `a, b`, `a / b`, remarks in parentheses dropped."""
    names = re.sub(r"\(.*?\)", "", cell).replace("*", "")
    separator = "/" if "/" in names else ","
    out = [name.strip() for name in names.split(separator)]
    if not all(re.fullmatch(r"\w+", name) for name in out):
        raise ValueError(f"unreadable column names {cell!r}")
    return out
