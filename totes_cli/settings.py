"""Configuration: flags win, then TOTES_* environment variables, then a totes.toml file.

Secrets (passwords inside DSNs) come only from the environment or the config file's
environment-provided values; nothing here logs them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOTES_", extra="ignore")

    home: Path = Path(".totes")
    """Where local state lives: the embedded source, the local stream, the lake, the warehouse."""
    source_dsn: str | None = None
    """DSN of the source PostgreSQL; the embedded one under `home` when unset."""

    @property
    def source_dir(self) -> Path:
        return self.home / "source"

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("TOTES_CONFIG", "totes.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file))


def load() -> Settings:
    return Settings()


class NoSourceError(RuntimeError):
    """No source DSN was given and no embedded source is running."""


def resolve_source_dsn(explicit: str | None = None, settings: Settings | None = None) -> str:
    """The source to use: the flag, else TOTES_SOURCE_DSN / totes.toml, else the running
    embedded source under TOTES_HOME."""
    if explicit:
        return explicit
    if settings is None:
        try:
            settings = load()
        except Exception as error:  # a malformed totes.toml or environment value
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise NoSourceError(f"The totes configuration cannot be read ({first}): fix it or pass --dsn.") from None
    if settings.source_dsn:
        return settings.source_dsn
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
        "No source database: pass --dsn, set TOTES_SOURCE_DSN, or start the embedded one "
        "with `totes source start`."
    )
