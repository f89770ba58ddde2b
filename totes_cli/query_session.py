"""The DuckDB session `totes query` opens: every lake table a view named after it, its
change log beside it, the warehouse attached, all as of one moment (a Delta version, a
source time or a source LSN)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from totes_cli.console import err, fail

if TYPE_CHECKING:  # DuckDB loads when a session is opened: `--help` stays light
    import duckdb


def parse_as_of(text: str | None):
    """VERSION (an integer), a source LSN (like 0/16B3748) or an ISO timestamp (lake.moments)."""
    from lake.moments import MomentError, parse_moment

    try:
        return parse_moment(text)
    except MomentError as error:
        raise fail(f"--as-of {error}", code=2) from None


def open_session(lake: str | None, warehouse: str | None, as_of=None) -> duckdb.DuckDBPyConnection:
    """A DuckDB session where every lake table is a view named after it (its current rows, or
    as of a Delta version of its own state table, a source time or a source LSN), its change
    log is `changes_<table>`, and the warehouse's tables are visible by name.

    A time means the source's: it is mapped to the LSN of the last transaction committed at
    or before it (`lsn_at_time`), so every table answers the same source state. As of a time
    or an LSN the warehouse's fact tables are views of the versions live then
    (`facts_as_of_lsn`); as of a VERSION they are as they are now."""
    import duckdb

    from lake.layout import CHANGES, LakeLayout
    from lake.timetravel import register_duckdb, state_as_of_lsn
    from warehouse_sync.read_copy import attach_for_reading
    from warehouse_sync.schema import quote_identifier as q

    connection = duckdb.connect()
    if lake:
        layout = LakeLayout(lake)
        if isinstance(as_of, datetime):  # a time is the source's: the state after every commit up to it
            from lake.timetravel import lsn_at_time

            as_of = ("lsn", lsn_at_time(layout, as_of))
        for table in layout.tables(CHANGES):
            short = table.partition(".")[2] or table  # the schema holds no dot (as the reader assumes)
            register_duckdb(connection, layout, table, CHANGES, name=f"changes_{short}")
            try:
                if isinstance(as_of, tuple):
                    connection.register(f"_state_{short}", state_as_of_lsn(layout, table, as_of[1]))
                    connection.execute(f"CREATE VIEW {q(short)} AS SELECT * FROM {q(f'_state_{short}')}")  # nosec B608 # view and table names quoted by q()
                    continue
                register_duckdb(
                    connection, layout, table, name=f"_state_{short}", version=as_of if isinstance(as_of, int) else None
                )
            except Exception as error:  # e.g. TableNotInLake, or no such version/time
                err.print(f"[dim]{table}: not available as of {as_of} ({type(error).__name__})[/]")
                continue
            columns = [c for c in connection.execute(f"DESCRIBE {q(f'_state_{short}')}").fetchall()]
            visible = ", ".join(q(name) for name, *_ in columns if not name.startswith("_"))
            view = f"CREATE VIEW {q(short)} AS SELECT {visible} FROM {q(f'_state_{short}')} WHERE NOT _deleted"  # nosec B608 # view, column and table names quoted by q()
            connection.execute(view)
    if warehouse and Path(warehouse).exists():
        attach_for_reading(connection, warehouse)  # or the copy its writer publishes, while one writes it
        connection.execute("SET search_path = 'memory.main,warehouse.main'")
        if isinstance(as_of, tuple):
            facts_as_of_lsn(connection, as_of[1])
    return connection


def facts_as_of_lsn(connection: duckdb.DuckDBPyConnection, lsn: int) -> None:
    """Each fact table of the attached warehouse as a view of the versions live at source LSN
    `lsn` (from its lineage columns: per business key the newest version at or before it,
    unless that version is the row's deletion). Dimensions hold the latest values."""
    from change_events import format_lsn
    from warehouse_sync.as_of import fact_rows_as_of
    from warehouse_sync.schema import FACTS
    from warehouse_sync.schema import quote_identifier as q

    present = {
        name
        for (name,) in connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'warehouse'"
        ).fetchall()
    }
    synced = (
        connection.execute("SELECT max(lsn) FROM warehouse.main._sync_checkpoint").fetchone()[0]  # type: ignore[index]
        if "_sync_checkpoint" in present
        else None
    )
    if synced is None or synced < lsn:
        err.print(
            f"[dim]the warehouse has synced up to {format_lsn(synced) if synced else 'nothing'} only: "
            "its facts as of that point may miss later events.[/]"
        )
    for fact in (f for f in FACTS if f.name in present):
        rows = fact_rows_as_of(fact, lsn, f"warehouse.main.{q(fact.name)}")
        connection.execute(f"CREATE VIEW {q(fact.name)} AS {rows}")  # nosec B608 # names quoted by q(), the LSN is int()
