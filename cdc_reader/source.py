"""Connecting to a source PostgreSQL with errors a person can act on.

psycopg2 reports a bad DSN, an unreachable host and a wrong password as libpq's multi-line
messages; every command of totes-cdc turns them into one plain sentence naming the fix.
The password is never part of any message. The reader owns these helpers; the other
commands (and the warehouse, which connects the same way) import them from here. Also: the
settings of the decoding session, and the source's WAL position.
"""

from __future__ import annotations

import os
import re
import threading
from urllib.parse import unquote

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

from change_events.errors import LIBPQ_UNREACHABLE, Kind, TotesError, classify_connect_failure
from change_events.model import parse_lsn

CONNECT_TIMEOUT_SECONDS = 10

# A half-open TCP connection (a peer gone without a FIN: failover, NAT timeout, a cut link)
# is noticed within a minute at both ends: probes after 20 s idle, every 10 s, 3 unanswered
# probes end it (50 s); unacknowledged data ends it after 60 s. The server-side settings
# also free what a vanished client held (a replication slot marked active, row locks).
CLIENT_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "20",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}
SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": "20",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


#: Settings of the session that decodes the slot. pgoutput sends every value in its type's
#: text output form, which depends on them; the lake parses that text (`lake.arrow_types`):
#: ISO dates, hex bytea, floats that round-trip. TimeZone may be anything (timestamptz
#: values carry their offset).
SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "bytea_output": "hex",
    "extra_float_digits": "3",
}


class SourceConnectionError(TotesError, RuntimeError):
    """Could not connect; str() is one sentence that names the fix. `transient` says whether
    trying again later may help (server down: Kind.TRANSIENT) or not (wrong password, missing
    rights: Kind.SOURCE)."""

    def __init__(self, message: str, *, transient: bool = False, kind: Kind | None = None):
        super().__init__(message, kind=kind or (Kind.TRANSIENT if transient else Kind.SOURCE))

    @property
    def transient(self) -> bool:
        return self.kind.retryable


def describe(dsn: str) -> dict[str, str]:
    """Where a DSN points, without its password."""
    try:
        params = parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return {}
    host = params.get("host") or "localhost"
    return {
        "host": host,
        "port": params.get("port") or "5432",
        "user": params.get("user") or "(current user)",
        "dbname": params.get("dbname") or params.get("user") or "(default)",
    }


# The password inside a URI (scheme://user:PASSWORD@host) or a key=value DSN (password=...).
_URI_PASSWORD = re.compile(r"(?P<keep>[a-z][a-z0-9+.-]*://[^:/@?#\s\"]*:)(?P<secret>[^@\s\"]*)@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"\bpassword\s*=\s*(?P<secret>'(?:[^'\\]|\\.)*'?|[^\s&\"]+)", re.IGNORECASE)
# libpq messages about a value it could not use: the DSN is wrong, not the server.
_BAD_VALUE_MARKERS = (
    "invalid integer value",
    "invalid connection option",
    "invalid uri query parameter",
    "invalid sslmode value",
    "invalid value for",
    "invalid port number",
)
# Shorter passwords are removed only where they sit in DSN-shaped text (see redact).
_MIN_BLIND_REDACTION = 4


def _passwords(dsn: str) -> set[str]:
    """Every spelling of the DSN's password that an error message might echo."""
    found: set[str] = set()
    try:
        password = parse_dsn(dsn).get("password")
    except psycopg2.ProgrammingError:
        password = None
    if password:
        found.add(password)
    for match in (*_URI_PASSWORD.finditer(dsn), *_KEYWORD_PASSWORD.finditer(dsn)):
        secret = match.group("secret")
        if secret:
            found.update({secret, unquote(secret), secret.strip("'")})
    return {value for value in found if value}


def redact(dsn: str, message: str) -> str:
    """`message` without the DSN's password (libpq quotes a malformed URI whole)."""
    # Very short passwords are only removed where they sit in a DSN-shaped text: replacing
    # every occurrence of two letters would garble the sentence.
    for secret in sorted(_passwords(dsn), key=len, reverse=True):
        if len(secret) >= _MIN_BLIND_REDACTION:
            message = message.replace(secret, "***")
    message = _URI_PASSWORD.sub(lambda m: f"{m.group('keep')}***@", message)
    return _KEYWORD_PASSWORD.sub("password=***", message)


def masked(dsn: str) -> str:
    """The DSN for display: everything but its password (shown as ***)."""
    return redact(dsn, dsn)


def has_password(dsn: str) -> bool:
    return bool(_passwords(dsn))


def with_password(dsn: str, password: str) -> str:
    """`dsn` logging in with `password` (a key=value DSN; libpq reads both forms)."""
    try:
        return make_dsn(dsn, password=password)
    except psycopg2.ProgrammingError:
        return dsn  # unparseable: connecting says so, in one sentence


