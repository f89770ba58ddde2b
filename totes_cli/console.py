"""Where the CLI writes: results to stdout (so `$(totes ...)` works), everything else to stderr."""

from __future__ import annotations

import typer
from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one plain sentence and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)
