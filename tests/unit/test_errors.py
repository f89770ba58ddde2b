"""The error model: each family of exceptions is sorted into the kind its retry loops act on,
and the retry policies wait as they say.

Why one file (~440 lines): it mirrors `change_events/errors.py`, the one place retry decisions
live, family by family; split the two together if the model grows."""

from __future__ import annotations

import errno
import random
import threading

import botocore.exceptions
import psycopg2
import pytest
from deltalake.exceptions import CommitFailedError, DeltaError

from cdc_reader.personal_data import PolicyError
from cdc_reader.publisher import PublishError
from cdc_reader.records import EventTooLargeError
from cdc_reader.source import SourceConnectionError
from cdc_reader.source_setup import SlotLostError, SourceSetupError
from change_events.codec import CodecError
from change_events.errors import (
    COMMIT_RACE_RETRY,
    OUTAGE_BACKOFF,
    PUT_RECORDS_BACKOFF,
    SOURCE_WAIT,
    STAGE_RESTART,
    Jitter,
    Kind,
    RetryPolicy,
    TotesError,
    classify,
    classify_connect_failure,
    is_conflict,
    is_lost_connection,
    is_retryable,
    sentence,
)
from change_events.wire import FrameError
from lake.errors import IncompatibleSchemaError, RefusedEventsError
from lake.retention import RetentionError
from lake.timetravel import AsOfError
from local_stack.kinesalite import KinesaliteError
from totesys.simulator import SimulatorError
from verify.run import VerifyError
from warehouse_sync.read_copy import WarehouseBusy
from totes_cli.settings import ConfigError, NoSourceError


def client_error(code: str, status: int = 400) -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "PutRecords")


# -- the project's own errors: their kind, and one sentence ---------------------------------


ERRORS_BY_KIND = {
    Kind.CONFIGURATION: [
        ConfigError("set TOTES_LAKE"),
        NoSourceError("give --source"),
        PolicyError("name a column"),
        RetentionError("give a duration like 7d"),
        AsOfError("pick a later version"),
        VerifyError("run the sync first"),
        KinesaliteError("install Node.js"),
    ],
    Kind.SOURCE: [
        SourceConnectionError("wrong password: fix it"),
        SourceSetupError("run GRANT ..."),
        SlotLostError("run --reset"),
        SimulatorError("create the totesys schema"),
    ],
    Kind.TRANSIENT: [
        SourceConnectionError("server down: start it", transient=True),
        WarehouseBusy("try again in a moment"),
    ],
    Kind.DESTINATION: [PublishError("Kinesis refused")],
    Kind.BAD_DATA: [
        CodecError("not a record"),
        FrameError("short frame"),
        EventTooLargeError("too large"),
        IncompatibleSchemaError("t", {"c": ("int", "text")}),
        RefusedEventsError("t", ValueError("x")),
    ],
}
"""Each of the project's errors under the kind it must carry (how `totes` reports and retries it)."""


@pytest.mark.parametrize("error, kind", [(error, kind) for kind, errors in ERRORS_BY_KIND.items() for error in errors])
def test_the_projects_errors_explain_themselves_and_carry_their_kind(error, kind):
    assert isinstance(error, TotesError)
    assert classify(error) is kind
    assert sentence(error) == str(error)
    assert is_retryable(error) is (kind is Kind.TRANSIENT)


def test_the_projects_errors_keep_their_builtin_bases():
    """Code that catches RuntimeError or ValueError still catches them."""
    assert isinstance(ConfigError("x"), RuntimeError) and isinstance(PublishError("x"), RuntimeError)
    assert isinstance(CodecError("x"), ValueError) and isinstance(PolicyError("x"), ValueError)


def test_a_transient_connection_error_says_so():
    assert SourceConnectionError("down", transient=True).transient
    assert not SourceConnectionError("wrong password").transient


def test_the_fix_given_apart_ends_the_sentence():
    error = TotesError("The lake is not set.", fix="set TOTES_LAKE to a folder or s3:// URI.", kind=Kind.CONFIGURATION)
    assert str(error) == "The lake is not set: set TOTES_LAKE to a folder or s3:// URI."
    assert error.fix == "set TOTES_LAKE to a folder or s3:// URI."


def test_a_lost_slot_names_why_and_gives_reset_as_its_fix():
    error = SlotLostError.of_slot("totes_x", "is gone (dropped)")
    assert str(error) == (
        "Replication slot 'totes_x' is gone (dropped), so the changes made since it was last confirmed cannot be "
        "read: run the reader once with --reset to take a new snapshot from a new slot, which replaces every table "
        "downstream (rows deleted meanwhile go, nothing is doubled)."
    )
    assert error.fix.startswith("run the reader once with --reset") and classify(error) is Kind.SOURCE


