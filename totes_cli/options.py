"""The flags several commands share: one name, one help text and one default for each concept.

Their defaults come from the settings (totes_cli/settings.py: flag > TOTES_* > totes.toml >
default), filled in by the app's callback; a DSN's default is never shown in --help, as it may
hold a password.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from totes_cli.bootstrap import SLOT

SourceOption = Annotated[
    Optional[str],
    typer.Option(
        "--source",
        show_default=False,
        help="Source PostgreSQL DSN \\[default: $TOTES_SOURCE_DSN, else the running embedded totesys].",
    ),
]
OldDsnOption = Annotated[
    Optional[str], typer.Option("--dsn", hidden=True, show_default=False, help="The old name of --source.")
]
LakeOption = Annotated[
    Optional[str],
    typer.Option(
        "--lake", envvar="TOTES_LAKE", help="The lake: a folder or s3://bucket/prefix (TOTES_HOME/lake unless set)."
    ),
]
WarehouseOption = Annotated[
    Optional[str],
    typer.Option(
        "--warehouse",
        envvar="TOTES_WAREHOUSE",
        show_default=False,
        help="The warehouse: a DuckDB file or a PostgreSQL DSN \\[default: $TOTES_HOME/warehouse.duckdb].",
    ),
]
StreamOption = Annotated[str, typer.Option("--stream", envvar="TOTES_STREAM", help="Kinesis stream name.")]
PublicationOption = Annotated[
    str, typer.Option("--publication", envvar="TOTES_PUBLICATION", help="Publication the reader reads.")
]
SlotOption = Annotated[
    Optional[str],
    typer.Option(
        "--slot",
        envvar="TOTES_SLOT",
        help=f"Replication slot \\[default: named after a local lake at its first use and remembered in it, the same for `totes run` and `totes reader`; {SLOT} for a lake on S3 or none].",
    ),
]
ResetOption = Annotated[
    bool,
    typer.Option(
        "--reset",
        help="After a lost slot (invalidated or dropped): drop it, create a new one and take a snapshot that replaces every table downstream. Run once.",
    ),
]
EmfOption = Annotated[
    bool, typer.Option("--emf", help="Print CloudWatch embedded-metric-format lines to stdout every few seconds.")
]


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def source_or_old_name(source: str | None, dsn: str | None) -> str | None:
    """--source, or the DSN given by its old name --dsn: hidden from --help, and kept working
    quietly so the scripts (and their parsing of stderr) written for it go on working."""
    return source if source is not None else dsn
