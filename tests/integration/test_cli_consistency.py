"""A command line that never surprises: one name and one default per concept in every command,
every flag settable in totes.toml, values checked before anything runs, output that fits.

Each test is one inconsistency the command line had; they run the real commands on a real
Delta lake (written by the stream processor) and real DuckDB files.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from change_events import format_lsn
from lake.dead_letters import DeadLetters
from lake.layout import LakeLayout
from tests.lake_fixtures import three_batches
from tests.cli_helpers import every_command
from totes_cli.app import app
from totesys.simulator import LiveEvent, SimulatorStats
from totesys.stats import SourceSnapshot

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-in-the-file"


@pytest.fixture
def lake_lsns(tmp_path, monkeypatch) -> list[int]:
    """TOTES_HOME (`home`) with a lake in its default place ($TOTES_HOME/lake): 5 orders, 2
    updates, a delete; no other TOTES_* setting and no config file. The first LSN of each batch."""
    for name in [name for name in __import__("os").environ if name.startswith("TOTES_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("TOTES_HOME", str(home))
    monkeypatch.setenv("TOTES_CONFIG", str(tmp_path / "totes.toml"))
    return three_batches(home / "lake")


@pytest.fixture
def home(lake_lsns, tmp_path) -> Path:
    return tmp_path / "home"


def totes(*args: str, width: int = 240):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(width)})


def one_sentence(result, code: int = 2) -> str:
    """The single error line of a command that refused, without a traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def config(home: Path, text: str) -> Path:
    path = home.parent / "totes.toml"
    path.write_text(text)
    return path


def help_of(*command: str) -> str:
    result = totes(*command, "--help")
    assert result.exit_code == 0, result.output
    return re.sub(r"[│╭╮╰╯─]", " ", result.output)


def commands_with(flag: str) -> list[list[str]]:
    return [argv for argv in every_command() if re.search(rf"^\s*{flag}\b", help_of(*argv), re.M)]


# -- one name per concept ------------------------------------------------------------------------


def test_the_source_dsn_is_called_source_in_every_command_and_dsn_still_works(home):
    takes_a_source = [argv for argv in every_command() if re.search(r"^\s*--(source|dsn)\b", help_of(*argv), re.M)]
    assert {"doctor", "status", "simulate", "run", "reader"} <= {argv[0] for argv in takes_a_source}
    for argv in takes_a_source:
        shown = help_of(*argv)
        assert re.search(r"^\s*--source\b", shown, re.M) and "--dsn" not in shown, argv
    unreachable = "postgresql://nobody@127.0.0.1:1/x?connect_timeout=1"
    for flag in ("--source", "--dsn"):  # the old name still works, for scripts
        line = one_sentence(totes("doctor", flag, unreachable))
        assert "127.0.0.1" in line, line


# -- one default per concept ---------------------------------------------------------------------


def test_every_command_finds_the_lake_in_its_default_place(home, lake_lsns):
    """`totes lake history sales_order`, exactly as the README shows it."""
    history = totes("lake", "history", "sales_order")
    assert history.exit_code == 0, history.output
    assert format_lsn(lake_lsns[2]) in history.output
    assert totes("lake", "dead-letters").exit_code == 0
    assert totes("lake", "maintain", "--retain", "1m").exit_code == 0
    counted = totes("query", "SELECT count(*) AS n FROM sales_order", "--format", "json")
    assert counted.exit_code == 0 and json.loads(counted.stdout) == [{"n": 4}], counted.output
    for argv in commands_with("--lake"):
        if argv != ["reader"]:  # a reader confirms WAL only up to a lake it is told of
            assert re.search(rf"\[default: {re.escape(str(home / 'lake'))}\]", help_of(*argv)), argv


