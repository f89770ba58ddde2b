"""Every connection the project opens to PostgreSQL (source, replication, warehouse) carries
TCP keepalives at both ends, so a half-open connection is noticed within a minute.

Keepalives only mean something on TCP (on a unix socket the server reports them as 0), so
these tests run against a server of their own that listens on 127.0.0.1."""

from __future__ import annotations

import uuid

import psycopg2
import psycopg2.extras
import pytest
from psycopg2 import sql

from cdc_reader.reader import Reader
from tests.conftest import free_port, make_scratch_dir
from tests.fakes import MemorySink
from cdc_reader.source import connect
from totesys.embedded import EmbeddedPostgres
from warehouse_sync import PostgresTarget

SERVER_SIDE = {
    "tcp_keepalives_idle": "20",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000",
}
CLIENT_SIDE = {
    "keepalives": "1",
    "keepalives_idle": "20",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


@pytest.fixture(scope="module")
def tcp_dsn():
    """A database on a server reached over TCP (127.0.0.1, the server's password file)."""
    port = free_port()
    server = EmbeddedPostgres(
        make_scratch_dir("totes-tcp-pg-"), port=port, settings={"listen_addresses": "'127.0.0.1'"}
    )
    server.start()
    name = f"tcp_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(server.dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin.close()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/{name}?passfile={server.passfile}"
    finally:
        server.stop()


def _server_side(conn) -> dict[str, str]:
    found = {}
    with conn.cursor() as cur:
        for name in SERVER_SIDE:
            cur.execute(f"SHOW {name}")
            found[name] = cur.fetchone()[0]
    return found


def _client_side(conn) -> dict[str, str]:
    parameters = conn.get_dsn_parameters()
    return {name: parameters.get(name) for name in CLIENT_SIDE}


def test_source_connections_keep_alive_at_both_ends(tcp_dsn):
    conn = connect(tcp_dsn)
    try:
        assert _server_side(conn) == SERVER_SIDE
        assert _client_side(conn) == CLIENT_SIDE
    finally:
        conn.close()


def test_the_readers_connections_keep_alive_the_replication_one_included(tcp_dsn):
    reader = Reader(tcp_dsn, MemorySink(), MemorySink(), None)
    plain = reader._connect()
    replication = reader._connect(connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        for conn in (plain, replication):
            assert _server_side(conn) == SERVER_SIDE
            assert _client_side(conn) == CLIENT_SIDE
        with plain.cursor() as cur:  # the reader's own session settings are still there
            cur.execute("SHOW TimeZone")
            assert cur.fetchone()[0] == "UTC"
    finally:
        plain.close()
        replication.close()


def test_the_warehouse_connection_keeps_alive(tcp_dsn):
    target = PostgresTarget(tcp_dsn)
    try:
        assert _server_side(target.connection) == SERVER_SIDE
        assert _client_side(target.connection) == CLIENT_SIDE
    finally:
        target.close()


def test_settings_in_the_dsn_win():
    from cdc_reader.source import keepalive_params

    params = keepalive_params("host=db keepalives_idle=5 options='-c tcp_keepalives_idle=7 -c work_mem=8MB'")
    assert "keepalives_idle" not in params and params["keepalives_count"] == "3"
    assert params["options"].startswith("-c tcp_keepalives_idle=7 -c work_mem=8MB")
    assert params["options"].count("tcp_keepalives_idle") == 1 and "-c tcp_keepalives_count=3" in params["options"]
