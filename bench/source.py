"""An embedded totesys for the benchmarks: its schema, static rows, the publication and slots."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg2

from bench.orders import query
from change_events import parse_lsn
from totes_cli import bootstrap

PUBLICATION = bootstrap.PUBLICATION


class Source:
    """An embedded PostgreSQL with the totesys schema, static data and the publication."""

    def __init__(self, root: Path) -> None:
        from totesys.embedded import EmbeddedPostgres

        self.server = EmbeddedPostgres(root / "pg")
        self.admin_dsn = ""
        self.dsn = ""

    def start(self) -> None:
        from cdc_reader.source_setup import ensure_publication
        from totesys.schema import TABLES, create_schema, ensure_database
        from totesys.simulator import Simulator

        self.admin_dsn = self.server.start()
        self.dsn = ensure_database(self.admin_dsn, "totesys")
        create_schema(self.dsn)
        with Simulator(self.dsn, seed=20240101) as simulator:
            simulator.seed_static()
        conn = psycopg2.connect(self.dsn)
        try:
            ensure_publication(conn, PUBLICATION, "public", TABLES)
        finally:
            conn.close()

    def stop(self) -> None:
        socket_dir = self.server.socket_dir
        self.server.stop()
        if not str(socket_dir).startswith(str(self.server.directory)):
            shutil.rmtree(socket_dir, ignore_errors=True)

    def query(self, statement: str, params=None):
        return query(self.dsn, statement, params)

    def server_version(self) -> str:
        return self.query("SHOW server_version")[0][0]

    def create_slots(self, names: list[str]) -> int:
        """pgoutput slots, one after the other with nothing written in between; returns the
        current WAL position after the last."""
        for name in names:
            self.query("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
        return parse_lsn(self.query("SELECT pg_current_wal_lsn()::text")[0][0])

    def drop_slots(self, names: list[str]) -> None:
        for name in names:
            self.query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (name,),
            )
