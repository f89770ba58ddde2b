"""`totes simulate`: run the Terrific Totes business against a totesys database."""

from __future__ import annotations

import signal
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Optional

import psycopg2
import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from totes_cli.console import err, fail, out
from totes_cli.options import OldDsnOption, SourceOption, source_or_old_name
from totes_cli.settings import NoSourceError, resolve_source_dsn
from cdc_reader.source import SourceConnectionError

if TYPE_CHECKING:  # the simulator (and faker) load when the command runs: `--help` stays light
    from totesys.simulator import HistoryReport, Simulator, SimulatorStats


def parse_until(text: str | None) -> datetime | None:
    """An ISO date-time as naive UTC (offsets are converted), truncated to milliseconds."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--until {text!r} is not an ISO date-time: write it like 2024-11-15T14:40:00.", code=2) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    from totesys.facts import ms

    return ms(moment)


def simulate(
    source: SourceOption = None,
    history_days: Annotated[
        int,
        typer.Option(
            "--history-days",
            min=0,
            help="Days of past business to write first (Mon-Fri, 08:00-18:59, daily payment "
            "batch). On a database with rows it starts after the newest one.",
        ),
    ] = 0,
    rate: Annotated[
        Optional[float],
        typer.Option(
            "--rate",
            min=0.0,
            help="Then keep the business going live at about this many events per second "
            "(0 = as fast as possible). Live mode ignores business hours; Ctrl-C stops it.",
        ),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            "--seed", help="Random seed; with --until the history is identical on every run \\[default: random]."
        ),
    ] = None,
    until: Annotated[
        Optional[str],
        typer.Option(
            "--until", help="End of the history, ISO date-time, UTC unless it has an offset \\[default: now]."
        ),
    ] = None,
    chaos: Annotated[
        bool,
        typer.Option(
            "--chaos",
            help="Live only: also delete rows, write TOASTed values, bulk-import 1000 orders "
            "in one transaction and, once, add a column to sales_order.",
        ),
    ] = False,
    duration: Annotated[
        Optional[float], typer.Option("--duration", min=0.0, help="Live only: stop after this many seconds.")
    ] = None,
    events: Annotated[
        Optional[int], typer.Option("--events", min=0, help="Live only: stop after this many events.")
    ] = None,
    dsn: OldDsnOption = None,
) -> None:
    """Simulate the Terrific Totes business in totesys: static tables, history, then live events.

    The history is one transaction, identical for the same --seed and --until.

    Live events (--rate) are one transaction each, stamped with the wall clock in UTC.

    Live mode ignores business hours and weekends. A second run continues where the database is.
    """
    from totesys.simulator import Simulator, SimulatorError, utc_now

    live_only = [
        flag
        for flag, given in (("--chaos", chaos), ("--duration", duration is not None), ("--events", events is not None))
        if given
    ]
    if rate is None and live_only:
        verb = "only applies" if len(live_only) == 1 else "only apply"
        raise fail(f"{', '.join(live_only)} {verb} to live mode: add --rate R.", code=2)
    end = parse_until(until)
    if end is not None and end > utc_now():
        raise fail(f"--until {until} is in the future: the history must end by now.", code=2)
    try:
        dsn = resolve_source_dsn(source_or_old_name(source, dsn))
    except NoSourceError as error:
        raise fail(str(error), code=2) from None

    simulator = Simulator(dsn, seed=seed)
    err.print(f"seed {simulator.seed} (pass --seed {simulator.seed} --until ... to repeat the history)")
    try:
        try:
            report = simulator.seed_history(history_days, until=end, progress=True)
        except KeyboardInterrupt:
            raise fail("Interrupted while writing the history: nothing was written.", code=130) from None
        if simulator.created_schema:
            err.print("created the totesys schema")
        _print_history(report, history_days)
        if rate is not None:
            stats = _run_live(simulator, rate, duration, events, chaos)
            _print_live(stats)
    except SourceConnectionError as error:
        raise fail(str(error), code=2) from None
    except SimulatorError as error:
        raise fail(str(error)) from None
    except psycopg2.Error as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise fail(f"PostgreSQL stopped the simulator: {first}") from None
    finally:
        simulator.close()


def _run_live(
    simulator: Simulator, rate: float, duration: float | None, events: int | None, chaos: bool
) -> SimulatorStats:
    """Run live events until done; the first Ctrl-C (or SIGTERM) finishes the current event."""
    stop = threading.Event()
    previous = {}

    def request_stop(signum, frame):
        if not stop.is_set():
            err.print("stopping after the current event (Ctrl-C again to abort it)")
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    stats = simulator.stats
    try:
        with Live(
            get_renderable=lambda: _live_line(stats, chaos),
            console=err,
            refresh_per_second=4,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ):
            simulator.run_live(rate, duration=duration, events=events, chaos=chaos, stop_event=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stats


def _live_line(stats: SimulatorStats, chaos: bool) -> Text:
    kinds = "  ".join(f"{kind} {count}" for kind, count in stats.counts().items())
    label = "live (chaos)" if chaos else "live"
    return Text(f"{label}: {stats.events} events, {stats.events_per_second():.1f}/s  {kinds}")


def _print_history(report: HistoryReport, days: int) -> None:
    from totesys.simulator_report import history_summary

    if report.seeded_static:
        err.print("seeded the static tables (2022-11-03)")
    if days == 0:
        return
    if report.start is None:
        up_to = f"{report.until:%Y-%m-%d %H:%M:%S}"
        out.print(f"history: nothing to add (the database is already up to {up_to})")
        return
    if not report.rows:
        start, end = f"{report.start:%Y-%m-%d %H:%M}", f"{report.until:%Y-%m-%d %H:%M}"
        out.print(f"history: no business between {start} and {end}")
        return
    table = Table(
        title=f"history {report.start:%Y-%m-%d %H:%M} .. {report.until:%Y-%m-%d %H:%M} "
        f"({report.working_days} working days)",
        title_justify="left",
    )
    table.add_column("table")
    table.add_column("rows added", justify="right")
    for name, count in history_summary(report):
        table.add_row(name, f"{count:,}")
    table.caption = f"{report.settled:,} payments settled, {report.silent_updates:,} silent updates"
    table.caption_justify = "left"
    out.print(table)


def _print_live(stats: SimulatorStats) -> None:
    table = Table(
        title=f"live: {stats.events:,} events, {stats.rows:,} rows in {stats.elapsed:.1f} s", title_justify="left"
    )
    table.add_column("event")
    table.add_column("count", justify="right")
    for kind, count in stats.counts().items():
        table.add_row(kind, f"{count:,}")
    out.print(table)
