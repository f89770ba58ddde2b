"""Where the dashboard and the report get their numbers: thin adapters over the warehouse
(DuckDB file or PostgreSQL), the lake (time travel) and the pipeline's own records (health).

A DuckDB warehouse is opened read-only for one request and let go (its writer, when one
runs, publishes a copy for readers: warehouse_sync/read_copy.py); PostgreSQL needs nothing
special. Rows come back as plain dicts.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl
import psycopg2
import psycopg2.errors

from dashboard import views
from dashboard.charts import plain_rows
from lake.moments import MomentError, parse_moment  # noqa: F401 - parse_moment is this module's too
from warehouse_sync.read_copy import connect_for_reading
from warehouse_sync.targets import is_postgres_dsn
from change_events.errors import Kind, TotesError

log = logging.getLogger("totes.dashboard")


class NoWarehouse(TotesError, LookupError):
    """There is no warehouse there yet (said in one sentence)."""

    kind = Kind.CONFIGURATION


NOT_SYNCED_YET = "The warehouse has no star schema yet: the first sync has not committed."


class Warehouse:
    """Read-only SQL over the warehouse: `with warehouse.session() as run: run(sql)`."""

    def __init__(self, location: str):
        self.location = location
        self.postgres = is_postgres_dsn(location)

    def __repr__(self) -> str:
        return "Warehouse(PostgreSQL)" if self.postgres else f"Warehouse({self.location!r})"

    @contextmanager
    def session(self):
        if self.postgres:
            from cdc_reader.source import connect

            connection = connect(self.location, what="warehouse", application_name="totes-dashboard")
            try:
                with connection.cursor() as cur:
                    cur.execute("SET TIME ZONE 'UTC'")
                    cur.execute("SET default_transaction_read_only = on")

                def run(statement: str) -> list[dict]:
                    with connection.cursor() as cur:
                        try:
                            cur.execute(statement)
                        except psycopg2.errors.UndefinedTable:
                            raise NoWarehouse(NOT_SYNCED_YET) from None
                        names = [d.name for d in cur.description]
                        return [dict(zip(names, row)) for row in cur.fetchall()]

                yield run
            finally:
                connection.close()
            return
        if not Path(self.location).exists():
            raise NoWarehouse(
                f"There is no warehouse at {self.location} yet",
                fix="run the pipeline first (totes demo / totes run), or fix --warehouse.",
            )
        connection = connect_for_reading(self.location)
        try:
            connection.begin()  # one snapshot for every query of the request

            def run(statement: str) -> list[dict]:
                try:
                    result = connection.execute(statement)
                except duckdb.CatalogException:
                    raise NoWarehouse(NOT_SYNCED_YET) from None
                names = [d[0] for d in result.description]
                return [dict(zip(names, row)) for row in result.fetchall()]

            yield run
        finally:
            connection.close()


def business(warehouse: Warehouse, filters: views.Filters) -> dict:
    """Every business view's rows under `filters`, from one consistent read."""
    with warehouse.session() as run:
        found = {view.name: plain_rows(run(view.query(filters))) for view in views.VIEWS}
        currencies = [row["currency_code"] for row in run(views.CURRENCIES_SQL)]
        checkpoint = run("SELECT max(lsn) AS lsn FROM _sync_checkpoint")[0]["lsn"]
    return {"views": found, "currencies": currencies, "checkpoint_lsn": checkpoint}


def order_history(warehouse: Warehouse, order: int | None) -> dict:
    """Every fact version of one sales order (the busiest one when none is named)."""
    with warehouse.session() as run:
        if order is None:
            busiest = run(views.BUSIEST_ORDER_SQL)
            order = busiest[0]["sales_order_id"] if busiest else None
        rows = run(views.order_history_sql(order)) if order is not None else []
    return {"order": order, "versions": plain_rows(views.mark_versions(rows))}


# -- the lake, as of a moment ------------------------------------------------------------------


def lake_tables(lake: str) -> list[str]:
    from lake.layout import CHANGES, LakeLayout

    if "://" not in lake and not Path(lake).is_dir():
        return []
    return LakeLayout(lake).tables(CHANGES)


def lake_state(lake: str, table: str, moment) -> pl.DataFrame:
    """The live rows of a lake table as of `moment` (see `parse_moment`)."""
    from lake.layout import LakeLayout
    from lake.timetravel import current_state, state_as_of_lsn

    layout = LakeLayout(lake)
    if table not in layout.tables():
        raise MomentError(f"The lake has no table {table!r}.")
    if isinstance(moment, tuple):
        frame = pl.from_arrow(state_as_of_lsn(layout, table, moment[1]))
    elif isinstance(moment, int):
        frame = pl.from_arrow(current_state(layout, table, version=moment))
    elif isinstance(moment, datetime):  # source time, as `totes query --as-of`: exact across tables
        from lake.timetravel import AsOfError, lsn_at_time

        try:
            frame = pl.from_arrow(state_as_of_lsn(layout, table, lsn_at_time(layout, moment)))
        except AsOfError as error:
            raise MomentError(f"As of {moment:%Y-%m-%d %H:%M:%S}: {error}") from None
    else:
        frame = pl.from_arrow(current_state(layout, table))
    assert isinstance(frame, pl.DataFrame)  # nosec B101 # type narrowing only
    return frame.select([c for c in frame.columns if not c.startswith("_")])


