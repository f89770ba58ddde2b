"""The packages bandit scans."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


PACKAGES = [
    "cdc_reader",
    "change_events",
    "dashboard",
    "lake",
    "local_stack",
    "stream_processors",
    "totes_cli",
    "totesys",
    "warehouse_sync",
]
