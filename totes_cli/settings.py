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
