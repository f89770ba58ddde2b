"""Erasure: a source row's values gone from every version of the lake (`totes lake forget`).

A lake keeps every version of every row, so forgetting a person takes more than a delete:

1. the rows of the given keys are deleted from the change log and the state table, which
   rewrites the Parquet files that held them (the rest of each file is written again as is);
2. the files that left the tables, those rewritten ones included, are vacuumed at once,
   whatever the time-travel retention (`vacuum` with no retention);
3. the Delta log's statistics of earlier commits (each file's minimum and maximum values)
   are taken out of the commits and checkpoints before this one, and a fresh checkpoint is
   written; the actions themselves stay, so the log still replays;
4. the erasure is recorded in `erasures/` (a Delta table of the lake): table, keys, when, and
   how many rows went; never the values.

What stays: every other row's history. Time travel by source LSN or time (rebuilt from the
change log) answers for every other key at every point; by Delta version it reaches only the
versions from the erasure on (the older ones named the files step 2 removed).

Run it with the pipeline stopped: vacuuming without retention deletes files a writer in
flight may still be committing. A bucket with versioning keeps deleted and overwritten
objects as noncurrent versions until its lifecycle rule expires them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.fs as pafs

from lake.delta_io import quote_identifier, quote_literal, retry_on_conflict
from lake.layout import LakeLayout
from lake.timetravel import TableNotInLake, state_keys
from change_events.errors import Kind, TotesError

ERASURES = "erasures"
ERASURE_SCHEMA = pa.schema(
    [
        ("table", pa.string()),
        ("keys", pa.list_(pa.string())),
        ("erased_at", pa.timestamp("us", "UTC")),
        ("change_rows", pa.int64()),
        ("state_rows", pa.int64()),
    ]
)
_NUMERIC = re.compile(r"^-?\d+(\.\d+)?$")
_COMMIT = re.compile(r"^\d{20}\.json$")


class ErasureError(TotesError, ValueError):
    """The erasure cannot be done as asked; str() is one sentence naming the fix."""

    kind = Kind.CONFIGURATION


@dataclass(frozen=True)
class Erased:
    table: str
    keys: tuple[tuple[str, ...], ...]
    erased_at: datetime
    change_rows: int
    state_rows: int
    files_vacuumed: int


def parse_keys(texts: list[str], key_columns: list[str], table: str) -> tuple[tuple[str, ...], ...]:
    """KEY arguments as key tuples: one value per key column, comma-separated for several."""
    keys = []
    for text in texts:
        parts = tuple(p.strip() for p in text.split(",")) if len(key_columns) > 1 else (text.strip(),)
        if len(parts) != len(key_columns) or not all(parts):
            raise ErasureError(
                f"{text!r} is no key of {table}: give {', '.join(key_columns)} "
                f"({'comma-separated' if len(key_columns) > 1 else 'one value'})."
            )
        keys.append(parts)
    return tuple(dict.fromkeys(keys))


def key_predicate(key_columns: list[str], types: dict[str, pa.DataType], keys) -> str:
    """A Delta SQL predicate matching exactly the rows of `keys` (names and strings quoted)."""

    def literal(column: str, value: str) -> str:
        kind = types.get(column)
        if kind is not None and (pa.types.is_integer(kind) or pa.types.is_decimal(kind) or pa.types.is_floating(kind)):
            if not _NUMERIC.match(value):
                raise ErasureError(f"{value!r} is no value of the numeric key column {column}: give a number.")
            return value
        return quote_literal(value)

    return " OR ".join(
        "(" + " AND ".join(f"{quote_identifier(c)} = {literal(c, v)}" for c, v in zip(key_columns, key)) + ")"
        for key in keys
    )


def forget(layout: LakeLayout, table: str, key_texts: list[str], *, now: datetime | None = None) -> Erased:
    """Erase the rows of `key_texts` of `table` (qualified) from every version of the lake."""
    try:
        columns = state_keys(layout, table)
    except (TableNotInLake, KeyError):
        raise ErasureError(
            f"{table} has no state table keyed by a primary key in the lake, so its rows cannot be named",
            fix="give it a primary key at the source (its change log stays as it is).",
        ) from None
    keys = parse_keys(key_texts, columns, table)
    counts = []
    vacuumed = 0
    for uri in (layout.changes_uri(table), layout.state_uri(table)):
        delta = layout.open(uri)
        if delta is None:
            counts.append(0)
            continue
        types = {f.name: f.type for f in pa.schema(delta.schema())}
        predicate = key_predicate(columns, types, keys)
        metrics = retry_on_conflict(lambda uri=uri, predicate=predicate: layout.open(uri).delete(predicate))
        counts.append(int(metrics.get("num_deleted_rows", 0) or 0))
        delta = layout.open(uri)
        vacuumed += len(delta.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False, full=True))
        _drop_statistics(layout, uri, delta.version())
        delta.create_checkpoint()
    erased = Erased(table, keys, now or datetime.now(timezone.utc), counts[0], counts[1], vacuumed)
    _record(layout, erased)
    return erased


def _drop_statistics(layout: LakeLayout, uri: str, before: int) -> None:
    """Take file statistics out of the commits before version `before` and remove their
    checkpoints (the caller writes a new one): they may hold an erased value as a minimum or
    maximum of a file that is gone."""
    fs, root = layout.filesystem(uri)
    log = f"{root}/_delta_log"
    for info in fs.get_file_info(pafs.FileSelector(log)):
        name = info.base_name
        if _COMMIT.match(name) and int(name[:20]) < before:
            with fs.open_input_stream(info.path) as stream:
                lines = stream.read().decode("utf-8").splitlines()
            kept = [_without_stats(line) for line in lines if line.strip()]
            if kept != lines:
                with fs.open_output_stream(info.path) as stream:
                    stream.write(("\n".join(kept) + "\n").encode("utf-8"))
        elif ".checkpoint" in name or name == "_last_checkpoint" or name.endswith(".crc"):
            fs.delete_file(info.path)


def _without_stats(line: str) -> str:
    action = json.loads(line)
    for kind in ("add", "remove"):
        if kind in action:
            action[kind].pop("stats", None)
            action[kind].pop("stats_parsed", None)
    return json.dumps(action, separators=(",", ":"))


def _record(layout: LakeLayout, erased: Erased) -> None:
    from deltalake import write_deltalake

    row = pa.table(
        {
            "table": [erased.table],
            "keys": [[",".join(k) for k in erased.keys]],
            "erased_at": [erased.erased_at],
            "change_rows": [erased.change_rows],
            "state_rows": [erased.state_rows],
        },
        schema=ERASURE_SCHEMA,
    )
    retry_on_conflict(
        lambda: write_deltalake(layout.uri(ERASURES), row, mode="append", storage_options=layout.storage_options)
    )


def erasures(layout: LakeLayout) -> pa.Table:
    """Every erasure recorded in the lake, oldest first (an empty table when none)."""
    delta = layout.open(layout.uri(ERASURES))
    if delta is None:
        return ERASURE_SCHEMA.empty_table()
    return delta.to_pyarrow_table().sort_by("erased_at")