# Variables a child process must not inherit: they hold (or point to) passwords and DSNs.
_SECRET_VARIABLES = ("TOTES_", "PGPASSWORD", "PGPASSFILE", "PGSERVICE", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def secret_free_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the variables that may hold a password, for the
    child processes the project starts (the embedded PostgreSQL, its tools)."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if not name.startswith(_SECRET_VARIABLES)}


# Every password this process has been given, so that log lines, tracebacks and messages
# built far from the DSN (a library's error text, a repr) can still be scrubbed of them.
_known_secrets: set[str] = set()
_known_lock = threading.Lock()


def remember_secrets(dsn: str | None) -> None:
    """Note the DSN's password (every spelling of it) and PGPASSWORD for `scrub`."""
    found = _passwords(dsn) if dsn else set()
    if os.environ.get("PGPASSWORD"):
        found.add(os.environ["PGPASSWORD"])
    with _known_lock:
        _known_secrets.update(found)


def remember_secret_value(value: str) -> None:
    """Note a secret that is no DSN (a hash key) for `scrub`."""
    if value:
        with _known_lock:
            _known_secrets.add(value)


def scrub(text: str) -> str:
    """`text` without any password this process knows of, nor any DSN-shaped password."""
    with _known_lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if len(secret) >= _MIN_BLIND_REDACTION:
            text = text.replace(secret, "***")
    text = _URI_PASSWORD.sub(lambda m: f"{m.group('keep')}***@", text)
    return _KEYWORD_PASSWORD.sub("password=***", text)


def explain(dsn: str, error: Exception, what: str = "source") -> str:
    """Turn a connection failure into one sentence with the fix (never with the password).
    `what` names the database in the sentence (the source, the warehouse)."""
    message = _explain(dsn, error)
    if what != "source":
        message = message.replace("The source DSN", f"The {what} DSN")
    return redact(dsn, message)


def _explain(dsn: str, error: Exception) -> str:
    message = str(error).strip()
    lowered = message.lower()
    if (
        isinstance(error, psycopg2.ProgrammingError)
        or "invalid dsn" in lowered
        or "invalid uri" in lowered
        or any(marker in lowered for marker in _BAD_VALUE_MARKERS)
    ):
        detail = message.splitlines()[0] if message else "unparseable"
        return (
            f"The source DSN is not valid ({detail}): write it as "
            "postgresql://USER@HOST:PORT/DBNAME or as key=value pairs."
        )
    where = describe(dsn)
    host = where.get("host", "localhost")
    port = where.get("port", "5432")
    user = where.get("user", "(current user)")
    dbname = where.get("dbname", "(default)")
    if "could not translate host name" in lowered or "name or service not known" in lowered:
        return f"The host {host!r} cannot be resolved: check the host name in the DSN."
    if "password authentication failed" in lowered:
        return (
            f"PostgreSQL at {host}:{port} rejected the password for user {user!r}: "
            "check the password (PGPASSWORD, ~/.pgpass or the DSN)."
        )
    if "no password supplied" in lowered or "fe_sendauth" in lowered:
        return f"PostgreSQL at {host}:{port} wants a password for user {user!r}: set PGPASSWORD or add it to the DSN."
    if 'role "' in lowered and "does not exist" in lowered:
        return f"User {user!r} does not exist on {host}:{port}: create it or fix the user in the DSN."
    if "database" in lowered and "does not exist" in lowered:
        return f"Database {dbname!r} does not exist on {host}:{port}: create it or fix the database name in the DSN."
    if "permission denied to start wal sender" in lowered or "must have the replication attribute" in lowered:
        return (
            f"User {user!r} may not replicate: run ALTER ROLE {quote_role(user)} WITH REPLICATION "
            f"(on RDS: GRANT rds_replication TO {quote_role(user)})."
        )
    if "no pg_hba.conf entry" in lowered:
        return (
            f"PostgreSQL at {host}:{port} does not allow user {user!r} to connect from here: "
            "add a pg_hba.conf entry for this client."
        )
    if any(s in lowered for s in LIBPQ_UNREACHABLE):
        where_text = f"the unix socket in {host} (port {port})" if host.startswith("/") else f"{host}:{port}"
        return (
            f"Nothing answers at {where_text}: check that PostgreSQL is running there and that "
            "the host and port in the DSN are right."
        )
    first = message.splitlines()[0] if message else type(error).__name__
    return f"Could not connect to PostgreSQL at {host}:{port}: {first}."


def quote_role(name: str) -> str:
    """A role name as a PostgreSQL identifier, for statements the user is told to paste
    (no connection is at hand to let psycopg2 quote it)."""
    return '"' + name.replace('"', '""') + '"'


def keepalive_params(dsn: str, options: str | None = None) -> dict[str, str]:
    """Connection parameters for TCP keepalives at both ends (see CLIENT_KEEPALIVES), except
    those the DSN sets itself; `options` (else the DSN's) keeps its settings and gains ours."""
    try:
        given = parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        given = {}
    params = {name: value for name, value in CLIENT_KEEPALIVES.items() if name not in given}
    base = options if options is not None else given.get("options", "")
    ours = [f"-c {name}={value}" for name, value in SERVER_KEEPALIVES.items() if name not in base]
    params["options"] = " ".join(part for part in (base, *ours) if part)
    return params


def connect(dsn: str, *, what: str = "source", **kwargs):
    """psycopg2.connect with TCP keepalives, with failures raised as SourceConnectionError
    (`what` names the database in its sentence)."""
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    kwargs.update(keepalive_params(dsn, kwargs.get("options")))
    remember_secrets(dsn)
    try:
        return psycopg2.connect(dsn, **kwargs)
    except (psycopg2.OperationalError, psycopg2.ProgrammingError) as error:
        raise SourceConnectionError(explain(dsn, error, what), kind=classify_connect_failure(error)) from None


def database_name(dsn: str) -> str:
    return parse_dsn(dsn).get("dbname", "")


def current_wal_lsn(dsn: str) -> int:
    """The source's WAL position now: every transaction committed so far is below it."""
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            return parse_lsn(cur.fetchone()[0])
    finally:
        conn.close()


HEARTBEAT_PREFIX = "totes-heartbeat"
"""The prefix of the reader's heartbeat messages (empty logical messages it passes over)."""


def commit_heartbeat(dsn: str, **connect_args) -> None:
    """Commit an empty heartbeat message now: the reader's next lake watermark then passes the
    WAL position of this moment, whether or not any table changes."""
    conn = connect(dsn, **connect_args)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(true, %s, '')", (HEARTBEAT_PREFIX,))
        conn.commit()
    finally:
        conn.close()