def test_an_error_of_kind_bug_has_no_sentence_so_its_traceback_shows():
    assert sentence(TotesError("an invariant broke")) is None
    assert sentence(KeyError("x")) is None


# -- other libraries' errors ----------------------------------------------------------------


def test_psycopg2_a_lost_connection_is_retried_a_refused_statement_is_a_bug():
    assert classify(psycopg2.OperationalError("server closed the connection unexpectedly")) is Kind.TRANSIENT
    assert classify(psycopg2.InterfaceError("connection already closed")) is Kind.TRANSIENT
    assert classify(psycopg2.ProgrammingError("syntax error at or near")) is Kind.BUG
    assert is_lost_connection(psycopg2.OperationalError("x")) and not is_lost_connection(psycopg2.DataError("x"))
    assert not is_retryable(psycopg2.ProgrammingError("syntax error"))


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "db" (10.0.0.5), port 5432 failed: Connection refused',
        'connection to server on socket "/tmp/.s.PGSQL.5432" failed: No such file or directory',
        "timeout expired",
        "FATAL:  the database system is starting up",
        "FATAL:  the database system is shutting down",
        "FATAL:  the database system is in recovery mode",
        "FATAL:  the database system is not yet accepting connections\nDETAIL:  Consistent recovery state has not been yet reached.",
        "FATAL:  sorry, too many clients already",
        "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
        'could not translate host name "db" to address: Temporary failure in name resolution',
    ],
)
def test_a_failure_to_connect_to_a_server_down_starting_recovering_or_full_is_transient(message):
    assert classify_connect_failure(psycopg2.OperationalError(message)) is Kind.TRANSIENT
    assert classify_connect_failure(RuntimeError(message)) is Kind.TRANSIENT  # ADBC says it in the same words


@pytest.mark.parametrize(
    "message",
    [
        'FATAL:  password authentication failed for user "totes"',
        "fe_sendauth: no password supplied",
        'FATAL:  role "totes" does not exist',
        'FATAL:  database "totesys" does not exist',
        "FATAL:  no pg_hba.conf entry for host",
        "FATAL:  the database system is not accepting connections\nDETAIL:  Hot standby mode is disabled.",
        'invalid dsn: missing "=" after "x" in connection info string',
    ],
)
def test_a_failure_to_connect_with_a_wrong_setting_or_right_is_the_sources(message):
    assert classify_connect_failure(psycopg2.OperationalError(message)) is Kind.SOURCE


def test_connecting_to_a_source_recovering_after_a_crash_is_retried(monkeypatch):
    """PostgreSQL restarting after a crash answers "in recovery mode" for a while: the reader
    (and `totes run`'s wait for its source) try again rather than stop."""
    from cdc_reader import source

    def recovering(dsn, **kwargs):
        raise psycopg2.OperationalError("FATAL:  the database system is in recovery mode")

    monkeypatch.setattr(source.psycopg2, "connect", recovering)
    with pytest.raises(SourceConnectionError) as raised:
        source.connect("postgresql://u@h/db")
    assert raised.value.transient and is_retryable(raised.value)


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "ThrottlingException", "InternalFailure"])
def test_botocore_throttling_and_the_services_trouble_are_retried(code):
    assert classify(client_error(code)) is Kind.TRANSIENT


def test_botocore_any_5xx_is_retried_and_any_other_refusal_is_for_good():
    assert classify(client_error("SomethingNew", 503)) is Kind.TRANSIENT
    assert classify(client_error("AccessDeniedException", 400)) is Kind.DESTINATION
    assert classify(client_error("ResourceNotFoundException", 400)) is Kind.DESTINATION


