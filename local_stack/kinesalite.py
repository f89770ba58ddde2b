"""kinesalite, the local Kinesis endpoint, as a child process.

Streams on it are created like any other, with `change_events.kinesis.ensure_stream`.

kinesalite (npm, pinned in package.json) implements the Kinesis API on top of LevelDB: what
is put survives a restart, even `kill -9`. Its LevelDB lives in the directory given here, so
the stream's data belongs to whoever owns that directory (a pipeline keeps it beside its lake)
and two pipelines on one machine never share a stream by accident. LevelDB locks the
directory: a second server on the same directory fails to start, with a message saying so.

The server listens on 127.0.0.1 only, on a port the OS picks unless one is given. It is run
through a few lines of Node that load the kinesalite package (found from
`node_modules/.bin/kinesalite` in this repository, or from `TOTES_KINESALITE_BIN`), bind it
to loopback, report the port, and exit when this process's end of its stdin closes, so a
parent that dies without calling `stop()` does not leave the directory locked.

The child gets a minimal environment (PATH, HOME, locale, Node's own settings): nothing of
this process's TOTES_*, PG* or AWS_* variables, which may hold passwords. With
`restart=True` a server that dies on its own (a crash, the OOM killer, `kill -9`) is
started again on the same port and data, its exit reason logged: clients keep their
endpoint and, LevelDB being durable, lose nothing that was acknowledged.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess  # nosec B404 # children are started with fixed argv lists, never a shell
import threading
import time
from collections import deque
from pathlib import Path
from queue import Empty, Queue
from types import TracebackType
from change_events.errors import Kind, TotesError

log = logging.getLogger(__name__)

BIN_ENV = "TOTES_KINESALITE_BIN"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BIN = Path("node_modules") / ".bin" / "kinesalite"
NOT_INSTALLED = "kinesalite is not installed: run `make install`"

# CREATING/DELETING/UPDATING last this long (kinesalite's default, 500 ms, only slows tests);
# the shard limit is the per-account limit kinesalite reports errors against.
SERVER_OPTIONS = {"createStreamMs": 50, "deleteStreamMs": 50, "updateStreamMs": 50, "shardLimit": 200}

_READY_PREFIX = "totes-kinesalite listening on port "
_ERROR_PREFIX = "totes-kinesalite error: "
_LAUNCHER = r"""
const [pkg, optionsJson] = process.argv.slice(-2);
const options = JSON.parse(optionsJson);
const server = require(pkg)(options);
let stopping = false;
const stop = (code) => {
  if (stopping) return;
  stopping = true;
  setTimeout(() => process.exit(code), 3000).unref();
  if (server.closeAllConnections) server.closeAllConnections();
  server.close((err) => process.exit(err ? 1 : code));
};
const fail = (err) => { console.error('%s%s', process.env.TOTES_ERROR_PREFIX, err.message); process.exit(1); };
process.on('uncaughtException', fail);
server.on('error', fail);
server.listen(options.port, '127.0.0.1', () => {
  console.log('%s%d', process.env.TOTES_READY_PREFIX, server.address().port);
});
process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));
process.stdin.on('end', () => stop(0));
process.stdin.on('error', () => stop(0));
process.stdin.resume();
"""


# What the Node child may inherit: enough to run, nothing that may hold a secret.
_INHERITED = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL")
_INHERITED_PREFIXES = ("LC_", "NODE_", "NPM_CONFIG_")
RESTART_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Seconds between attempts to bring a dead server back (the last one repeats)."""


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the kinesalite child runs with: an allow-list, never a copy."""
    environ = os.environ if environ is None else environ
    kept = {
        name: value for name, value in environ.items() if name in _INHERITED or name.startswith(_INHERITED_PREFIXES)
    }
    return {**kept, "TOTES_READY_PREFIX": _READY_PREFIX, "TOTES_ERROR_PREFIX": _ERROR_PREFIX}


def _disk_full(text: str) -> bool:
    return "No space left on device" in text or "ENOSPC" in text


def exit_reason(returncode: int | None) -> str:
    """'killed by SIGKILL', 'exited with code 1', ..."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class KinesaliteError(TotesError, RuntimeError):
    """kinesalite could not be started or stopped; the message says why."""

    kind = Kind.CONFIGURATION


class KinesaliteNotInstalled(KinesaliteError):
    """Node.js or the kinesalite package is missing."""


def find_kinesalite(repo_root: Path = REPO_ROOT) -> Path:
    """The kinesalite package directory, from `TOTES_KINESALITE_BIN` or the repo's node_modules."""
    configured = os.environ.get(BIN_ENV)
    binary = Path(configured).expanduser() if configured else Path(repo_root) / DEFAULT_BIN
    if not binary.exists():
        where = f"{binary} (from {BIN_ENV})" if configured else str(binary)
        raise KinesaliteNotInstalled(f"{NOT_INSTALLED} (nothing at {where})")
    package = binary.resolve().parent
    if not (package / "index.js").is_file() or not (package / "package.json").is_file():
        raise KinesaliteNotInstalled(f"{NOT_INSTALLED} ({binary} is not the kinesalite command of an npm install)")
    return package


def _find_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise KinesaliteNotInstalled(
            "kinesalite needs Node.js, which is not on PATH", fix="install Node.js 20, then run `make install`"
        )
    return node


