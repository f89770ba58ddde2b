"""The unit layer's rules, enforced: no server fixture and no child process.

A unit test that asks for PostgreSQL, kinesalite or moto's server is refused at collection,
and one that starts a process fails when it does, each naming the layer it belongs in, so
`make test-fast` stays fast and runs on a machine with nothing listening.
"""

from __future__ import annotations

import os
import subprocess

import pytest

# Fixtures that start a server (tests/conftest.py, tests/lake_fixtures.py), and what uses them.
SERVER_FIXTURES = frozenset({"admin_dsn", "kinesalite_url", "moto_s3"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.path).startswith(here):
            continue
        servers = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if servers:
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(sorted(servers))}: a test with a server belongs in "
                "tests/integration (or tests/e2e), not tests/unit."
            )


class ChildProcessInUnitTest(AssertionError):
    """A unit test started a process."""


@pytest.fixture(autouse=True)
def _no_child_processes(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    def refuse(*args, **kwargs):
        raise ChildProcessInUnitTest(
            f"{request.node.nodeid} starts a process: tests that do belong in tests/integration "
            "(one real tool or server) or tests/e2e (the project's own processes)."
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(os, "fork", refuse)