def test_stream_slot_publication_and_lake_have_one_default_from_the_settings(home, monkeypatch):
    config(home, f'stream = "orders"\nslot = "orders_slot"\npublication = "orders_pub"\nlake = "{home / "lake"}"\n')
    for flag, value in (
        ("--stream", "orders"),
        ("--slot", "orders_slot"),
        ("--publication", "orders_pub"),
        ("--lake", str(home / "lake")),
    ):
        having = commands_with(flag)
        assert having, flag
        for argv in having:
            assert f"[default: {value}]" in help_of(*argv), (flag, argv)
    assert {"run", "reader"} <= {argv[0] for argv in commands_with("--slot")}
    elsewhere = home.parent / "no-lake-here"
    monkeypatch.setenv("TOTES_LAKE", str(elsewhere))  # the environment beats the file
    assert str(elsewhere) in one_sentence(totes("lake", "history", "sales_order"))
    assert totes("lake", "history", "sales_order", "--lake", str(home / "lake")).exit_code == 0  # the flag beats both


# -- totes.toml ----------------------------------------------------------------------------------


def test_every_flag_can_be_set_in_its_command_section_and_a_flag_still_wins(home):
    config(home, '[lake-history]\nchanges = true\nlimit = 1\n\n[query]\nformat = "json"\n')
    history = totes("lake", "history", "sales_order", "--lake", str(home / "lake"))
    assert history.exit_code == 0, history.output
    assert "changes/public.sales_order" in history.output and "the newest 1 of" in history.output
    assert json.loads(totes("query", "SELECT 1 AS one").stdout) == [{"one": 1}]
    csv = totes("query", "SELECT 1 AS one", "--format", "csv")
    assert csv.exit_code == 0 and csv.stdout.split() == ["one", "1"]


@pytest.mark.parametrize(
    "text, named",
    [
        ('lak = "/tmp/x"\n', ["'lak'", "line 1"]),
        ("[run]\nwindw = 0.5\n", ["'windw'", "[run]", "--window"]),
        ("[rn]\nwindow = 0.5\n", ["[rn]", "[run]"]),
        ('[lake-history]\nlimit = "many"\n', ["'limit'", "[lake-history]", "--limit"]),
    ],
)
def test_a_key_no_command_knows_is_one_sentence_naming_it_and_the_file(home, text, named):
    path = config(home, text)
    line = one_sentence(totes("query", "--examples"))
    for word in [str(path), *named]:
        assert word in line, (word, line)


def test_the_example_file_names_every_command_and_only_settings_they_know(home):
    """totes.example.toml with every commented line switched on is a valid config file."""
    example = (REPO / "totes.example.toml").read_text()
    switched_on = "\n".join(re.sub(r"^# (\[[a-z-]+\]|[a-z_-]+ = .*)$", r"\1", line) for line in example.splitlines())
    sections = set(re.findall(r"^\[([a-z-]+)\]", switched_on, re.M))
    commands = {"-".join(argv) for argv in every_command()}
    assert commands <= sections, f"add a section to totes.example.toml for: {sorted(commands - sections)}"
    from totes_cli.settings import PERSONAL_DATA_SECTION

    assert sections <= commands | {PERSONAL_DATA_SECTION}, (
        f"totes.example.toml has sections of no command: {sorted(sections - commands)}"
    )
    shared = set(re.findall(r"^([a-z_]+) = ", switched_on.split("\n[", 1)[0], re.M))
    from totes_cli.settings import Settings

    assert shared == set(Settings.model_fields), "every shared key, and only those"
    import tomllib

    import typer.main

    from totes_cli.settings import _commands

    written = tomllib.loads(switched_on)
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            key = param.opts[0].lstrip("-")
            if (
                param.param_type_name == "option"
                and not param.hidden
                and key != "help"
                and key not in shared | {"source", "warehouse"}
            ):
                assert key in written["-".join(path)], f"totes.example.toml: add {key} to [{'-'.join(path)}]"
    config(home, switched_on)
    result = totes("query", "--examples")
    assert result.exit_code == 0, result.output


