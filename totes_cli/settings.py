"""Configuration: flags win, then TOTES_* environment variables, then a totes.toml file.

Why one file (~400 lines): the shared settings, the per-command sections of the file and the
three ways a password arrives are one order of precedence; read apart, that order would be
split across modules.

Passwords never need to be in a flag (flags show in process lists) or in the file. A DSN may
leave its password out and take it from, first to last:

- a file: `TOTES_SOURCE_PASSWORD_FILE` / `TOTES_WAREHOUSE_PASSWORD_FILE` (its first line);
- AWS Secrets Manager: `TOTES_SOURCE_DSN_SECRET` / `TOTES_WAREHOUSE_SECRET` (a name or an
  ARN), or a DSN written as `secretsmanager:NAME-OR-ARN`. The secret holds the whole DSN (as
  infra/secrets.tf stores it) or RDS-style JSON (username, password, host, port, dbname);
  given beside a DSN, only its password is used;
- libpq's own `PGPASSWORD` or `~/.pgpass`.

The settings hold DSNs as SecretStr, so a repr or a validation error never shows one.

The defaults are the composition root's (totes_cli/bootstrap.py). The file (`totes.toml`, or
the one TOTES_CONFIG names; the example is `totes.example.toml`) holds two kinds of keys:

- shared keys at the top (the fields of `Settings`: home, source_dsn, lake, warehouse, stream,
  slot, publication, retain, ...), each also read from `TOTES_<KEY>`; they are the default of
  the flag of the same name in every command (`lake` for every `--lake`);
- one section per command, named after it (`[run]`, `[query]`, `[lake-history]`,
  `[source-start]`), whose keys are that command's flags (`until-caught-up = true`): any flag
  can be set there.

A flag typed on the command line wins, then the TOTES_* environment variable, then the
command's section, then the shared key, then the default. A key or a section the commands do
not know is one sentence naming it and the file, never silently ignored.

One section is no command: `[personal-data]`, a rule per column (cdc_reader/personal_data.py)
over the totesys defaults, read with its key by totes_cli/personal_data_config.py. The key is read like a password: TOTES_PERSONAL_DATA_KEY,
a file (`personal_data_key_file`) or AWS Secrets Manager (`personal_data_key_secret`); a local
lake without one gets a generated key kept in `<lake>/_local/personal-data.key` (0600).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from cdc_reader.source import masked, remember_secrets, with_password
from change_events.errors import Kind, TotesError
from totes_cli.bootstrap import HOME, PUBLICATION, STREAM, home_lake, home_source, home_warehouse

SECRET_PREFIX = "secretsmanager:"  # nosec B105 # a URI prefix, not a password


class ConfigError(TotesError, RuntimeError):
    """The configuration cannot be used; str() is one sentence naming the fix."""

    kind = Kind.CONFIGURATION


class NoSourceError(ConfigError):
    """No source DSN was given and no embedded source is running."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOTES_", extra="forbid")

    home: Path = HOME
    """Where local state lives: the embedded source, the local stream, the lake, the warehouse."""
    source_dsn: SecretStr | None = None
    """DSN of the source PostgreSQL; the embedded one under `home` when unset."""
    source_password_file: Path | None = None
    """A file holding the source's password, for a `source_dsn` without one."""
    source_dsn_secret: str | None = None
    """An AWS Secrets Manager secret holding the source's DSN or password."""
    lake: str | None = None
    """The lake: a folder or s3://bucket/prefix; `home`/lake when unset."""
    warehouse: SecretStr | None = None
    """A DuckDB file or a PostgreSQL DSN; `home`/warehouse.duckdb when unset."""
    warehouse_password_file: Path | None = None
    """A file holding a PostgreSQL warehouse's password, for a `warehouse` DSN without one."""
    warehouse_secret: str | None = None
    """An AWS Secrets Manager secret holding the warehouse's DSN or password."""
    stream: str = STREAM
    """The Kinesis stream between the reader and the processor."""
    slot: str | None = None
    """The reader's replication slot; the one the lake remembers (or the default) when unset."""
    publication: str = PUBLICATION
    """The source's publication the reader streams."""
    retain: str | None = None
    """How long time travel by version or time reaches back (each command has its default)."""
    personal_data_key_file: Path | None = None
    """A file holding the key of the personal-data policy's keyed hashes (at least 16 bytes);
    TOTES_PERSONAL_DATA_KEY (the environment only, never the file) gives it directly."""
    personal_data_key_secret: str | None = None
    """An AWS Secrets Manager secret holding that key."""

    @property
    def source_dir(self) -> Path:
        return home_source(self.home)

    @property
    def lake_location(self) -> str:
        return self.lake or home_lake(self.home)

    @property
    def warehouse_location(self) -> str:
        return self.warehouse.get_secret_value() if self.warehouse else home_warehouse(self.home)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        shared, _ = read_config()
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=shared))


