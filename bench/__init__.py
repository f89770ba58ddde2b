"""Benchmarks: measurements, not tests. `python -m bench` runs them and prints a table.

Each benchmark module has `NAME`, `DESCRIPTION` and `run(quick, profile, say) -> Report`;
`__main__` lists them in `BENCHMARKS`. Nothing here asserts a timing: a number over its
target is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REAL_SNAPSHOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "totesys" / "snapshot_2024-11-15_aidan-mooney"
"""The real totesys snapshot (all 11 tables, 11k orders) the load benchmarks start from."""
# The targets of the whole pipeline the load benchmarks print beside their figures.
RSS_TARGET_MB = 500
BACKLOG_TARGET = 100_000


@dataclass
class Row:
    benchmark: str
    result: str
    target: str
    reproduce: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| benchmark | result | target | how to reproduce |", "| --- | --- | --- | --- |"]
    for row in rows:
        cells = (row.benchmark, row.result, row.target, row.reproduce)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
