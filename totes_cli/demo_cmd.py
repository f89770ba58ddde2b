"""`totes demo`: the whole thing, locally, with a live view.

Starts the embedded totesys under TOTES_HOME, seeds a history when it is empty (a rerun
resumes on the data it has), keeps a simulated business running, and runs the pipeline
(reader, local Kinesis, processor, lake, warehouse sync) on it, showing every stage live.
Ctrl-C (or --duration) stops the business, then the pipeline upstream first, then the source.
"""

from __future__ import annotations

import subprocess  # nosec B404 # to stop the dashboard's process
from contextlib import ExitStack
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich import box
from rich.console import Group
from rich.live import Live
from rich.text import Text

from change_events import format_lsn
from rich.table import Table
from lake.retention import DEMO_RETENTION, format_retention
from totes_cli.console import err, fail
from totes_cli.lake_cmd import RetainOption, retention_option
from totes_cli import bootstrap
from totes_cli.personal_data_config import personal_data_policy
from totes_cli.settings import ConfigError, load
from totes_cli.writer_lock import LakeBusy, writing
from totes_cli.source_cmd import start_source
from totes_cli.status_cmd import human_bytes, source_table
from cdc_reader.source import SourceConnectionError, connect
from totesys.embedded import EmbeddedPostgres, EmbeddedServerError
from totesys.stats import SourceSnapshot, read_source

if TYPE_CHECKING:  # loaded by the command itself: `totes --help` stays light
    from totes_cli.pipeline import Pipeline
    from totesys.simulator import SimulatorStats

REFRESH_SECONDS = 1.0


LIVE_WIDTH, LIVE_HEIGHT = 80, 24
"""The live view fits a terminal of this size (wider ones show the same)."""


def _business_line(stats: SimulatorStats) -> Text:
    """Three lines at most: the rate, the events by kind (wrapped once), the last event."""
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in stats.by_kind.most_common())
    line = Text.assemble(
        ("business ", "bold"),
        f"{stats.events_per_second():.1f} events/s, {stats.events:,} events: ",
        kinds or "none yet",
    )
    if stats.last is not None:
        last = f"last: {stats.last.kind} at {stats.last.at:%H:%M:%S.%f}"[:-3]
        line.append("\n" + (f"{last} {stats.last.detail}" if stats.last.detail else last)[: LIVE_WIDTH - 1])
    return line


WAREHOUSE_TABLES = (
    "fact_sales_order",
    "fact_purchase_order",
    "fact_payment",
    "dim_design",
    "dim_transaction",
    "dim_date",
    "dim_staff",
    "dim_location",
    "dim_counterparty",
    "dim_currency",
    "dim_payment_type",
)


class _Rates:
    """events/s of each stage between two refreshes."""

    def __init__(self):
        self.previous: dict[str, tuple[float, int]] = {}

    def __call__(self, name: str, count: int) -> str:
        now = time.monotonic()
        then, before = self.previous.get(name, (now, count))
        self.previous[name] = (now, count)
        return f"{(count - before) / (now - then):,.0f}/s" if now > then else "-"


@dataclass(frozen=True)
class StageFigures:
    """What the live view shows of the pipeline's stages, read once per refresh."""

    read: int
    confirmed_lsn: int
    last_commit_ts: float | None
    processed: int
    batches: int
    synced: int
    synced_upto: int
    last_sync_at: float | None

    @classmethod
    def of(cls, pipeline: Pipeline) -> "StageFigures":
        reader, poller, sync = pipeline.reader, pipeline.poller, pipeline.sync
        return cls(
            read=reader.metrics.events + reader.metrics.snapshot_events,
            confirmed_lsn=reader.metrics.confirmed_lsn,
            last_commit_ts=reader.metrics.last_commit_ts,
            processed=poller.events,
            batches=poller.batches,
            synced=sync.events,
            synced_upto=sync.synced_upto,
            last_sync_at=sync.last_at,
        )