def test_help_never_shows_a_password_set_as_a_default(home, monkeypatch):
    dsn = f"postgresql://totes:{PASSWORD}@db.example/totesys"
    config(home, f'warehouse = "{dsn}"\n\n[run]\nsource = "{dsn}"\n\n[status]\nsource = "{dsn}"\n')
    monkeypatch.setenv("TOTES_SOURCE_DSN", dsn)
    for argv in every_command():
        assert PASSWORD not in totes(*argv, "--help").output, argv


# -- flags look like flags ----------------------------------------------------------------------


def test_boolean_flags_are_shown_as_flags_not_as_values(home):
    for argv in [[]] + every_command():
        shown = help_of(*argv)
        assert "<bool>" not in shown, argv
    assert re.search(r"^\s*--until-caught-up\s+Exit 0", help_of("run"), re.M)


# -- values checked before anything runs --------------------------------------------------------


def test_an_unknown_format_is_one_sentence(home):
    line = one_sentence(totes("query", "SELECT 1", "--format", "xml"))
    assert "'xml'" in line and all(name in line for name in ("table", "csv", "json")), line


def test_as_of_outside_the_lake_is_one_sentence(home, lake_lsns):
    first, last = lake_lsns[0], lake_lsns[-1]
    now = datetime.now(timezone.utc)
    cases = {
        "0/1": "older than the lake",
        format_lsn(last + 0x1000000): f"up to {format_lsn(last)}",
        (now + timedelta(days=1)).isoformat(): "in the future",
        "2000-01-01T00:00:00": "before the lake's first source commit",
        "9999": "no lake table has version 9999",
        "last tuesday": "neither a version",
    }
    for as_of, reason in cases.items():
        line = one_sentence(totes("query", "SELECT count(*) FROM sales_order", "--as-of", as_of))
        assert reason in line, (as_of, line)
    inside = totes("query", "SELECT count(*) AS n FROM sales_order", "--as-of", format_lsn(first), "--format", "json")
    assert inside.exit_code == 0 and json.loads(inside.stdout) == [{"n": 5}], inside.output