def test_botocore_a_dropped_connection_is_retried_and_missing_credentials_are_configuration():
    assert classify(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x")) is Kind.TRANSIENT
    assert classify(botocore.exceptions.ReadTimeoutError(endpoint_url="http://x")) is Kind.TRANSIENT
    assert classify(botocore.exceptions.NoCredentialsError()) is Kind.CONFIGURATION
    assert classify(botocore.exceptions.ParamValidationError(report="bad")) is Kind.BUG


def test_deltalake_a_lost_commit_race_is_a_conflict_and_other_errors_are_the_datas_unless_an_outage():
    assert classify(CommitFailedError("version 3 already exists")) is Kind.CONFLICT
    assert is_conflict(CommitFailedError("x")) and is_retryable(CommitFailedError("x"))
    assert classify(DeltaError("Generic S3 error: connection refused")) is Kind.TRANSIENT
    assert classify(DeltaError("Schema error: cannot cast column")) is Kind.BAD_DATA
    assert not is_conflict(DeltaError("Generic S3 error: connection refused"))


def test_os_errors_and_memory_are_the_machines_trouble_and_retried():
    assert classify(OSError(errno.ENOSPC, "No space left on device")) is Kind.TRANSIENT
    assert classify(ConnectionResetError()) is Kind.TRANSIENT
    assert classify(MemoryError()) is Kind.TRANSIENT


def test_a_path_missing_or_not_ours_is_the_configurations_and_not_retried():
    for error in (
        PermissionError(errno.EACCES, "Permission denied"),
        FileNotFoundError(errno.ENOENT, "x"),
        NotADirectoryError(errno.ENOTDIR, "x"),
        IsADirectoryError(errno.EISDIR, "x"),
    ):
        assert classify(error) is Kind.CONFIGURATION and not is_retryable(error)


def test_anything_else_is_a_bug():
    for error in (KeyError("k"), TypeError("t"), ValueError("v"), AssertionError()):
        assert classify(error) is Kind.BUG and not is_retryable(error)


# -- retry policies -------------------------------------------------------------------------


def test_without_jitter_the_backoff_doubles_up_to_its_cap():
    assert [OUTAGE_BACKOFF.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_full_jitter_waits_anywhere_up_to_the_backoff():
    policy = RetryPolicy(base=1.0, cap=8.0, jitter=Jitter.FULL)
    random.seed(7)
    delays = [policy.delay(3) for _ in range(500)]
    assert all(0 <= d <= 4.0 for d in delays) and min(delays) < 1.0 < 3.0 < max(delays)
    assert all(0 <= PUT_RECORDS_BACKOFF.delay(40) <= PUT_RECORDS_BACKOFF.cap for _ in range(100))


def test_proportional_jitter_keeps_the_growth():
    policy = RetryPolicy(base=1.0, factor=1.5, jitter=Jitter.HALF_TO_ONE_AND_A_HALF)
    assert all(0.5 * 1.5**2 <= policy.delay(3) <= 1.5 * 1.5**2 for _ in range(200))


def _always_failing(monkeypatch, error: Exception):
    """An operation that always raises `error`, the calls made to it and the waits between them."""
    waits: list[float] = []
    monkeypatch.setattr("change_events.errors.time.sleep", waits.append)
    calls = []

    def operation():
        calls.append(1)
        raise error

    return operation, calls, waits


def test_run_retries_what_it_is_told_to_until_its_attempts(monkeypatch):
    lose, calls, waits = _always_failing(monkeypatch, CommitFailedError("lost the race"))
    with pytest.raises(CommitFailedError):
        COMMIT_RACE_RETRY.run(lose, retry_if=is_conflict)
    assert len(calls) == COMMIT_RACE_RETRY.attempts and len(waits) == COMMIT_RACE_RETRY.attempts - 1


def test_run_does_not_retry_a_bug_and_returns_what_succeeds(monkeypatch):
    monkeypatch.setattr("change_events.errors.time.sleep", lambda _: None)
    calls = []

    def bug():
        calls.append(1)
        raise KeyError("k")

    with pytest.raises(KeyError):
        RetryPolicy(base=0.0, attempts=5).run(bug)
    assert len(calls) == 1
    outcomes = iter([OSError("down"), OSError("down"), "done"])

    def heals():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert RetryPolicy(base=0.0, attempts=5).run(heals) == "done"


def test_run_stops_trying_once_its_time_is_up(monkeypatch):
    down, calls, waits = _always_failing(monkeypatch, OSError("down"))
    with pytest.raises(OSError):
        RetryPolicy(base=0.5, within=0.0).run(down)
    assert len(calls) == 1 and waits == []


def test_a_stage_that_stopped_on_a_passing_trouble_starts_again_every_two_seconds():
    assert [STAGE_RESTART.delay(n) for n in range(1, 6)] == [2.0] * 5


class _Connection:
    def close(self) -> None:
        pass


def _source_that_answers_after(monkeypatch, failures: list[SourceConnectionError]) -> list[int]:
    from totes_cli import run_cmd

    tries: list[int] = []

    def connect(dsn, **kwargs):
        tries.append(kwargs["connect_timeout"])
        if failures:
            raise failures.pop(0)
        return _Connection()

    monkeypatch.setattr(run_cmd, "connect", connect)
    return tries


def test_totes_run_waits_for_its_source_with_the_source_wait(monkeypatch):
    from totes_cli.run_cmd import DEFAULT_WAIT_FOR_SOURCE, wait_until_reachable

    down = [SourceConnectionError("Nothing answers at h:5432.", transient=True) for _ in range(6)]
    tries = _source_that_answers_after(monkeypatch, down)
    waits: list[float] = []
    told: list[str] = []
    wait_until_reachable("postgresql://u@h/db", float("inf"), on_wait=told.append, sleep=waits.append)
    assert len(tries) == 7 and waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0] == [SOURCE_WAIT.delay(n) for n in range(1, 7)]
    assert told == ["Nothing answers at h:5432."]
    assert DEFAULT_WAIT_FOR_SOURCE == SOURCE_WAIT.within == 15.0


def test_totes_run_gives_up_on_its_source_at_once_when_it_is_wrong_or_the_time_is_up(monkeypatch):
    from totes_cli.run_cmd import wait_until_reachable

    waits: list[float] = []
    _source_that_answers_after(monkeypatch, [SourceConnectionError("wrong password: fix it")])
    with pytest.raises(SourceConnectionError, match="^wrong password: fix it$"):
        wait_until_reachable("postgresql://u@h/db", float("inf"), sleep=waits.append)
    _source_that_answers_after(monkeypatch, [SourceConnectionError("Nothing answers at h:5432.", transient=True)])
    with pytest.raises(SourceConnectionError) as raised:
        wait_until_reachable("postgresql://u@h/db", 0, sleep=waits.append)
    assert str(raised.value) == (
        "Nothing answers at h:5432 (at once; --wait-for-source SECONDS waits longer, inf for ever)."
    )
    assert raised.value.transient and waits == []


# -- the command line's last line of defence ------------------------------------------------


def _main_raising(monkeypatch, capsys, error: BaseException) -> tuple[int, str]:
    from totes_cli import app as cli

    def command():
        raise error

    monkeypatch.setattr(cli, "app", command)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    return exited.value.code, capsys.readouterr().err


def test_the_command_line_shows_the_sentence_of_an_error_no_command_caught(monkeypatch, capsys):
    code, shown = _main_raising(monkeypatch, capsys, PublishError("Kinesis refused PutRecords on s: AccessDenied: m"))
    assert code == 1 and "Kinesis refused PutRecords on s: AccessDenied: m" in shown
    assert "Traceback" not in shown
    code, shown = _main_raising(monkeypatch, capsys, PolicyError("policy.toml: name a column"))
    assert code == 2 and "policy.toml: name a column" in shown and "Traceback" not in shown


def test_the_command_line_shows_the_traceback_of_a_bug_without_its_password(monkeypatch, capsys):
    from cdc_reader.source import remember_secrets

    remember_secrets("postgresql://u:hunter2-sekret@h/db")
    code, shown = _main_raising(monkeypatch, capsys, KeyError("postgresql://u:hunter2-sekret@h/db"))
    assert code == 1 and "Traceback" in shown and "KeyError" in shown
    assert "hunter2-sekret" not in shown


# -- the reader's supervisor asks the classifier ---------------------------------------------


class _Stop(threading.Event):
    """A stop whose waits return at once and are recorded."""

    def __init__(self):
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout=None) -> bool:
        self.waits.append(timeout)
        return False