def _pipeline_table(figures: StageFigures, rates: _Rates, source, warehouse_counts: dict[str, int]) -> Table:
    table = Table(title="pipeline", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("stage", "events", "rate", "position / lag"):
        table.add_column(
            column,
            justify="right" if column != "stage" else "left",
            no_wrap=column != "position / lag",
            overflow="ellipsis",
        )
    retained = max(source.wal_bytes - figures.confirmed_lsn, 0) if figures.confirmed_lsn else None
    behind = f", {time.time() - figures.last_commit_ts:.1f} s behind" if figures.last_commit_ts else ""
    lag = f"{time.time() - figures.last_sync_at:.1f} s ago" if figures.last_sync_at else "waiting for the lake"
    for stage, where, events, position in (
        ("reader", "Kinesis", figures.read, f"WAL kept {human_bytes(retained)}{behind}"),
        ("processor", "lake", figures.processed, f"{figures.batches:,} batches"),
        ("sync", "warehouse", figures.synced, f"up to {format_lsn(figures.synced_upto)}, {lag}"),
    ):
        table.add_row(f"{stage} → {where}", f"{events:,}", rates(stage, events), position)
    facts = ", ".join(f"{name.removeprefix('fact_')} {count:,}" for name, count in warehouse_counts.items())
    table.caption = f"warehouse rows: {facts}" if facts else "warehouse: not synced yet"
    table.caption_justify = "left"
    return table


def live_view(
    current: SourceSnapshot,
    previous: SourceSnapshot,
    dsn: str,
    business: SimulatorStats,
    figures: StageFigures,
    rates: _Rates,
    warehouse_counts: dict[str, int],
    dashboard: str | None = None,
) -> Group:
    """Everything the demo shows, in 80 columns by 24 lines."""
    hint = f"Ctrl-C stops; dashboard: {dashboard}" if dashboard else 'Ctrl-C stops; meanwhile: totes query "SELECT ..."'
    return Group(
        source_table(current, dsn, previous, compact=True),
        _business_line(business),
        _pipeline_table(figures, rates, current, warehouse_counts),
        Text(hint, style="dim"),
    )


def _warehouse_counts(target) -> dict[str, int]:
    from warehouse_sync.schema import row_counts_sql

    try:
        frame = target.query(row_counts_sql(WAREHOUSE_TABLES[:4]))
        return dict(zip(frame["t"].to_list(), frame["n"].to_list()))
    except Exception:  # the schema is created by the first sync
        return {}


def demo(
    home: Annotated[
        Optional[Path],
        typer.Option("--home", help="Where the demo keeps its state \\[default: $TOTES_HOME or ./.totes]."),
    ] = None,
    history_days: Annotated[
        int, typer.Option("--history-days", help="Days of history to seed into an empty totesys.")
    ] = 365,
    rate: Annotated[float, typer.Option("--rate", help="Live business events per second.")] = 5.0,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for a reproducible history.")] = None,
    chaos: Annotated[
        bool,
        typer.Option(
            "--chaos", help="Also delete rows, write huge TOASTed values, run big transactions and add a column."
        ),
    ] = False,
    duration: Annotated[
        Optional[float], typer.Option("--duration", help="Stop by itself after this many seconds.")
    ] = None,
    keep_source: Annotated[
        bool, typer.Option("--keep-source", help="Leave totesys running when the demo stops.")
    ] = False,
    retain: RetainOption = format_retention(DEMO_RETENTION),
    with_dashboard: Annotated[
        bool,
        typer.Option("--dashboard/--no-dashboard", help="Also serve the dashboard on 127.0.0.1 and print its address."),
    ] = True,
) -> None:
    """Run totesys with a live simulated business and watch it change. Ctrl-C stops it all."""
    from totes_cli.pipeline import Pipeline, PipelineConfig
    from totesys.simulator import Simulator, SimulatorError
    from warehouse_sync.targets import open_target

    retention = retention_option(retain)
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
        policy = personal_data_policy(bootstrap.home_lake(settings.home), settings)
    except ConfigError as error:
        raise fail(str(error)) from None
    pipeline = Pipeline(
        PipelineConfig(
            source_dsn=dsn,
            lake=bootstrap.home_lake(settings.home),
            warehouse=bootstrap.home_warehouse(settings.home),
            home=settings.home,
            retention=retention,
            personal_data=policy,
        )
    )
    warehouse = None
    locks = ExitStack()
    try:
        if read_source(conn).row_counts.get("sales_order", 0) == 0:
            report = simulator.seed_history(history_days, progress=True)
            err.print(f"seeded {sum(report.rows.values()):,} rows of history ({report.working_days} working days)")
        else:
            err.print("totesys has data already: resuming the business on it")
        err.print("starting the pipeline (reader, local Kinesis, processor, lake, warehouse sync) ...")
        try:  # as `totes run`: forget refuses while the demo writes the lake
            locks.enter_context(writing(pipeline.config.lake, settings.home))
        except LakeBusy as error:
            raise fail(str(error), code=2) from None
        pipeline.start()
        address = None
        if with_dashboard:
            from totes_cli.dashboard_cmd import spawn

            dashboard, address = spawn(
                settings.home, pipeline.config.lake, pipeline.config.warehouse, settings.home / "dashboard.log"
            )
            err.print(
                f"dashboard: {address}"
                if address
                else f"the dashboard did not start: see {settings.home / 'dashboard.log'}",
                markup=False,
                highlight=False,
            )
        worker = threading.Thread(target=business, name="business", daemon=True)
        worker.start()
        started = time.monotonic()
        previous = read_source(conn)
        rates = _Rates()
        warehouse = open_target(pipeline.config.warehouse)
        with Live(console=err, refresh_per_second=4, transient=False) as live:
            while not stop.is_set() and not pipeline.stop.is_set():
                if duration is not None and time.monotonic() - started >= duration:
                    break
                stop.wait(REFRESH_SECONDS)
                current = read_source(conn)
                live.update(
                    live_view(
                        current,
                        previous,
                        dsn,
                        simulator.stats,
                        StageFigures.of(pipeline),
                        rates,
                        _warehouse_counts(warehouse),
                        dashboard=address,
                    )
                )
                previous = current
    except KeyboardInterrupt:
        err.print("stopping ...")
    finally:
        stop.set()
        if "dashboard" in locals():
            dashboard.terminate()
            try:
                dashboard.wait(timeout=20)
            except subprocess.TimeoutExpired:
                dashboard.kill()
        if "worker" in locals():
            worker.join(timeout=30)
        if warehouse is not None:
            warehouse.close()
        pipeline.shutdown()
        locks.close()
        conn.close()
        simulator.close()
        if not keep_source:
            EmbeddedPostgres(source_dir).stop()
            err.print("totesys stopped")
        else:
            err.print(f"totesys keeps running: {dsn}")
    if failure:
        raise fail(f"the simulated business stopped: {failure[0]}")
    if pipeline.errors:
        stage, error = pipeline.errors[0]
        raise fail(f"the {stage} stopped: {error}")
    err.print(f"done: {simulator.stats.events} business events")