def test_a_missing_warehouse_file_is_an_error_not_an_empty_result(home, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "warehouse.duckdb"
    line = one_sentence(totes("query", "SELECT 1", "--warehouse", str(missing)))
    assert str(missing) in line and "totes run" in line
    monkeypatch.setenv("TOTES_WAREHOUSE", str(missing))
    monkeypatch.setenv("TOTES_SOURCE_DSN", "postgresql://nobody@127.0.0.1:1/x?connect_timeout=1")
    status = totes("status")
    assert status.exit_code == 1 and str(missing) in status.output and "totes run" in status.output
    monkeypatch.delenv("TOTES_WAREHOUSE")  # the default place, not made yet: said, not an error
    assert "none yet at" in totes("status").output


# -- long and wide output ----------------------------------------------------------------------


def test_listings_are_limited_and_say_so(home):
    layout = LakeLayout(home / "lake")
    for n in range(3):
        DeadLetters(layout).add(f"reason {n}", b"garbage", shard="shardId-000000000000", sequence_number=str(n))
    letters = totes("lake", "dead-letters", "--limit", "2", "--lake", str(home / "lake"))
    assert letters.exit_code == 0, letters.output
    assert "reason 2" in letters.output and "reason 0" not in letters.output and "newest 2 of 3" in letters.output
    history = totes("lake", "history", "sales_order", "--limit", "1", "--lake", str(home / "lake"))
    assert history.exit_code == 0 and "--limit shows more" in history.output, history.output
    assert "[default: 20]" in help_of("lake", "history")


def test_wide_tables_fold_at_80_columns_and_cut_nothing_off(home):
    layout = LakeLayout(home / "lake")
    reason = "the value of column 'design_name' does not fit: " + "x" * 90
    DeadLetters(layout).add(reason, b"garbage", shard="shardId-000000000000", sequence_number="12345678901234")
    for argv in (
        ["lake", "history", "sales_order"],
        ["lake", "dead-letters"],
        ["query", "SELECT * FROM changes_sales_order ORDER BY _lsn, _seq LIMIT 2"],
    ):
        result = totes(*argv, "--lake", str(home / "lake"), width=80)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, (argv, result.output)
        assert "…" not in result.output, (argv, result.output)
    assert (
        totes("lake", "dead-letters", "--lake", str(home / "lake"), width=80).output.count("x") >= 90
    )  # the whole reason, folded
    wide = "SELECT * FROM changes_sales_order ORDER BY _lsn, _seq LIMIT 2"
    names = list(json.loads(totes("query", wide, "--format", "json").stdout)[0])
    assert len(names) > 10
    shown = totes("query", wide, "--lake", str(home / "lake"), width=80).output
    assert all(re.search(rf"(^|\s){re.escape(name)}\s", shown) for name in names), shown  # no header cut up


def test_the_demo_live_view_fits_80_by_24(home):
    from totes_cli.demo_cmd import LIVE_HEIGHT, LIVE_WIDTH, StageFigures, _Rates, live_view
    from totesys.schema import TABLES

    taken = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
    counts = {name: 1_234_567 * (i + 1) for i, name in enumerate(TABLES)}
    previous = SourceSnapshot(taken, "18.1", "logical", "1A/2B3C4D5E", 0x1A2B3C4D5E, counts, taken, ())
    current = SourceSnapshot(
        taken + timedelta(seconds=1),
        "18.1 (Debian 18.1-1.pgdg120+1)",
        "logical",
        "1A/2B3C9999",
        0x1A2B3C9999,
        {name: n + 12 for name, n in counts.items()},
        taken,
        (),
    )
    business = SimulatorStats()
    for kind in ("new_order", "payment", "order_update", "purchase", "new_counterparty", "price_change"):
        business.record(
            LiveEvent(
                kind,
                taken,
                3,
                detail="sales_order 123456 for counterparty 'Fahey and Sons' "
                "of 1,000 totes at 3.25 GBP, agreed delivery 2026-12-24",
            )
        )
    figures = StageFigures(
        read=98_765_432,
        confirmed_lsn=0x1A2B3C0000,
        last_commit_ts=time.time() - 12.5,
        processed=98_765_000,
        batches=1_234_567,
        synced=98_700_000,
        synced_upto=0x1A2B3C0000,
        last_sync_at=time.time() - 0.4,
    )
    warehouse = {
        "fact_sales_order": 12_345_678,
        "fact_purchase_order": 1_234_567,
        "fact_payment": 9_876_543,
        "dim_design": 12_345,
    }
    console = Console(width=LIVE_WIDTH, height=LIVE_HEIGHT, record=True, force_terminal=False, color_system=None)
    console.print(
        live_view(
            current, previous, "postgresql://totes@localhost:5432/totesys", business, figures, _Rates(), warehouse
        )
    )
    shown = console.export_text()
    lines = shown.rstrip("\n").splitlines()
    assert (LIVE_WIDTH, LIVE_HEIGHT) == (80, 24)
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80, shown
    for needed in [
        *TABLES,
        "+12",
        "reader → Kinesis",
        "processor → lake",
        "sync → warehouse",
        "98,765,432",
        "sales_order 12,345,678",
        "business",
        "Ctrl-C",
    ]:
        assert needed in shown, (needed, shown)


def test_a_password_is_warned_about_when_typed_in_a_flag_not_when_read_from_the_file(home):
    typed = f"postgresql://totes:{PASSWORD}@127.0.0.1:1/totesys"
    result = totes("run", "--source", typed, "--warehouse", typed, "--wait-for-source", "0")
    assert result.exit_code == 2 and PASSWORD not in result.output
    assert "the password in --source shows" in result.output and "the password in --warehouse shows" in result.output
    config(home, f'[run]\nsource = "{typed}"\nwarehouse = "{typed}"\nwait-for-source = 0\n')
    quiet = totes("run")
    assert quiet.exit_code == 2 and "127.0.0.1:1" in quiet.output, quiet.output
    assert "shows in the process list" not in quiet.output and PASSWORD not in quiet.output