class _Reader:
    def __init__(self, *failures: BaseException):
        self.failures = list(failures)
        self.streaming = threading.Event()
        self.runs = 0

    def run(self, stop) -> None:
        self.runs += 1
        if self.failures:
            raise self.failures.pop(0)


def test_the_supervisor_reconnects_after_what_is_retryable_with_the_outage_backoff():
    from cdc_reader.reader import supervise

    stop = _Stop()
    reader = _Reader(psycopg2.OperationalError("server closed"), SourceConnectionError("down", transient=True))
    supervise(reader, stop)
    assert reader.runs == 3 and stop.waits == [OUTAGE_BACKOFF.delay(1), OUTAGE_BACKOFF.delay(2)]


@pytest.mark.parametrize(
    "error",
    [SourceConnectionError("wrong password"), SlotLostError("run --reset"), PublishError("refused"), KeyError()],
)
def test_the_supervisor_stops_at_what_is_not(error):
    from cdc_reader.reader import supervise

    stop = _Stop()
    reader = _Reader(error)
    with pytest.raises(type(error)):
        supervise(reader, stop)
    assert reader.runs == 1 and stop.waits == []


def test_the_lambda_without_its_lake_says_so_as_a_configuration_error(monkeypatch):
    from stream_processors import handler

    monkeypatch.setattr(handler, "_processor", None)
    monkeypatch.delenv("TOTES_LAKE", raising=False)
    with pytest.raises(TotesError, match="TOTES_LAKE is not set: point it at the lake") as raised:
        handler._lake_processor()
    assert classify(raised.value) is Kind.CONFIGURATION