def lake_difference(lake: str, table: str, before, after) -> dict:
    """What changed in a lake table between two moments: rows added, removed, changed (by key)."""
    from lake.layout import LakeLayout
    from lake.timetravel import state_keys

    keys = state_keys(LakeLayout(lake), table)
    old, new = lake_state(lake, table, before), lake_state(lake, table, after)
    added = new.join(old.select(keys), on=keys, how="anti")
    removed = old.join(new.select(keys), on=keys, how="anti")
    both = new.join(old, on=keys, how="inner", suffix="__before")
    others = [c for c in new.columns if c not in keys and c in old.columns]
    if others and both.height:
        differs = pl.any_horizontal(
            [pl.col(c).cast(pl.String).ne_missing(pl.col(f"{c}__before").cast(pl.String)) for c in others]
        )
        changed = both.filter(differs).select(new.columns)
    else:
        changed = new.clear()
    return {
        "keys": keys,
        "added": plain_rows(added.to_dicts()),
        "removed": plain_rows(removed.to_dicts()),
        "changed": plain_rows(changed.to_dicts()),
    }


# -- pipeline health ---------------------------------------------------------------------------


@dataclass
class HealthSample:
    """One look at every stage (`sample`); a field is None where its stage could not be read."""

    at: datetime
    """When the look was taken."""
    source_wal: int | None = None
    """The source's current WAL position, as bytes since 0/0."""
    slot_retained: int | None = None
    """The most WAL any of the source's slots holds back, in bytes."""
    reader_events: int | None = None
    """Events the readers of this lake have read (their status files), None without one."""
    lake_events: int | None = None
    """Events in every change log of the lake."""
    lake_watermark: int | None = None
    """The lake watermark: the lowest of the shards' last markers."""
    warehouse_lsn: int | None = None
    """The LSN the warehouse was last synced to (`_sync_checkpoint`)."""
    warehouse_facts: int | None = None
    """Fact versions in the warehouse's three fact tables."""
    newest_commit: datetime | None = None
    """The newest source commit the warehouse holds (its newest fact version's valid_from)."""
    source_newest: datetime | None = None
    """The source's newest change (its largest last_updated)."""


def lake_event_count(lake: str) -> int | None:
    """Events in every change log: the sum of the rows of their live files (no data read)."""
    import pyarrow as pa

    from lake.layout import CHANGES, LakeLayout

    if "://" not in lake and not Path(lake).is_dir():
        return None
    layout = LakeLayout(lake)
    total = 0
    for table in layout.tables(CHANGES):
        delta = layout.open(layout.uri(CHANGES, table))
        if delta is not None:
            total += sum(
                v or 0 for v in pa.table(delta.get_add_actions(flatten=True)).column("num_records").to_pylist()
            )
    return total


def reader_event_count(lake: str, home: Path | None = None) -> int | None:
    """Events the readers that report beside this lake or under `home` have read: streamed
    and snapshot (a snapshot may go straight into the lake)."""
    from totes_cli.bootstrap import status_dirs
    from totes_cli.reader_status import read_statuses

    statuses = read_statuses(status_dirs(home, lake or None))
    if not statuses:
        return None
    return sum((s.get("events") or 0) + (s.get("snapshot_events") or 0) for s in statuses.values())


def sample(lake: str, warehouse: Warehouse, source_dsn: str | None, home: Path | None = None) -> HealthSample:
    """One look at every stage: the source's WAL, the reader's events (its status file), the
    lake's events and watermark, the warehouse."""
    from lake.layout import LakeLayout
    from lake.progress import Progress

    now = datetime.now(timezone.utc)
    found = HealthSample(at=now)
    if source_dsn:
        try:
            from cdc_reader.source import connect
            from totesys.stats import read_source

            connection = connect(source_dsn, application_name="totes-dashboard")
            try:
                snapshot = read_source(connection)
            finally:
                connection.close()
            found.source_wal = snapshot.wal_bytes
            found.source_newest = _utc(snapshot.latest_change)
            found.slot_retained = max((s.retained_wal_bytes or 0 for s in snapshot.slots), default=None)
        except Exception as error:  # noqa: BLE001 - a source that cannot be reached leaves its fields empty
            log.debug("the source could not be read: %s", type(error).__name__)
    found.reader_events = reader_event_count(lake, home)
    found.lake_events = lake_event_count(lake)
    if found.lake_events is not None:
        history = Progress(LakeLayout(lake)).history()
        latest: dict[str, int] = {}
        for row in history.select(["shard", "marker_lsn"]).to_pylist():
            latest[row["shard"]] = row["marker_lsn"]
        found.lake_watermark = min(latest.values()) if latest else None
    try:
        with warehouse.session() as run:
            found.warehouse_lsn = run("SELECT max(lsn) AS lsn FROM _sync_checkpoint")[0]["lsn"]
            row = run(
                "SELECT (SELECT count(*) FROM fact_sales_order) + (SELECT count(*) FROM fact_purchase_order)"
                " + (SELECT count(*) FROM fact_payment) AS facts, "
                "greatest((SELECT max(valid_from) FROM fact_sales_order), (SELECT max(valid_from) FROM fact_purchase_order),"
                " (SELECT max(valid_from) FROM fact_payment)) AS newest"
            )[0]
            found.warehouse_facts, found.newest_commit = row["facts"], _utc(row["newest"])
    except Exception as error:  # noqa: BLE001 - no warehouse yet, or being created
        log.debug("the warehouse could not be read: %s", type(error).__name__)
    return found


