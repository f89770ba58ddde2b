"""What `totes doctor`'s checks (doctor.py, doctor_tables.py) answer in, and the few catalog
helpers they share: a plain `CheckResult` per finding, each `ok`, `warning` or `problem`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum

from psycopg2 import sql


class Status(StrEnum):
    OK = "ok"
    """the rule is met"""
    WARNING = "warning"
    """capture works, but this is worth a look (a foreign publication, a slot filling the disk)"""
    PROBLEM = "problem"
    """capture cannot work until this is fixed"""


@dataclass(frozen=True)
class CheckResult:
    check: str
    """What was checked: server_version, wal_level, replication_slots, wal_senders,
    replication_privilege, publication, table, table_privilege, slot."""
    status: Status
    message: str
    subject: str | None = None
    """What the result is about when a check runs once per object (a table, a slot)."""

    def to_dict(self) -> dict[str, str | None]:
        data = asdict(self)
        data["status"] = str(self.status)
        return data


@dataclass(frozen=True)
class TableRef:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def is_ready(results: Iterable[CheckResult]) -> bool:
    """True when no result is a problem (warnings do not block capture)."""
    return all(result.status is not Status.PROBLEM for result in results)


def current_role(cur) -> str:
    cur.execute("SELECT current_user")
    return cur.fetchone()[0]


def ident(cur, *names: str) -> str:
    return sql.Identifier(*names).as_string(cur.connection)


def literal(cur, value: str) -> str:
    return sql.Literal(value).as_string(cur.connection)


def table_list(cur, refs: Iterable[TableRef]) -> str:
    """`refs` quoted, comma-separated: as a GRANT or a publication names them."""
    return ", ".join(ident(cur, ref.schema, ref.name) for ref in refs)
