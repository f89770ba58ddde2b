"""One error model for every stage: what kind a failure is, and whether trying again may help.

`TotesError` is the base of the errors that explain themselves: `str()` is one plain sentence
that names the fix, and `kind` says whose trouble it is. `classify` sorts any exception into a
`Kind` (the project's own errors by their kind; psycopg2, botocore, deltalake and OS errors by
their type and code; anything else is a bug), and every retry loop asks it: the reader's
supervisor, the publisher, the stream processor and the lake's commit retries. How long each
waits is a `RetryPolicy`, defined once below.

Only the standard library is imported: the libraries whose errors are sorted are looked up in
`sys.modules`, because an error of a library nobody imported cannot exist (and the Lambda, the
command line and the reader each load a different few).
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

T = TypeVar("T")


class Kind(Enum):
    """Whose trouble a failure is; only TRANSIENT and CONFLICT are worth trying again."""

    CONFIGURATION = "configuration"
    """a setting is wrong or missing: the user fixes it"""
    SOURCE = "source"
    """the source database lacks something (a right, the slot, the publication)"""
    TRANSIENT = "transient"
    """infrastructure that heals: a server restarting, the network, throttling, a full disk"""
    CONFLICT = "conflict"
    """a commit lost the race to another writer: run it again at once"""
    DESTINATION = "destination"
    """Kinesis or the lake refused for good, or stopped answering for longer than is waited"""
    BAD_DATA = "bad data"
    """the data itself cannot be stored: it is dead-lettered, never retried"""
    BUG = "bug"
    """anything else: shown with its traceback"""

    @property
    def retryable(self) -> bool:
        return self in (Kind.TRANSIENT, Kind.CONFLICT)


class TotesError(Exception):
    """An error that explains itself: `str()` is one sentence naming the fix (`fix`, when
    given apart, ends it). Subclasses set their `kind`; one raise may override it."""

    kind: Kind = Kind.BUG

    def __init__(self, message: str = "", *, fix: str | None = None, kind: Kind | None = None):
        self.fix = fix
        if kind is not None:
            self.kind = kind
        super().__init__(f"{message.rstrip('.')}: {fix}" if fix else message)


# -- classification ------------------------------------------------------------------------

# Kinesis (and AWS at large) error codes: throttling, then the service's own trouble.
THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
        "LimitExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
    }
)
RETRYABLE_CODES = THROTTLING_CODES | {
    "InternalFailure",
    "InternalFailureException",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
}

# deltalake's errors that are not OSError name an outage only in their message.
_OUTAGE = re.compile(
    r"object ?store|\bs3\b|\bio error|connection|timed? ?out|dispatch|credential|throttl|slow ?down"
    r"|service unavailable|internal server error|\b50[0-9]\b|no space|permission denied",
    re.IGNORECASE,
)


# libpq's words for a server that does not answer at the address (yet): the sentence the user
# sees names the address, and trying again later may help.
LIBPQ_UNREACHABLE = (
    "connection refused",
    "no such file or directory",
    "timeout expired",
    "could not connect",
    "server closed the connection",
    "network is unreachable",
)
# ... and PostgreSQL's for a server that answers but lets nobody in for now: starting, stopping,
# recovering after a crash, or full (a name that resolves later, in a container network, too).
_LIBPQ_PASSING = (
    *LIBPQ_UNREACHABLE,
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients",
    "remaining connection slots are reserved",
    "could not translate host name",
)


def classify_connect_failure(error: BaseException) -> Kind:
    """The kind of a failure to connect to PostgreSQL (psycopg2's or ADBC's, both libpq's words):
    TRANSIENT while the server is down, starting, recovering or full, else SOURCE (the DSN, the
    password or a right is wrong). Apart from `classify`, which cannot tell a connection that
    never opened from one that was lost: both are psycopg2's OperationalError."""
    message = str(error).lower()
    return Kind.TRANSIENT if any(marker in message for marker in _LIBPQ_PASSING) else Kind.SOURCE


def is_throttling(code: str | None) -> bool:
    """Whether an AWS error code (a whole call's, or one PutRecords entry's) is throttling."""
    return code in THROTTLING_CODES


def _types(module: str, *names: str) -> tuple[type, ...]:
    """The named exception classes of `module`, if something imported it (else none)."""
    loaded = sys.modules.get(module)
    return tuple(getattr(loaded, name) for name in names if hasattr(loaded, name)) if loaded else ()


def is_lost_connection(error: BaseException) -> bool:
    """Whether a PostgreSQL connection went away under `error` (the server restarted, the
    network dropped): a new connection may carry on."""
    return isinstance(error, _types("psycopg2", "OperationalError", "InterfaceError"))


def _psycopg2(error: BaseException) -> Kind | None:
    """A lost connection heals; a refused statement is a bug. Failures to connect arrive as
    SourceConnectionError, already sorted."""
    return Kind.TRANSIENT if is_lost_connection(error) else None


def _botocore(error: BaseException) -> Kind | None:
    """Throttling, a 5xx and a dropped connection heal; any other refusal is for good."""
    if isinstance(error, _types("botocore.exceptions", "ClientError")):
        response = getattr(error, "response", {}) or {}
        code = response.get("Error", {}).get("Code", "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return Kind.TRANSIENT if code in RETRYABLE_CODES or status >= 500 else Kind.DESTINATION
    if isinstance(error, _types("botocore.exceptions", "ConnectionError", "HTTPClientError")):
        return Kind.TRANSIENT
    if isinstance(error, _types("botocore.exceptions", "NoCredentialsError", "NoRegionError")):
        return Kind.CONFIGURATION
    return None


def _deltalake(error: BaseException) -> Kind | None:
    """A lost commit race is run again; deltalake's other errors mostly describe what was
    written, so they are the data's unless their message names an outage (OSError, which
    deltalake raises for object-store and I/O failures, is sorted below)."""
    if isinstance(error, _types("deltalake.exceptions", "CommitFailedError")):
        return Kind.CONFLICT
    if isinstance(error, _types("deltalake.exceptions", "DeltaError")):
        return Kind.TRANSIENT if _OUTAGE.search(str(error)) else Kind.BAD_DATA
    return None


def _system(error: BaseException) -> Kind | None:
    """The machine's trouble (I/O, sockets, a full disk, memory) heals, or is somebody's to
    fix meanwhile; a path that is missing or not ours is the configuration's, and retrying
    it would only repeat the warning."""
    if isinstance(error, (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return Kind.CONFIGURATION
    return Kind.TRANSIENT if isinstance(error, (OSError, MemoryError)) else None


_RULES: tuple[Callable[[BaseException], Kind | None], ...] = (_psycopg2, _botocore, _deltalake, _system)


def classify(error: BaseException) -> Kind:
    """The kind of `error`: its own for a TotesError, else by the first rule that knows it."""
    if isinstance(error, TotesError):
        return error.kind
    for rule in _RULES:
        kind = rule(error)
        if kind is not None:
            return kind
    return Kind.BUG


def is_retryable(error: BaseException) -> bool:
    """Whether trying again (after the policy's wait) may succeed."""
    return classify(error).retryable


def is_conflict(error: BaseException) -> bool:
    """Whether `error` is a lost commit race, which is run again at once."""
    return classify(error) is Kind.CONFLICT


def is_panic(error: BaseException) -> bool:
    """Whether `error` is a Rust library's panic (deltalake, polars) come through pyo3: a
    BaseException, so `except Exception` lets it through, yet a failure like any other, not
    a request to stop. Each extension module makes its own class, hence the name."""
    kind = type(error)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


def is_failure(error: BaseException) -> bool:
    """Whether `error` is a failure to contain (an Exception or a library's panic) rather
    than Ctrl-C or an exit, which must go on up."""
    return isinstance(error, Exception) or is_panic(error)


def sentence(error: BaseException) -> str | None:
    """The one sentence to show for `error`, or None when it is a bug (show its traceback)."""
    if isinstance(error, TotesError) and error.kind is not Kind.BUG:
        return str(error)
    return None


# -- retry policy --------------------------------------------------------------------------


class Jitter(Enum):
    NONE = "none"
    """exactly the backoff: a lone client whose waits are read in its log"""
    FULL = "full"
    """anywhere up to the backoff: many writers on one resource spread out"""
    HALF_TO_ONE_AND_A_HALF = "proportional"
    """the backoff times 0.5 to 1.5: racing committers part, keeping the growth"""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: the n-th consecutive failure waits base × factor^(n-1), at most
    `cap`, jittered; `attempts` (None: for ever) bounds the tries of `run`."""

    base: float
    cap: float = float("inf")
    factor: float = 2.0
    jitter: Jitter = Jitter.NONE
    attempts: int | None = None
    within: float = float("inf")
    """seconds from the first try after which no wait starts: the last failure is raised"""

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (1 for the first)."""
        ceiling = min(self.cap, self.base * self.factor ** min(max(failures - 1, 0), 30))
        if self.jitter is Jitter.FULL:
            return random.uniform(0, ceiling)  # nosec B311 # retry jitter, not a secret
        if self.jitter is Jitter.HALF_TO_ONE_AND_A_HALF:
            return ceiling * (0.5 + random.random())  # nosec B311 # retry jitter, not a secret
        return ceiling

    def next_wait(self, failures: int, started: float) -> float | None:
        """The wait after `failures` consecutive failures of tries begun at `started`
        (`time.monotonic()`), or None when trying stops: `attempts` used, or `within` passed
        by the time the wait would end."""
        if self.attempts is not None and failures >= self.attempts:
            return None
        delay = self.delay(failures)
        return None if time.monotonic() + delay > started + self.within else delay

    def run(self, operation: Callable[[], T], retry_if: Callable[[BaseException], bool] = is_retryable) -> T:
        """`operation()`, tried again after each failure `retry_if` accepts, until `attempts`
        or `within`."""
        started = time.monotonic()
        failures = 0
        while True:
            try:
                return operation()
            except Exception as error:
                failures += 1
                wait = self.next_wait(failures, started) if retry_if(error) else None
                if wait is None:
                    raise
                time.sleep(wait)


#: The reader's reconnects and the stream processor's pause before a failed batch is retried:
#: 1 s, doubling, at most 30 s, for ever (an outage is waited out, nothing is skipped).
OUTAGE_BACKOFF = RetryPolicy(base=1.0, cap=30.0)
#: Kinesis entries throttled or failed, per shard (full jitter, so shards do not retry in step).
PUT_RECORDS_BACKOFF = RetryPolicy(base=0.05, cap=5.0, jitter=Jitter.FULL)
#: `totes run` waiting for its source (or PostgreSQL warehouse) to answer at the start: 0.5 s,
#: doubling, at most 5 s, for 15 s unless --wait-for-source says otherwise (a wrong DSN fails at
#: once; once running, the reader reconnects with OUTAGE_BACKOFF).
SOURCE_WAIT = RetryPolicy(base=0.5, cap=5.0, within=15.0)
#: A pipeline stage stopped by a trouble that passes by itself (a full disk, the local Kinesis
#: being started again) starts again every 2 s, for ever.
STAGE_RESTART = RetryPolicy(base=2.0, factor=1.0)
#: A Delta commit that lost the race: 12 tries, 50 ms growing by half each time, jittered.
COMMIT_RACE_RETRY = RetryPolicy(base=0.05, factor=1.5, jitter=Jitter.HALF_TO_ONE_AND_A_HALF, attempts=12)
