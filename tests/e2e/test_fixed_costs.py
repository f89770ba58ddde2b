"""Fixed costs: what a command pays before it does anything. The command line loads the lake's
and the warehouse's libraries only in the commands that use them, and a catch-up with nothing
new starts no stream."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("polars", "pyarrow", "deltalake", "duckdb", "boto3", "botocore", "faker")


def modules_after(code: str) -> set[str]:
    """The heavy modules loaded, in a fresh interpreter, by running `code`."""
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_command_line_loads_no_lake_warehouse_or_aws_library():
    assert modules_after("import totes_cli.app") == set()


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["lake", "--help"],
        ["query", "--help"],
        ["reader", "--help"],
        ["sync", "--help"],
        ["demo", "--help"],
        ["dashboard", "--help"],
        ["report", "--help"],
    ],
)
def test_help_loads_no_lake_warehouse_or_aws_library(args):
    code = (
        f"sys.argv = ['totes', *{args!r}]\nimport totes_cli.app\n"
        "try:\n    totes_cli.app.app(standalone_mode=False)\nexcept SystemExit:\n    pass"
    )
    assert modules_after(code) == set()


def test_packages_load_their_parts_on_first_use():
    """The packages still export what they did, loading it when it is asked for."""
    assert modules_after("import lake, change_events, warehouse_sync\nfrom change_events import format_lsn") == set()
    assert "deltalake" in modules_after("from lake import LakeWriter")
    assert "duckdb" in modules_after("from warehouse_sync import open_target")
    assert "pyarrow" in modules_after("from change_events import decode")


def test_the_nothing_new_check_reads_the_lake_and_the_warehouse_with_neither_arrow_nor_polars(tmp_path):
    """What a catch-up with nothing new runs once the source has been asked (the markers in
    the lake, the warehouse's checkpoint) loads deltalake and DuckDB, and neither pyarrow,
    polars nor typer's rich help and error output, on top of what the command line loads."""
    from lake.layout import LakeLayout
    from lake.progress import Progress
    from warehouse_sync import ensure_schema, open_target
    from warehouse_sync.schema import CHECKPOINT

    lake, warehouse = tmp_path / "lake", tmp_path / "warehouse.duckdb"
    Progress(LakeLayout(lake)).record_marker("shardId-000000000000", 100)
    with open_target(warehouse) as target:
        ensure_schema(target)
        target.execute(f"UPDATE {CHECKPOINT.name} SET lsn = 120 WHERE id = 1")
    code = (
        "import totes_cli.app\nfrom totes_cli.catch_up import _warehouse_has_the_lake\n"
        f"assert _warehouse_has_the_lake({str(lake)!r}, {str(warehouse)!r}, ['shardId-000000000000'], 0)\n"
        "assert 'typer.rich_utils' not in sys.modules"
    )
    assert modules_after(code) == {"deltalake", "duckdb"}


def totes(*args: str, home, extra_env: dict | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "TOTES_"))}
    env.update(
        {"TOTES_HOME": str(home), "TOTES_CONFIG": str(home / "none.toml"), "COLUMNS": "200"}, **(extra_env or {})
    )
    return subprocess.run(
        [sys.executable, "-m", "totes_cli", *args], capture_output=True, text=True, timeout=240, env=env
    )


def _slot_position(dsn: str) -> int:
    import psycopg2

    from change_events import parse_lsn

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE database = current_database()")
        (position,) = cur.fetchone()
    conn.close()
    return parse_lsn(position)


@pytest.mark.slow
def test_a_caught_up_run_with_nothing_new_starts_no_stream_and_moves_the_slot(totesys_dsn):
    """Once caught up, `--until-caught-up` with nothing new answers without kinesalite (here it
    cannot start: its binary is missing) and still moves the slot past WAL that was not ours;
    the first change after that takes the ordinary path again and lands in the warehouse."""
    import duckdb
    import psycopg2

    from tests.conftest import make_scratch_dir
    from cdc_reader.source import current_wal_lsn

    home = make_scratch_dir("totes-catch-up-")
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO currency (currency_id, currency_code, created_at, last_updated) "
            "VALUES (1, 'GBP', now(), now())"
        )
    conn.close()
    lake, warehouse = str(home / "lake"), str(home / "warehouse.duckdb")
    run = ("run", "--source", totesys_dsn, "--lake", lake, "--warehouse", warehouse, "--until-caught-up")
    no_kinesalite = {"TOTES_KINESALITE_BIN": str(home / "no-kinesalite")}

    first = totes(*run, home=home)
    assert first.returncode == 0, first.stderr[-3000:]

    # WAL that is not ours (a table outside the publication), then nothing new for us.
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE not_published (x int); INSERT INTO not_published SELECT generate_series(1, 100)")
    conn.close()
    before = current_wal_lsn(totesys_dsn)
    idle = totes(*run, home=home, extra_env=no_kinesalite)
    assert idle.returncode == 0, idle.stderr[-3000:]
    assert "nothing new" in idle.stderr and "up to date" in idle.stderr, idle.stderr
    assert _slot_position(totesys_dsn) >= before

    # A change of ours: the check says so, the ordinary path runs (it needs kinesalite) ...
    with psycopg2.connect(totesys_dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE currency SET currency_code = 'EUR' WHERE currency_id = 1")
    conn.close()
    refused = totes(*run, home=home, extra_env=no_kinesalite)
    assert refused.returncode != 0 and "nothing new" not in refused.stderr, refused.stderr[-3000:]
    # ... and carries it into the warehouse.
    second = totes(*run, home=home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "nothing new" not in second.stderr
    with duckdb.connect(warehouse, read_only=True) as connection:
        assert connection.execute("SELECT currency_code FROM dim_currency").fetchall() == [("EUR",)]


def test_the_peek_tells_a_slot_with_nothing_of_ours_from_one_with_a_change(totesys_dsn):
    """cdc_reader.pending on a real slot: WAL of other tables is passed over and confirmed; a
    change of a published table is seen, and the slot is then left where it was."""
    import psycopg2

    from cdc_reader.pending import nothing_new
    from cdc_reader.source_setup import ensure_publication
    from totesys.schema import TABLES

    conn = psycopg2.connect(totesys_dsn)
    conn.autocommit = True
    try:
        ensure_publication(conn, "totes_cdc", "public", TABLES)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_create_logical_replication_slot('peeked', 'pgoutput')")
            cur.execute("CREATE TABLE not_published (x int); INSERT INTO not_published VALUES (1)")
        check = dict(slot="peeked", publication="totes_cdc", schema="public", tables=TABLES)

        now = nothing_new(conn, **check)
        assert now is not None and _slot_position(totesys_dsn) == now

        with conn.cursor() as cur:
            cur.execute("INSERT INTO currency (currency_code, last_updated) VALUES ('GBP', now())")
            cur.execute("INSERT INTO not_published VALUES (2)")
        assert nothing_new(conn, **check) is None
        assert _slot_position(totesys_dsn) == now
        assert nothing_new(conn, **dict(check, publication="no_such_publication")) is None
        assert nothing_new(conn, **dict(check, slot="no_such_slot")) is None
    finally:
        conn.close()