SHARED_FLAGS = ("lake", "stream", "slot", "publication", "retain")
"""Shared keys that are the default of the flag of the same name in every command."""
LAKE_NAMED_ONLY = {("reader",)}
"""Commands whose lake has no default: a reader confirms WAL up to the lake it is told of."""


def config_path() -> Path:
    return Path(os.environ.get("TOTES_CONFIG", "totes.toml"))


def read_config() -> tuple[dict, dict]:
    """(shared keys, command sections) of the config file; both empty without one."""
    path = config_path()
    if not path.exists():
        return {}, {}
    with path.open("rb") as file:
        data = tomllib.load(file)
    sections = {key: value for key, value in data.items() if isinstance(value, dict)}
    shared = {key: value for key, value in data.items() if key not in sections}
    unknown = sorted(set(shared) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(
            f"{unknown[0]!r}{_where(unknown[0]) or f' in {path}'} is no setting: the shared "
            f"keys are {', '.join(Settings.model_fields)}, and a command's flags go in its "
            "section (see totes.example.toml)."
        )
    return shared, sections


def load() -> Settings:
    """The settings, or ConfigError with one sentence naming the line or the setting at fault."""
    try:
        return Settings()
    except tomllib.TOMLDecodeError as error:
        # tomllib says "Invalid value (at line 2, column 14)"
        raise ConfigError(
            f"{config_path()} cannot be read: {error}; fix that line (or point TOTES_CONFIG at another file)."
        ) from None
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(  # one string: the message may end with a path, whose last dot must stay
            f"The setting {key!r} is not valid ({first['msg']}){_where(key)}: "
            f"fix it in {config_path()} or in TOTES_{key.upper()}."
        ) from None
    except OSError as error:
        raise ConfigError(
            f"{config_path()} cannot be read ({error.strerror})", fix="fix the file or TOTES_CONFIG."
        ) from None


def _commands(command, path: tuple[str, ...] = ()):
    """(path, click command) of every command under `command` (a click group)."""
    for name, sub in getattr(command, "commands", {}).items():
        if getattr(sub, "commands", None):
            yield from _commands(sub, (*path, name))
        else:
            yield (*path, name), sub


def _flag_of(command, key: str):
    """The option of `command` a section key names (`until-caught-up`, `until_caught_up` or
    `--until-caught-up`)."""
    bare = key.lstrip("-")
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        if param.name == bare.replace("-", "_") or f"--{bare.replace('_', '-')}" in param.opts:
            return param
    return None


def command_defaults(root, ctx, settings: Settings) -> dict:
    """click's default_map for every command under `root`: the shared keys set for the flags
    of their name, then the command's own section of the config file (validated here, so a
    wrong key or value is one sentence naming it and the file)."""
    _, sections = read_config()
    path_of_file = config_path()
    commands = dict(_commands(root))
    by_section = {"-".join(path): path for path in commands}
    for section in sections:
        if section not in by_section and section != PERSONAL_DATA_SECTION:
            raise ConfigError(
                f"{path_of_file} has a section [{section}], which is no command: the sections are "
                f"{', '.join(f'[{name}]' for name in by_section)}."
            )
    defaults: dict = {}
    for path, command in commands.items():
        values: dict = {}
        for name in SHARED_FLAGS:
            if _flag_of(command, name) is None:
                continue
            value = (
                settings.lake_location if name == "lake" and path not in LAKE_NAMED_ONLY else getattr(settings, name)
            )
            if value is not None:
                values[name] = value
        for key, value in sections.get("-".join(path), {}).items():
            param = _flag_of(command, key)
            if param is None:
                raise ConfigError(
                    f"{path_of_file} sets {key!r} in [{'-'.join(path)}], which is no flag of "
                    f"`totes {' '.join(path)}` (its flags: "
                    f"{', '.join(p.opts[0] for p in command.params if p.param_type_name == 'option' and p.name != 'help' and not p.hidden)})."
                )
            try:
                param.get_runtime_param().coerce(value, param=param, ctx=ctx)  # as click will
            except Exception as error:  # noqa: BLE001 - click.BadParameter and the type's own errors
                message = getattr(error, "message", None) or str(error)
                raise ConfigError(
                    f"{path_of_file} sets {key!r} in [{'-'.join(path)}] to a value "
                    f"{param.opts[0]} does not take ({message.rstrip('.')})."
                ) from None
            values[param.name] = value
        node = defaults
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = values
    return defaults


def _where(key: str) -> str:
    """' at line N of totes.toml' when the file sets `key` (the environment may set it instead)."""
    try:
        lines = config_path().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    for number, line in enumerate(lines, start=1):
        if line.strip().split("=", 1)[0].strip().strip('"') == key:
            return f" at line {number} of {config_path()}"
    return ""


PERSONAL_DATA_SECTION = "personal-data"


def _read_password_file(path: Path, what: str) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ConfigError(
            f"The {what} password file {path} cannot be read ({reason})",
            fix=f"fix the path in TOTES_{what.upper()}_PASSWORD_FILE.",
        ) from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigError(f"The {what} password file {path} is empty", fix="write the password on its first line.")
    return password


def read_secret(secret_id: str, what: str) -> str:
    """The string value of an AWS Secrets Manager secret (name or ARN)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    setting = f"TOTES_{what.upper()}{'_DSN' if what == 'source' else ''}_SECRET"
    holds = "the key" if what == "personal_data_key" else "the DSN"
    try:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        client = boto3.client("secretsmanager", region_name=region)
        value = client.get_secret_value(SecretId=secret_id).get("SecretString")
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "an error")
        raise ConfigError(
            f"AWS Secrets Manager refused the {what} secret {secret_id!r} ({code})",
            fix=f"check the name or ARN in {setting} and that this role may call secretsmanager:GetSecretValue on it.",
        ) from None
    except BotoCoreError as error:
        raise ConfigError(
            f"AWS Secrets Manager cannot be reached for the {what} secret {secret_id!r} ({type(error).__name__})",
            fix="set AWS credentials and region (or AWS_ENDPOINT_URL_SECRETSMANAGER).",
        ) from None
    if not value:
        raise ConfigError(f"The {what} secret {secret_id!r} holds no string", fix=f"store {holds} in it.")
    return value.strip()


def _from_secret(value: str, what: str) -> tuple[str | None, str | None]:
    """(DSN, password) held by a secret: a whole DSN, or RDS-style JSON."""
    if not value.startswith("{"):
        return value, None
    try:
        fields = json.loads(value)
    except ValueError:
        raise ConfigError(f"The {what} secret is neither a DSN nor JSON", fix="store the DSN in it.") from None
    parts = {
        "user": fields.get("username"),
        "host": fields.get("host"),
        "port": fields.get("port"),
        "dbname": fields.get("dbname"),
    }
    dsn = " ".join(f"{key}={val}" for key, val in parts.items() if val not in (None, "")) or None
    password = fields.get("password")
    return (with_password(dsn, str(password)) if dsn and password else dsn), (str(password) if password else None)


def complete_dsn(
    dsn: str | None, *, what: str, password_file: Path | None = None, secret: str | None = None
) -> str | None:
    """`dsn` with its password filled in from a file or AWS Secrets Manager (see the module's
    docstring); every password found is noted so no output ever shows it."""
    if dsn and dsn.startswith(SECRET_PREFIX):
        secret, dsn = dsn[len(SECRET_PREFIX) :], None
    if secret:
        secret_dsn, secret_password = _from_secret(read_secret(secret, what), what)
        remember_secrets(secret_dsn)
        if dsn is None:
            dsn = secret_dsn
        elif secret_password:
            dsn = with_password(dsn, secret_password)
        elif secret_dsn:
            from psycopg2.extensions import parse_dsn

            try:
                from_secret = parse_dsn(secret_dsn).get("password")
            except Exception:  # noqa: BLE001 - not a DSN: nothing to take from it
                from_secret = None
            if from_secret:
                dsn = with_password(dsn, from_secret)
    if dsn and password_file:
        dsn = with_password(dsn, _read_password_file(password_file, what))
    remember_secrets(dsn)
    return dsn


def resolve_source_dsn(explicit: str | None = None, settings: Settings | None = None) -> str:
    """The source to use: the flag, else TOTES_SOURCE_DSN / totes.toml, else the running
    embedded source under TOTES_HOME; its password completed as the module's docstring says."""
    if settings is None:
        try:
            settings = load()
        except ConfigError as error:
            raise NoSourceError(str(error)) from None
    configured = explicit or (settings.source_dsn.get_secret_value() if settings.source_dsn else None)
    dsn = complete_dsn(
        configured, what="source", password_file=settings.source_password_file, secret=settings.source_dsn_secret
    )
    if dsn:
        return dsn
    from totesys.embedded import EmbeddedPostgres
    from totesys.schema import DEFAULT_DATABASE

    server = EmbeddedPostgres(settings.source_dir)
    try:
        running = server.is_running()
    except OSError:
        running = False
    if running:
        return server.dsn(DEFAULT_DATABASE)
    raise NoSourceError(
        "No source database",
        fix="pass --source, set TOTES_SOURCE_DSN, or start the embedded one with `totes source start`.",
    )


def resolve_warehouse(explicit: str | None, default: str, settings: Settings | None = None) -> str:
    """The warehouse: a DuckDB file, or a PostgreSQL DSN with its password completed."""
    from warehouse_sync.targets import is_postgres_dsn

    settings = settings or load()
    explicit = explicit or (settings.warehouse.get_secret_value() if settings.warehouse else None)
    if explicit and not explicit.startswith(SECRET_PREFIX) and not is_postgres_dsn(explicit):
        return explicit  # a DuckDB file
    return (
        complete_dsn(
            explicit or None,
            what="warehouse",
            password_file=settings.warehouse_password_file,
            secret=settings.warehouse_secret,
        )
        or default
    )


def password_in_flag(flag: str, what: str) -> str:
    """The warning for a password typed into a flag (anyone can read a process's argv)."""
    secret = "TOTES_SOURCE_DSN_SECRET" if what == "source" else "TOTES_WAREHOUSE_SECRET"
    return (
        f"warning: the password in {flag} shows in the process list: leave it out of the DSN and set "
        f"PGPASSWORD, TOTES_{what.upper()}_PASSWORD_FILE or {secret} instead"
    )


def shown(dsn_or_path: str) -> str:
    """A DSN or a path, fit to print: a DSN's password is masked."""
    return masked(dsn_or_path)
