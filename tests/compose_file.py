"""docker-compose.yml read as data: its services and the stages they run."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


COMPOSE = REPO / "docker-compose.yml"


STAGES = ("reader", "processor", "sync")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _services() -> dict[str, dict]:
    return _compose()["services"]
