"""Where the CLI writes: results to stdout (so `$(totes ...)` works), everything else to stderr.

Log lines go through `scrub`: a password this process was given never reaches a log, even
inside a library's error text or a traceback.
"""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.markup import escape

from cdc_reader.source import scrub

# No emoji: ":secret:" inside a Secrets Manager ARN would turn into a picture.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one plain sentence and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {escape(scrub(message))}")
    return typer.Exit(code)


class ScrubbingFormatter(logging.Formatter):
    """A formatter whose output (message, exception and stack) holds no known password."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: int) -> None:
    """logging.basicConfig, with every line scrubbed of passwords."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(ScrubbingFormatter(LOG_FORMAT))
