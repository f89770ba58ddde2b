"""Defaults of the one-process pipeline that the command line shows in its help, kept apart
from totes_cli.pipeline so that `totes run --help` does not load every stage's libraries."""

DEFAULT_WINDOW = 0.5
"""The processor's batching window of `totes run` (see `totes_cli.pipeline.windowed`)."""
