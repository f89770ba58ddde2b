"""The warehouse's tables as §3.2 of the schema reference lists them: columns, types, NULLs,
primary and foreign keys, read from the reference document beside the repo (not from
`warehouse_sync`), so the tests compare `warehouse_sync.schema` with the spec, not with itself.

The reference's tables are written for people, so a row may stand for several columns:
`city, postal_code, country, phone | varchar` (one type for all), `created_date / created_time |
date / time` (one type each), and a column's name may carry a remark in parentheses. A fact's
FK cell names the dimension its row refers to; of a row's columns it is those whose type is the
dimension key's type (the date of `created_date / created_time`, never the time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SHARED

REFERENCE = SHARED / "reference" / "totesys-schema.md"

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

TYPES = {"int", "serial", "varchar", "date", "time", "numeric", "numeric(10,2)", "boolean"}
"""The types §3.2 says its tables use; any other cell is a misreading, not a new type."""

NOT_A_REFERENCE = {"–", "-", "", "PK"}
"""What a fact's FK cell says of a column that refers to no dimension."""


@dataclass(frozen=True)
class WarehouseSpec:
    tables: dict[str, list[tuple[str, str, bool]]]
    """Each table's columns in order: (name, type, nullable), facts ending with LINEAGE."""
    primary_keys: dict[str, str]
    foreign_keys: dict[str, dict[str, str]]
    """Per table that has any: column → the table it refers to."""


@pytest.fixture(scope="session")
def warehouse_spec() -> WarehouseSpec:
    """§3.2 of the schema reference beside the repo; skips the test when it is not there."""
    spec = load_reference(REFERENCE)
    if spec is None:
        pytest.skip(f"the schema reference is not available at {REFERENCE}")
    return spec


def load_reference(path: Path = REFERENCE) -> WarehouseSpec | None:
    """§3.2 of the reference at `path`; None when the document is not there."""
    if not path.is_file():
        return None
    return read_warehouse_tables(path.read_text(encoding="utf-8"))


def read_warehouse_tables(document: str) -> WarehouseSpec:
    """The tables of the section "### 3.2" of the reference document's text."""
    section = re.search(r"^### 3\.2 .*?$(.*?)^### ", document, re.MULTILINE | re.DOTALL)
    if section is None:
        raise ValueError("the reference has no section 3.2")
    tables: dict[str, list[tuple[str, str, bool]]] = {}
    primary_keys: dict[str, str] = {}
    references: dict[str, list[tuple[str, str, str]]] = {}  # table → (column, its type, dimension)
    for heading, body in re.findall(r"^#### (\w+).*?$(.*?)(?=^#### |\Z)", section.group(1), re.M | re.S):
        header, *rows = _table_rows(body)
        fk_cell = header.index("FK") if "FK" in header else None
        columns = tables[heading] = []
        for cells in rows:
            row = _columns_of(cells[0], cells[1])
            columns.extend(row)
            if any(re.match(r"PK\b", cell) for cell in cells[2:]):
                primary_keys[heading] = row[0][0]
            if fk_cell is not None and cells[fk_cell] not in NOT_A_REFERENCE:
                dimension = cells[fk_cell].split()[0]
                references.setdefault(heading, []).extend((name, type_, dimension) for name, type_, _ in row)
    key_types = {table: _type_of(tables[table], key) for table, key in primary_keys.items()}
    foreign_keys = {
        table: {name: dimension for name, type_, dimension in refs if type_ == key_types[dimension]}
        for table, refs in references.items()
    }
    for table in tables:
        if table.startswith("fact_"):
            tables[table] += LINEAGE
    return WarehouseSpec(tables, primary_keys, foreign_keys)


def _table_rows(body: str) -> list[list[str]]:
    """The cells of a markdown table's header and body rows (its `|---|` line left out)."""
    lines = [line.strip() for line in body.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [row for row in rows if not set("".join(row)) <= set("-: ")]


def _columns_of(names: str, types: str) -> list[tuple[str, str, bool]]:
    """(name, type, nullable) of the columns one row stands for."""
    names = re.sub(r"\(.*?\)", "", names)
    separator = "/" if "/" in names else ","
    name_list = [n.strip() for n in names.split(separator)]
    type_list = [t.strip() for t in types.split("/")] if "/" in types else [types] * len(name_list)
    if len(type_list) != len(name_list):
        raise ValueError(f"{names!r}: {len(name_list)} columns but types {types!r}")
    out = []
    for name, cell in zip(name_list, type_list):
        type_, _, null = cell.lower().partition(" ")
        if type_ not in TYPES or null not in ("", "null") or not re.fullmatch(r"\w+", name):
            raise ValueError(f"unreadable column {name!r} of type {cell!r}")
        out.append((name, type_, null == "null"))
    return out


def _type_of(columns: list[tuple[str, str, bool]], column: str) -> str:
    return next(type_ for name, type_, _ in columns if name == column)
