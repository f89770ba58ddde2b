"""A headless Chromium for the dashboard's tests (Debian's `chromium`, driven by Playwright),
and `totes dashboard` started as a process. Tests skip in one line where Chromium cannot be had."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "dashboard"


def chromium_path() -> str | None:
    """The system's chromium; installed with apt-get when missing and we are root (once)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get") and not os.environ.get("TOTES_NO_APT"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "install", "-y", "-qq", "chromium"],
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "chromium"],
        ):
            subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
            found = shutil.which("chromium")
            if found:
                break
    return found


@contextmanager
def browser():
    """A headless Chromium with a fresh profile (one per test module: starting one takes seconds)."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium here (apt-get install chromium): the browser tests need it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (make install)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="totes-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@contextmanager
def new_page(context, artifact_prefix: str):
    """A page whose console errors and uncaught errors are collected in `page.errors`;
    `page.artifact(name)` keeps a screenshot."""
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.artifact = lambda name: _shot(page, f"{artifact_prefix}-{name}")
    try:
        yield page
    finally:
        page.close()


def _shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def wait_loaded(page, more_than: int = 0, timeout: float = 30_000) -> int:
    """Wait until the page finished more than `more_than` loads of its data; return the count."""
    page.wait_for_function(f"Number(document.body.dataset.loads || 0) > {more_than}", timeout=timeout)
    return int(page.evaluate("document.body.dataset.loads"))


@contextmanager
def dashboard_process(home: Path, lake: Path, warehouse: Path, refresh: float = 1.0):
    """`totes dashboard --port 0` as a process; yields its address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "TOTES_"))}
    env.update({"TOTES_HOME": str(home), "TOTES_CONFIG": str(home / "none.toml")})
    log = open(home / "dashboard.log", "w+")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "totes_cli",
            "dashboard",
            "--port",
            "0",
            "--lake",
            str(lake),
            "--warehouse",
            str(warehouse),
            "--refresh",
            str(refresh),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), (line, (home / "dashboard.log").read_text())
        yield line.split(": ", 1)[1].strip()
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_until(condition, timeout: float = 30.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    return condition()