def rates(samples: list[HealthSample]) -> list[dict]:
    """Events per second of each stage between consecutive samples, and the lags, as rows
    for the health charts."""
    rows = []
    for before, after in zip(samples, samples[1:]):
        seconds = (after.at - before.at).total_seconds()
        if seconds <= 0:
            continue
        at = after.at.isoformat()
        for series, field in (
            ("source WAL (KiB/s)", "source_wal"),
            ("reader events/s", "reader_events"),
            ("lake events/s", "lake_events"),
            ("warehouse fact versions/s", "warehouse_facts"),
        ):
            a, b = getattr(before, field), getattr(after, field)
            if a is not None and b is not None:
                scale = 1024 if field == "source_wal" else 1
                rows.append({"at": at, "series": series, "rate": round(max(b - a, 0) / seconds / scale, 2)})
    return rows


def _utc(moment: datetime | None) -> datetime | None:
    """Source timestamps carry no zone; the source and the pipeline run in UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def lags(samples: list[HealthSample]) -> list[dict]:
    """Commit → warehouse lag at each sample: how far the newest change the warehouse holds is
    behind the source's newest change (0 once caught up; an idle source shows no lag). Without
    the source: the age of the warehouse's newest change."""
    rows = []
    for s in samples:
        if s.newest_commit is None:
            continue
        if s.source_newest is not None:
            rows.append(
                {
                    "at": s.at.isoformat(),
                    "series": "commit → warehouse lag (s)",
                    "seconds": round(max((s.source_newest - s.newest_commit).total_seconds(), 0.0), 2),
                }
            )
        else:
            rows.append(
                {
                    "at": s.at.isoformat(),
                    "series": "age of the newest change in the warehouse (s)",
                    "seconds": round((s.at - s.newest_commit).total_seconds(), 2),
                }
            )
    return rows


def behind(samples: list[HealthSample]) -> list[dict]:
    rows = []
    for s in samples:
        at = s.at.isoformat()
        if s.source_wal is not None and s.lake_watermark:
            rows.append({"at": at, "series": "lake watermark", "kib": max(s.source_wal - s.lake_watermark, 0) / 1024})
        if s.source_wal is not None and s.warehouse_lsn:
            rows.append({"at": at, "series": "warehouse", "kib": max(s.source_wal - s.warehouse_lsn, 0) / 1024})
        if s.slot_retained is not None:
            rows.append({"at": at, "series": "WAL retained by the slot", "kib": s.slot_retained / 1024})
    return rows


def lake_facts(lake: str) -> dict:
    """Dead letters, size and last maintenance of the lake (status_cmd's measures)."""
    from lake.dead_letters import DeadLetters
    from lake.layout import LakeLayout
    from lake.maintenance import lake_uris
    from totes_cli.status_cmd import lake_sizes, lake_table_name

    if "://" not in lake and not Path(lake).is_dir():
        return {}
    layout = LakeLayout(lake)
    letters = DeadLetters(layout).list()
    sizes = lake_sizes(lake) or []
    last_maintenance = None
    for uri in lake_uris(layout):
        table = layout.open(uri)
        for info in table.history(limit=20) if table is not None else []:
            if info.get("operation") in ("OPTIMIZE", "VACUUM END"):
                at = datetime.fromtimestamp(info["timestamp"] / 1000, tz=timezone.utc)
                last_maintenance = at if last_maintenance is None or at > last_maintenance else last_maintenance
    return {
        "dead_letters": len(letters),
        "dead_letter_rows": [
            {"failed_at": d.failed_at.isoformat(), "table": d.source_table, "reason": d.reason} for d in letters[-10:]
        ],
        "stored_bytes": sum(s.stored_bytes for s in sizes),
        "live_bytes": sum(s.live_bytes for s in sizes),
        "tables": [
            {
                "table": lake_table_name(s.uri),
                "stored_bytes": s.stored_bytes,
                "live_bytes": s.live_bytes,
                "files": s.files,
            }
            for s in sorted(sizes, key=lambda s: lake_table_name(s.uri))
        ],
        "last_maintenance": last_maintenance.isoformat(sep=" ", timespec="seconds") if last_maintenance else None,
    }
