"""The simulator live and from the command line: pacing, stopping, chaos and the seed as the only
source of randomness; every rule of the reference (§2, §5) still holds after live events."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from psycopg2 import sql
from typer.testing import CliRunner

from totes_cli.app import app
from totesys.live import LiveRun
from totesys.schema import TABLES, with_database
from totesys.simulator import Simulator
from tests.simulator_helpers import UNTIL, rows, one, ORDER_RULES, broken_rules
from tests.e2e_helpers import execute


# -- live ---------------------------------------------------------------------------------


def test_live_events_are_committed_and_keep_every_rule(totesys_dsn):
    with Simulator(totesys_dsn, seed=11) as simulator:
        simulator.seed_history(10)  # up to now, so live rows follow the history
        before = one(totesys_dsn, 'SELECT count(*) FROM "transaction"')
        started = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=1)
        seen = []
        stats = simulator.run_live(rate=0, events=60, on_event=seen.append)
    assert stats.events == 60 == len(seen) == sum(stats.by_kind.values())
    assert stats.by_kind["sales_order"] > stats.by_kind["purchase_order"] > 0
    new = one(totesys_dsn, 'SELECT count(*) FROM "transaction" WHERE created_at >= %s', (started,))
    assert new == one(totesys_dsn, 'SELECT count(*) FROM "transaction"') - before
    assert new == stats.by_kind["sales_order"] + stats.by_kind["purchase_order"]
    assert broken_rules(totesys_dsn) == {}


def test_live_settlement_never_pays_a_payment_in_the_moment_it_was_created(totesys_dsn):
    """Live events can share a millisecond (the clock's precision): an order whose payment is
    due today and the settlement right after it. A payment is paid after it was created."""
    monday_midnight = datetime(2024, 11, 18)  # payments agreed "today" are due and payable
    ticks = iter(range(10**6))

    def clock():  # two events per millisecond
        return monday_midnight + timedelta(milliseconds=next(ticks) // 2)

    with Simulator(totesys_dsn, seed=21, clock=clock) as simulator:
        simulator.seed_static()
        stats = simulator.run_live(rate=0, events=150)
    assert stats.by_kind["settlement"] > 0
    assert one(totesys_dsn, "SELECT count(*) FROM payment WHERE payment_date = '2024-11-18'") > 0
    assert broken_rules(totesys_dsn) == {}


def test_live_events_follow_the_seed_alone(totesys_dsn, other_totesys_dsn):
    """The same seed gives the same live events whenever it runs (failures can be replayed)."""
    kinds = []
    for dsn, moment in ((totesys_dsn, datetime(2024, 11, 18, 9)), (other_totesys_dsn, datetime(2025, 3, 4, 15))):
        seen = []
        with Simulator(dsn, seed=22, clock=lambda moment=moment: moment) as simulator:
            simulator.seed_static()
            simulator.run_live(rate=0, events=40, on_event=seen.append)
        kinds.append([event.kind for event in seen])
    assert kinds[0] == kinds[1]


def test_silent_updates_leave_toasted_designs_out_of_line(totesys_dsn):
    """A silent design update moves file_location to an ordinary directory; on a TOASTed
    design that would end the TOAST case the chaos run exists to show."""
    with Simulator(totesys_dsn, seed=23) as simulator:
        simulator.seed_static()
        simulator.run_live(rate=0, events=1, chaos=True, chaos_every=1)  # toast_insert first
        toasted = one(totesys_dsn, "SELECT count(*) FROM design WHERE octet_length(file_location) > 8192")
        assert toasted == 1
        with simulator.connection() as conn, conn.cursor() as cur:
            live = LiveRun(cur, 23, chaos=False, chaos_every=8, started_at=datetime(2024, 11, 18, 9))
            for _ in range(300):
                live._silent_update(cur, datetime(2024, 11, 18, 9))
    assert one(totesys_dsn, "SELECT count(*) FROM design WHERE octet_length(file_location) > 8192") == 1


def test_live_paces_events_and_stops_on_request(totesys_dsn):
    with Simulator(totesys_dsn, seed=12) as simulator:
        simulator.seed_static()
        t0 = time.monotonic()
        stats = simulator.run_live(rate=40, duration=0.5)
        elapsed = time.monotonic() - t0
        assert 0.45 <= elapsed < 1.5
        assert 10 <= stats.events <= 25
        assert 10 <= stats.events_per_second() <= 100
        stop = threading.Event()
        count = []

        def on_event(event):
            count.append(event)
            if len(count) == 5:
                stop.set()

        simulator.run_live(rate=0, stop_event=stop, on_event=on_event)
        assert len(count) == 5
        # a restarted live run continues on the same database
    with Simulator(totesys_dsn, seed=12) as again:
        again.run_live(rate=0, events=5)
    assert broken_rules(totesys_dsn) == {}


def test_chaos_deletes_toasts_bulk_imports_and_adds_a_column(admin_dsn, _template, totesys_dsn):
    with Simulator(totesys_dsn, seed=13) as simulator:
        simulator.seed_history(10)
        execute(totesys_dsn, "SELECT pg_create_logical_replication_slot('simulator_test', 'test_decoding')")
        stats = simulator.run_live(rate=0, events=48, chaos=True)
    assert stats.events == 48

    # a deleted sales order left its transaction behind with sales_order_id set NULL by the FK
    assert (
        one(
            totesys_dsn,
            """SELECT count(*) FROM "transaction"
                              WHERE transaction_type = 'SALE' AND sales_order_id IS NULL""",
        )
        >= 1
    )
    # a deleted payment: one transaction has none now
    assert (
        one(
            totesys_dsn,
            """SELECT count(*) FROM "transaction" t
                              WHERE NOT EXISTS (SELECT 1 FROM payment p
                                                WHERE p.transaction_id = t.transaction_id)""",
        )
        >= 1
    )

    # a value stored out of line, uncompressed, in design's TOAST table
    size, stored = rows(
        totesys_dsn,
        """SELECT octet_length(file_location), pg_column_size(file_location)
                                        FROM design
                                        ORDER BY octet_length(file_location) DESC LIMIT 1""",
    )[0]
    assert size > 8192 and stored >= size
    toast = one(totesys_dsn, "SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'design'")
    assert one(totesys_dsn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*toast.split(".")))) > 0

    changes = [
        r[0] for r in rows(totesys_dsn, "SELECT data FROM pg_logical_slot_get_changes('simulator_test', NULL, NULL)")
    ]
    # a later update of other columns of that row: the WAL does not carry the unchanged big value
    assert any(
        c.startswith("table public.design: UPDATE:") and "file_location[text]:unchanged-toast-datum" in c
        for c in changes
    )
    # one transaction of at least 1000 rows (the bulk import)
    largest, current = 0, 0
    for change in changes:
        if change.startswith("BEGIN"):
            current = 0
        elif change.startswith("table "):
            current += 1
        elif change.startswith("COMMIT"):
            largest = max(largest, current)
    assert largest >= 1000
    assert (
        one(
            totesys_dsn,
            """
        SELECT max(n) FROM (SELECT created_at, count(*) AS n FROM (
            SELECT created_at FROM sales_order UNION ALL SELECT created_at FROM purchase_order
            UNION ALL SELECT created_at FROM "transaction"
            UNION ALL SELECT created_at FROM payment) r
            GROUP BY created_at) g""",
        )
        >= 1000
    )

    # exactly one column that the original schema does not have, filled in by later rows
    query = """SELECT table_name, column_name FROM information_schema.columns
               WHERE table_schema = 'public' AND table_name = ANY(%s)"""
    original = set(rows(with_database(admin_dsn, _template), query, (list(TABLES),)))
    added = set(rows(totesys_dsn, query, (list(TABLES),))) - original
    assert len(added) == 1
    ((table, column),) = added
    filled = one(
        totesys_dsn,
        sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(sql.Identifier(table), sql.Identifier(column)),
    )
    assert filled >= 1
    # surviving orders still follow the payment rules
    for rule in (
        "sales payment breaks a rule",
        "purchase payment breaks a rule",
        "last_updated moved on an order, transaction or design",
    ):
        assert one(totesys_dsn, ORDER_RULES[rule]) == 0, rule


# -- command line -------------------------------------------------------------------------


def test_cli_seeds_history_then_runs_live_events(totesys_dsn, monkeypatch):
    monkeypatch.setenv("TOTES_SOURCE_DSN", totesys_dsn)
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--history-days",
            "5",
            "--seed",
            "4",
            "--until",
            "2024-11-15T14:40:00",
            "--rate",
            "0",
            "--events",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sales_order" in result.stdout
    assert "live: 7 events" in result.stdout
    assert one(totesys_dsn, "SELECT max(created_at) FROM sales_order WHERE created_at < '2024-11-16'") <= UNTIL
    assert broken_rules(totesys_dsn) == {}


def test_cli_refuses_live_flags_without_rate_and_bad_until(totesys_dsn):
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--dsn", totesys_dsn, "--events", "3"])
    assert result.exit_code == 2
    assert "--rate" in result.stderr
    result = runner.invoke(app, ["simulate", "--dsn", totesys_dsn, "--until", "next tuesday"])
    assert result.exit_code == 2
    assert "ISO" in result.stderr
    assert one(totesys_dsn, "SELECT count(*) FROM address") == 0


def test_cli_reports_an_unreachable_database_in_one_sentence(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--dsn", f"postgresql://postgres@/totesys?host={tmp_path}&port=1"])
    assert result.exit_code == 2
    assert "Nothing answers" in result.stderr
    assert "Traceback" not in result.output
