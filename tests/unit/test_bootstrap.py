"""The composition root: every stage finds its state where the others look for it.

`totes run` (the Pipeline), `totes processor`, `totes reader`, `totes run --until-caught-up`
and the writer lock all take their paths from totes_cli/bootstrap.py; these tests pin where
they are and that the one-process pipeline puts its stages' files in the same places.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import MemoryKinesis
from totes_cli import bootstrap
from totes_cli.bootstrap import StatePaths


@pytest.fixture
def settings_home(tmp_path, monkeypatch) -> Path:
    """No TOTES_* variable; a totes.toml whose `home` is a folder of its own (not ./.totes)."""
    for name in [name for name in __import__("os").environ if name.startswith("TOTES_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "configured-home"
    config = tmp_path / "totes.toml"
    config.write_text(f'home = "{home}"\n', encoding="utf-8")
    monkeypatch.setenv("TOTES_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    return home


def test_a_local_lake_keeps_every_stage_state_inside_itself(tmp_path):
    lake = str(tmp_path / "lake")
    paths = StatePaths(lake, tmp_path / "home")
    local = tmp_path / "lake" / "_local"
    assert paths.offsets("orders") == local / "offsets" / "orders.json"
    assert paths.reader_state("slot_a") == local / "reader" / "slot_a.json"
    assert StatePaths.reader_status(paths.reader_state("slot_a")) == local / "reader" / "slot_a.status.json"
    assert paths.writers_lock == local / "writers.lock"
    assert paths.kinesis == local / "kinesis"
    assert paths.names == local / "pipeline.json"
    assert paths.personal_data_key == local / "personal-data.key"


def test_a_lake_on_s3_keeps_its_state_under_the_home(tmp_path):
    paths = StatePaths("s3://bucket/lake", tmp_path)
    assert paths.offsets("orders") == tmp_path / "processor" / "orders.offsets.json"
    assert paths.reader_state("slot_a") == tmp_path / "reader" / "slot_a.json"
    assert paths.writers_lock.parent == tmp_path / "locks"
    assert paths.kinesis is None and paths.names is None and paths.personal_data_key is None
    assert bootstrap.remembered_slot("s3://bucket/lake") == bootstrap.SLOT


def test_the_reader_state_dir_flag_wins(tmp_path):
    paths = StatePaths(str(tmp_path / "lake"), tmp_path)
    assert paths.reader_state("s", tmp_path / "state") == tmp_path / "state" / "s.json"


def test_a_local_lake_remembers_its_slot(tmp_path):
    lake = str(tmp_path / "lake")
    first = bootstrap.remembered_slot(lake)
    assert first.startswith("totes_") and first != bootstrap.SLOT
    assert bootstrap.remembered_slot(lake, "another") == first  # fixed at the first use


class _DescribedKinesis(MemoryKinesis):
    """MemoryKinesis with what the poller asks of a stream when it is built."""

    meta = type("Meta", (), {"region_name": "eu-west-2"})()

    def describe_stream_summary(self, StreamName):
        return {"StreamDescriptionSummary": {"StreamARN": f"arn:aws:kinesis:eu-west-2:0:stream/{StreamName}"}}


def _started_without_threads(monkeypatch, config):
    """A Pipeline whose start() wires every stage (on a Kinesis in memory) but runs none."""
    from totes_cli import pipeline as pipeline_module

    kinesis = _DescribedKinesis(shards=2)
    monkeypatch.setattr(pipeline_module.Pipeline, "_kinesis", lambda self: kinesis)
    monkeypatch.setattr(pipeline_module.Pipeline, "_spawn", lambda self, name, target, wake=None: None)
    pipeline = pipeline_module.Pipeline(config)
    pipeline.start()
    return pipeline


def test_the_pipeline_on_a_lake_on_s3_keeps_its_state_under_the_configured_home(settings_home, monkeypatch):
    """As `totes processor` and `totes reader` do: the home of the settings (totes.toml's
    `home` here), not ./.totes."""
    from totes_cli.pipeline import PipelineConfig

    lake = "s3://bucket/lake"
    config = PipelineConfig(source_dsn="host=nowhere", lake=lake, warehouse="w.duckdb", stream="orders")
    pipeline = _started_without_threads(monkeypatch, config)
    expected = StatePaths(lake, settings_home)
    assert pipeline.poller.offsets.path == expected.offsets("orders")
    assert pipeline.reader.state.path == expected.reader_state(bootstrap.SLOT)


def test_the_pipeline_and_the_single_stage_commands_share_a_local_lake_state(tmp_path, settings_home, monkeypatch):
    from totes_cli.pipeline import PipelineConfig

    lake = str(tmp_path / "lake")
    config = PipelineConfig(source_dsn="host=nowhere", lake=lake, warehouse="w.duckdb", stream="orders")
    pipeline = _started_without_threads(monkeypatch, config)
    expected = StatePaths(lake)
    assert pipeline.poller.offsets.path == expected.offsets("orders")
    assert pipeline.reader.state.path == expected.reader_state(bootstrap.remembered_slot(lake))
    assert pipeline.reader.config.tables == bootstrap.source_tables()


def test_the_lambda_processor_needs_a_lake(settings_home, monkeypatch):
    with pytest.raises(RuntimeError, match="TOTES_LAKE is not set"):
        bootstrap.lambda_processor(None)
    monkeypatch.setenv("TOTES_LAKE", str(settings_home / "lake"))
    processor = bootstrap.lambda_processor(None)
    assert processor.lake.layout.root == str((settings_home / "lake").resolve())


def test_status_is_looked_for_where_readers_write_it(tmp_path):
    lake = str(tmp_path / "lake")
    written = [
        StatePaths.reader_status(StatePaths(lake).reader_state("a")),
        StatePaths.reader_status(StatePaths("s3://bucket/lake", tmp_path / "home").reader_state("b")),
    ]
    assert [path.parent for path in written] == bootstrap.status_dirs(tmp_path / "home", lake)[::-1]
    assert bootstrap.status_dirs(None, "s3://bucket/lake") == []


def test_the_reader_and_the_doctor_default_to_the_names_of_the_composition_root(tmp_path):
    """One definition of each name (change_events/names.py): the reader's configuration and
    `totes doctor` have no literal of their own."""
    import inspect

    from cdc_reader.doctor import SLOT_PREFIX, diagnose, run_checks, table_refs
    from cdc_reader.reader import ReaderConfig

    config = ReaderConfig()
    assert (config.slot, config.publication, config.schema) == (bootstrap.SLOT, bootstrap.PUBLICATION, bootstrap.SCHEMA)
    for check in (diagnose, run_checks):
        parameters = inspect.signature(check).parameters
        assert parameters["publication"].default == bootstrap.PUBLICATION
        assert parameters["schema"].default == bootstrap.SCHEMA
    assert inspect.signature(table_refs).parameters["schema"].default == bootstrap.SCHEMA
    for slot in (bootstrap.SLOT, bootstrap.remembered_slot(str(tmp_path / "lake"))):
        assert slot.startswith(SLOT_PREFIX)  # the doctor counts the pipeline's slots as its own
