"""The composition root: every entry point wires its stage here.

`totes run`, `totes demo` (through `totes_cli/pipeline.py`), `totes reader`, `totes processor`,
`totes sync`, `totes verify`, `totes doctor` and the Lambda handler (`stream_processors/handler.py`)
parse their flags or their environment and call these functions, so each name, default and
path exists once:

- the names: the stream, the replication slot, the publication, the schema (defined once in
  change_events/names.py, below the stages that default to them too) and the tables;
- the places under the home: the lake, the warehouse, the embedded source; and the source,
  lake and warehouse a whole pipeline runs between (`pipeline_places`: `totes run`,
  `totes verify`);
- the small state files of one lake (`StatePaths`): the processor's shard offsets, the
  reader's state and status, the writers' lock, the local Kinesis's data, the slot a local
  lake remembers, its personal-data key;
- the stages themselves: a reader, its Kinesis client and publisher (and `totes run`'s own
  kinesalite), a local poller, the Lambda's processor.

Only the standard library (and change_events/names.py) loads with this module (the settings
read their defaults from it, and `--help` stays light): each function imports the stage it builds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

# The names, defined once below every stage (the reader's and the doctor's defaults read them
# too), and taken from here by every command's flags and settings.
from change_events.files import atomic_write_json
from change_events.names import METRICS_NAMESPACE as METRICS_NAMESPACE
from change_events.names import PUBLICATION as PUBLICATION
from change_events.names import SCHEMA as SCHEMA
from change_events.names import SLOT as SLOT
from change_events.names import SLOT_PREFIX
from change_events.names import STREAM as STREAM

HOME = Path(".totes")
"""Where local state lives unless TOTES_HOME (or totes.toml's `home`) says otherwise."""
SHARDS = 2
"""Shards of a stream the reader or `totes run` creates."""
WINDOW = 0.5
"""The processor's batching window of `totes run` (see `totes_cli.pipeline.windowed`)."""


def source_tables(tables: str | None = None) -> tuple[str, ...]:
    """The source tables the pipeline publishes: those of `--tables` (comma-separated), else
    the totesys tables."""
    from totesys.schema import TABLES

    return tuple(t.strip() for t in tables.split(",") if t.strip()) if tables else TABLES


def home_lake(home: Path) -> str:
    """The lake when none is named: `<home>/lake`."""
    return str(Path(home) / "lake")


def home_warehouse(home: Path) -> str:
    """The warehouse when none is named: `<home>/warehouse.duckdb`."""
    return str(Path(home) / "warehouse.duckdb")


def home_source(home: Path) -> Path:
    """The embedded source's folder: `<home>/source`."""
    return Path(home) / "source"


@dataclass(frozen=True)
class PipelinePlaces:
    """Where a whole pipeline reads and writes (`totes run`, `totes verify --repair`): the
    source, the lake and the warehouse, with the home and the personal-data policy of that lake."""

    source_dsn: str = field(repr=False)  # DSNs may hold passwords: never in a repr
    lake: str
    warehouse: str = field(repr=False)
    home: Path
    personal_data: object
    """The `cdc_reader.personal_data.Policy` the reader applies (and a verification compares by)."""

    def config(self, **options):
        """The `PipelineConfig` between these places; `options` are the rest of its fields."""
        from totes_cli.pipeline import PipelineConfig

        return PipelineConfig(
            source_dsn=self.source_dsn,
            lake=self.lake,
            warehouse=self.warehouse,
            home=self.home,
            personal_data=self.personal_data,
            **options,
        )


def pipeline_places(source: str | None, lake: str | None, warehouse: str | None) -> PipelinePlaces:
    """`--source`, `--lake` and `--warehouse` resolved (flag, TOTES_*, totes.toml, else the
    embedded source and the home's lake and warehouse); a ConfigError in one sentence when one
    cannot be."""
    from totes_cli.personal_data_config import personal_data_policy
    from totes_cli.settings import load, resolve_source_dsn, resolve_warehouse

    dsn = resolve_source_dsn(source)
    home = load().home
    warehouse = resolve_warehouse(warehouse, home_warehouse(home))
    lake = lake or home_lake(home)
    return PipelinePlaces(dsn, lake, warehouse, home, personal_data_policy(lake))


def settings_home() -> Path:
    """The home the settings name (TOTES_HOME, totes.toml's `home`, else ./.totes)."""
    from totes_cli.settings import load

    return load().home


@dataclass(frozen=True)
class StatePaths:
    """Where the stages working on one lake keep their small state. A local lake keeps it inside
    itself (`<lake>/_local`), so two pipelines on one machine never share a stream's offsets,
    a slot or a checkpoint by accident; a lake on S3 (or none) under the home."""

    lake: str | None
    home: Path | None = None
    """Needed only for a lake on S3 (or none): `state_paths` fills it from the settings."""

    @property
    def local(self) -> Path | None:
        """`<lake>/_local` for a lake on this machine, None for a lake on S3 or no lake."""
        if not self.lake or "://" in self.lake:
            return None
        return Path(self.lake) / "_local"

    @property
    def root(self) -> Path:
        return self.local if self.local is not None else self._home

    @property
    def _home(self) -> Path:
        if self.home is None:
            raise ValueError(f"the state of a lake on S3 (or none) lives under the home: give it for {self.lake}")
        return Path(self.home)

    def offsets(self, stream: str) -> Path:
        """The processor's position in each shard of `stream` (`ShardOffsets`)."""
        if self.local is None:
            return self._home / "processor" / f"{stream}.offsets.json"
        return self.local / "offsets" / f"{stream}.json"

    @property
    def reader_dir(self) -> Path:
        return self.root / "reader"

    def reader_state(self, slot: str, state_dir: Path | None = None) -> Path:
        """The reader's state (`FileStateStore`); `state_dir` is `totes reader --state-dir`."""
        return Path(state_dir or self.reader_dir) / f"{slot}.json"

    @staticmethod
    def reader_status(state: Path) -> Path:
        """The status file beside a reader's state (what `totes status` and the dashboard show)."""
        return state.with_name(f"{state.name.removesuffix('.json')}.status.json")

    @property
    def writers_lock(self) -> Path:
        """The lake's writer lock (totes_cli/writer_lock.py): a lake on S3 has one per machine."""
        if self.local is not None:
            return self.local / "writers.lock"
        digest = hashlib.sha1((self.lake or "").rstrip("/").encode(), usedforsecurity=False).hexdigest()[:16]
        return self._home / "locks" / f"lake-{digest}.lock"

    @property
    def kinesis(self) -> Path | None:
        """The local Kinesis's data, kept inside the local lake it feeds."""
        return None if self.local is None else self.local / "kinesis"

    @property
    def names(self) -> Path | None:
        """The names fixed at a local lake's first use (its slot)."""
        return None if self.local is None else self.local / "pipeline.json"

    @property
    def personal_data_key(self) -> Path | None:
        """A local lake's own personal-data key (0600)."""
        return None if self.local is None else self.local / "personal-data.key"


def state_paths(lake: str | None, home: Path | None = None) -> StatePaths:
    """The state paths of `lake`; one on S3 (or none) under `home`, else the settings' home."""
    if home is None and StatePaths(lake).local is None:
        home = settings_home()
    return StatePaths(lake, Path(home) if home is not None else None)


def status_dirs(home: Path | None, lake: str | None) -> list[Path]:
    """Where readers write their status: `<home>/reader` and a local lake's `_local/reader`."""
    dirs = [StatePaths(None, Path(home)).reader_dir] if home is not None else []
    if StatePaths(lake).local is not None and StatePaths(lake).reader_dir not in dirs:
        dirs.append(StatePaths(lake).reader_dir)
    return dirs


def remembered_slot(lake: str | None, slot: str | None = None) -> str:
    """The slot of `lake`. `totes run` and `totes reader` on the same local lake must read the
    same slot and keep the reader's state in the same place, or the second to start takes a new
    snapshot from a new slot while the first holds WAL back for ever: so the slot is derived
    from the lake's absolute path at its first use (or is `slot`, given then) and remembered
    in it. A lake on S3 (or none) uses `slot` or SLOT."""
    path = StatePaths(lake).names
    if path is None:
        return slot or SLOT
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if "slot" not in data:
        digest = hashlib.sha1(str(Path(lake).resolve()).encode(), usedforsecurity=False).hexdigest()[:10]
        data["slot"] = slot or f"{SLOT_PREFIX}_{digest}"
        # Atomically: `totes reader` or a catch-up on the same lake may read it meanwhile.
        atomic_write_json(path, data)
    return data["slot"]


def reader(
    dsn: str,
    publisher,
    durability,
    *,
    paths: StatePaths,
    slot: str,
    lake=None,
    state_dir: Path | None = None,
    publication: str = PUBLICATION,
    tables: tuple[str, ...] | None = None,
    **options,
):
    """A reader of `slot` publishing to `publisher`, its state kept in `paths` (or `state_dir`);
    `options` are the rest of its `ReaderConfig`."""
    from cdc_reader.reader import FileStateStore, Reader, ReaderConfig

    config = ReaderConfig(slot=slot, publication=publication, tables=tables or source_tables(), **options)
    state = FileStateStore(paths.reader_state(slot, state_dir))
    return Reader(dsn, publisher, durability, state, config, lake=lake)


def status_writer(the_reader, publisher):
    """The status file of `the_reader`, beside its state."""
    from totes_cli.reader_status import StatusWriter

    return StatusWriter(StatePaths.reader_status(the_reader.state.path), the_reader, publisher)


def local_kinesis(paths: StatePaths):
    """`totes run`'s own Kinesis: a kinesalite keeping its data in the local lake it feeds
    (`paths.kinesis`), not started yet (`kinesis` starts it, the caller stops it). None when a
    Kinesis endpoint is configured (AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL) or the lake is
    on S3: the stages then use that endpoint or AWS's."""
    import os

    if os.environ.get("AWS_ENDPOINT_URL_KINESIS") or os.environ.get("AWS_ENDPOINT_URL") or paths.kinesis is None:
        return None
    from local_stack.kinesalite import Kinesalite

    return Kinesalite(paths.kinesis, restart=True)  # a crash is healed, and logged


def kinesis(stream: str | None = None, shards: int = SHARDS, *, kinesalite=None, **options):
    """The Kinesis client of every stage: the configured endpoint's or AWS's, or `kinesalite`'s
    (started here); `options` are the rest of `kinesis_client`'s. With `stream`: that stream,
    created with `shards` unless it exists."""
    from change_events.kinesis import ensure_stream, kinesis_client

    if kinesalite is not None:
        options["endpoint_url"] = kinesalite.start()
    client = kinesis_client(**options)
    if stream is not None:
        ensure_stream(client, stream, shards)
    return client


class _Announcing:
    """A Kinesis client that calls `on_put` after every PutRecords: the publisher's client in one
    process, so the processor reads new records at once instead of at its next poll."""

    def __init__(self, client, on_put):
        self._client = client
        self._on_put = on_put

    def put_records(self, **kwargs):
        response = self._client.put_records(**kwargs)
        self._on_put()
        return response

    def __getattr__(self, name):
        return getattr(self._client, name)


def kinesis_publisher(client, stream: str, *, on_put=None, **options):
    """The reader's publisher to `stream` through `client`; `on_put` is called after each
    PutRecords (`totes run` wakes its processor), `options` are the rest of `Publisher`'s."""
    from cdc_reader.publisher import Publisher

    return Publisher(client if on_put is None else _Announcing(client, on_put), stream, **options)


def poller(client, stream: str, processor, *, paths: StatePaths, **options):
    """A local poller of `stream` into `processor`, its offsets in `paths`; `options` are the
    rest of `LocalPoller`'s."""
    from stream_processors.poller import LocalPoller, ShardOffsets

    return LocalPoller(client, stream, processor, ShardOffsets(paths.offsets(stream)), **options)


def lambda_processor(metrics):
    """The Lambda's processor of the lake TOTES_LAKE names (there is no default place in Lambda)."""
    from lake.writer import LakeWriter
    from stream_processors.handler import StreamProcessor
    from totes_cli.settings import ConfigError, load

    lake = load().lake
    if not lake:
        raise ConfigError("TOTES_LAKE is not set", fix="point it at the lake (s3://bucket/prefix or a folder).")
    return StreamProcessor(LakeWriter(lake), metrics)