class Kinesalite:
    """One kinesalite server keeping its data in `data_dir`.

    `start()` returns the endpoint URL once the server answers API calls; `stop()` ends it
    (SIGTERM, then SIGKILL after `stop_timeout` seconds). Also a context manager.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        restart: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.requested_port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.restart = restart
        self.restarts = 0
        """How many times the server was brought back after dying on its own."""
        self.port: int | None = None
        self._process: subprocess.Popen | None = None
        self._lines: Queue[str | None] = Queue()
        self._tail: deque[str] = deque(maxlen=40)
        self._stopping = threading.Event()
        self._lock = threading.RLock()

    # -- state -------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        if self.port is None or not self.is_running():
            raise KinesaliteError("kinesalite is not running", fix="call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        """The server's last lines of output (for error messages and debugging)."""
        return "\n".join(self._tail)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> str:
        """Start the server unless this object already runs it; return its endpoint URL."""
        with self._lock:
            if self.is_running():
                return self.endpoint_url
            self._stopping.clear()
            self._launch(self.requested_port or 0)
            if self.restart:
                threading.Thread(
                    target=self._watch, args=(self._process,), name="kinesalite-watch", daemon=True
                ).start()
            return self.endpoint_url

    def stop(self) -> bool:
        """Stop the server if this object runs it; True when it was running."""
        self._stopping.set()
        with self._lock:
            if self._process is None:
                return False
            was_running = self.is_running()
            self._terminate()
            return was_running

    def __enter__(self) -> Kinesalite:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------
    def _launch(self, port: int) -> None:
        package = find_kinesalite()
        node = _find_node()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        options = {**SERVER_OPTIONS, "path": str(self.data_dir), "port": port}
        self._lines = Queue()
        self._tail.clear()
        self.port = None
        self._process = subprocess.Popen(  # nosec B603 # a fixed argv: node, our launcher, a path and JSON options
            [node, "-e", _LAUNCHER, str(package), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_environment(),
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, args=(self._process,), name="kinesalite-output", daemon=True).start()
        try:
            self.port = self._wait_listening()
            self._wait_answering()
        except BaseException:
            self._terminate()
            raise
        log.info("kinesalite %s serving %s on port %d", self._process.pid, self.data_dir, self.port)

    def _watch(self, process: subprocess.Popen) -> None:
        """Bring the server back, on the same port, each time it dies without `stop()`. A
        full disk is said once, in one sentence, and waited out."""
        while True:
            process.wait()
            if self._stopping.is_set():
                return
            port = self.port
            time.sleep(0.05)  # let the output pump take the last lines
            last = [line.strip() for line in self._tail if line.strip()][-3:]
            said = _disk_full(" ".join(last))
            if said:
                log.warning(self._disk_full_sentence())
            else:
                log.warning(
                    "kinesalite %s on %s %s%s; starting it again on port %s",
                    process.pid,
                    self.data_dir,
                    exit_reason(process.returncode),
                    f" (last output: {' | '.join(last)})" if last else "",
                    port,
                )
            for attempt in itertools.count():
                if self._stopping.wait(RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)]):
                    return
                with self._lock:
                    if self._stopping.is_set():
                        return
                    try:
                        self._launch(port)
                    except KinesaliteError as error:
                        self.port = port
                        if _disk_full(str(error)):
                            if not said:
                                log.warning(self._disk_full_sentence())
                            said = True
                        else:
                            log.warning("kinesalite could not be started again (%s); trying again", error)
                        continue
                    self.restarts += 1
                    process = self._process
                    if said:
                        log.warning("kinesalite on %s can write again: serving on port %s", self.data_dir, port)
                    break

    def _disk_full_sentence(self) -> str:
        return (
            f"kinesalite cannot write to {self.data_dir}: its disk is full; free some space there and it "
            "starts again by itself, keeping what it had acknowledged."
        )

    def _pump(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None  # nosec B101 # type narrowing only: stdout is a pipe by construction
        for line in process.stdout:
            line = line.rstrip("\n")
            self._tail.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _failure(self, what: str) -> KinesaliteError:
        lines = [line.strip() for line in self._tail if line.strip()]
        errors = [line[len(_ERROR_PREFIX) :] for line in lines if line.startswith(_ERROR_PREFIX)]
        reason = errors[-1] if errors else (lines[-1] if lines else "")
        if "LOCK" in reason and "unavailable" in reason:
            reason = "its data directory is in use by another kinesalite server"
        detail = f": {reason}" if reason else ""
        return KinesaliteError(f"kinesalite on {self.data_dir} {what}{detail}")

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + self.start_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"did not start listening within {self.start_timeout:g} s")
            try:
                line = self._lines.get(timeout=remaining)
            except Empty:
                continue
            if line is None:
                self._process.wait(timeout=5)
                raise self._failure(f"exited with code {self._process.returncode} while starting")
            if line.startswith(_READY_PREFIX):
                return int(line[len(_READY_PREFIX) :])

    def _wait_answering(self) -> None:
        """Wait until an API call (which opens LevelDB) succeeds."""
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            if not self.is_running():
                raise self._failure(f"exited with code {self._process.returncode} while starting")
            try:
                status, body = _list_streams(self.port)
                if status == 200:
                    return
                last_error = f"HTTP {status}: {body[:200]}"
            except OSError as error:
                last_error = str(error)
            time.sleep(0.05)
        raise self._failure(f"did not answer within {self.start_timeout:g} s ({last_error})")

    def _terminate(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("kinesalite %s ignored SIGTERM for %g s; killing it", process.pid, self.stop_timeout)
                process.kill()
                process.wait()
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass


def _list_streams(port: int) -> tuple[int, str]:
    """A ListStreams call; kinesalite wants SigV4-shaped headers but checks no signature."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request(
            "POST",
            "/",
            body="{}",
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "Kinesis_20131202.ListStreams",
                "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
                "Authorization": "AWS4-HMAC-SHA256 Credential=local/20000101/us-east-1/kinesis/aws4_request, "
                "SignedHeaders=host;x-amz-date, Signature=0",
            },
        )
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()
