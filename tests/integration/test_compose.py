"""docker-compose.yml: the whole pipeline from the project's image, each service's command a
real `totes` command with real options, health checks and restart policies, versions that
follow the pins, nothing downloaded at start, the source password only as a file.

`docker compose config` runs where the Docker client has the compose plugin (skipped
otherwise); the rest reads the file and runs `--help` of each command through the `totes`
entry point's app in this venv, which is what the image runs."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from tests.compose_file import COMPOSE, REPO


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


@pytest.mark.skipif(_compose_client() is None, reason="no docker compose client here")
def test_docker_compose_accepts_the_file():
    env = {**os.environ, "TOTES_SOURCE_PASSWORD": "only-for-config"}
    done = subprocess.run(
        [*_compose_client(), "-f", str(COMPOSE), "config", "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
