"""`totes demo`: the whole thing, locally, with a live view.

Starts the embedded totesys under TOTES_HOME, seeds a history when it is empty (a rerun
resumes on the data it has), keeps a simulated business running, and shows every table
changing. Ctrl-C (or --duration) stops the business and then the source, in that order.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text

from totes_cli.console import err, fail
from totes_cli.settings import load
from totes_cli.source_cmd import start_source
from totes_cli.status_cmd import source_table
from totesys.connection import SourceConnectionError, connect
from totesys.embedded import EmbeddedPostgres, EmbeddedServerError
from totesys.simulator import Simulator, SimulatorError
from totesys.stats import read_source

REFRESH_SECONDS = 1.0


def _business_line(simulator: Simulator) -> Text:
    stats = simulator.stats
    kinds = ", ".join(f"{kind} {count}" for kind, count in stats.by_kind.most_common())
    line = Text.assemble(
        ("business ", "bold"), f"{stats.events_per_second():.1f} events/s, {stats.events} events",
        f" ({kinds})" if kinds else "",
    )
    if stats.last is not None:
        line.append(f"\nlast: {stats.last.kind} at {stats.last.at:%H:%M:%S.%f}"[:-3])
        if stats.last.detail:
            line.append(f" {stats.last.detail}")
    return line


def demo(
    home: Annotated[Optional[Path], typer.Option("--home", help="Where the demo keeps its state \\[default: $TOTES_HOME or ./.totes].")] = None,
    history_days: Annotated[int, typer.Option("--history-days", help="Days of history to seed into an empty totesys.")] = 365,
    rate: Annotated[float, typer.Option("--rate", help="Live business events per second.")] = 5.0,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for a reproducible history.")] = None,
    chaos: Annotated[bool, typer.Option("--chaos", help="Also delete rows, write huge TOASTed values, run big transactions and add a column.")] = False,
    duration: Annotated[Optional[float], typer.Option("--duration", help="Stop by itself after this many seconds.")] = None,
    keep_source: Annotated[bool, typer.Option("--keep-source", help="Leave totesys running when the demo stops.")] = False,
) -> None:
    """Run totesys with a live simulated business and watch it change. Ctrl-C stops it all."""
    settings = load()
    if home is not None:
        settings = settings.model_copy(update={"home": home})
    source_dir = settings.source_dir
    try:
        err.print(f"starting totesys in {source_dir} ...")
        dsn = start_source(source_dir)
        simulator = Simulator(dsn, seed)
        conn = connect(dsn, application_name="totes-demo")
    except (EmbeddedServerError, SourceConnectionError, SimulatorError) as error:
        raise fail(str(error)) from None

    stop = threading.Event()
    failure: list[BaseException] = []

    def business() -> None:
        try:
            simulator.run_live(rate, stop_event=stop, chaos=chaos)
        except BaseException as error:  # shown after the live view closes
            failure.append(error)
            stop.set()

    try:
        if read_source(conn).row_counts.get("sales_order", 0) == 0:
            report = simulator.seed_history(history_days, progress=True)
            err.print(f"seeded {sum(report.rows.values()):,} rows of history ({report.working_days} working days)")
        else:
            err.print("totesys has data already: resuming the business on it")
        worker = threading.Thread(target=business, name="business", daemon=True)
        worker.start()
        started = time.monotonic()
        previous = read_source(conn)
        with Live(console=err, refresh_per_second=4, transient=False) as live:
            while not stop.is_set():
                if duration is not None and time.monotonic() - started >= duration:
                    break
                stop.wait(REFRESH_SECONDS)
                current = read_source(conn)
                live.update(Group(source_table(current, dsn, previous), _business_line(simulator),
                                  Text("Ctrl-C to stop", style="dim")))
                previous = current
    except KeyboardInterrupt:
        err.print("stopping ...")
    finally:
        stop.set()
        if "worker" in locals():
            worker.join(timeout=30)
        conn.close()
        simulator.close()
        if not keep_source:
            EmbeddedPostgres(source_dir).stop()
            err.print("totesys stopped")
        else:
            err.print(f"totesys keeps running: {dsn}")
    if failure:
        raise fail(f"the simulated business stopped: {failure[0]}")
    err.print(f"done: {simulator.stats.events} business events")
