"""The personal-data policy as configured: the `[personal-data]` section of totes.toml over the
totesys defaults (cdc_reader/personal_data.py), and the key of its hashes, read like a password:
TOTES_PERSONAL_DATA_KEY, a file (`personal_data_key_file`) or AWS Secrets Manager
(`personal_data_key_secret`); a local lake without one gets a generated key kept in
`<lake>/_local/personal-data.key` (0600)."""

from __future__ import annotations

import os
from pathlib import Path

from cdc_reader.source import remember_secret_value
from totes_cli.bootstrap import StatePaths
from totes_cli.settings import PERSONAL_DATA_SECTION, ConfigError, Settings, config_path, load, read_config, read_secret

KEY_VARIABLE = "TOTES_PERSONAL_DATA_KEY"
MIN_KEY_BYTES = 16


def personal_data_policy(lake: str | None, settings: Settings | None = None):
    """The personal-data policy: the totesys defaults, then the file's [personal-data] rules;
    its hash key as the module's docstring says. ConfigError in one sentence when unusable."""
    from cdc_reader.personal_data import PolicyError, parse

    settings = settings or load()
    _, sections = read_config()
    rules = _flat(sections.get(PERSONAL_DATA_SECTION, {}))
    try:
        policy = parse(rules)
        if not policy.hashes:
            return policy
        return parse(rules, _personal_data_key(settings, lake))
    except PolicyError as error:
        raise ConfigError(f"{error} (in [{PERSONAL_DATA_SECTION}] of {config_path()})") from None


def _flat(rules: dict, prefix: str = "") -> dict:
    """`"staff.email_address" = ...` and TOML's dotted `staff.email_address = ...` alike."""
    flat = {}
    for name, value in rules.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{name}.")
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _personal_data_key(settings: Settings, lake: str | None) -> bytes:
    if os.environ.get(KEY_VARIABLE):
        key, where = os.environ[KEY_VARIABLE], KEY_VARIABLE
    elif settings.personal_data_key_file is not None:
        path, where = Path(settings.personal_data_key_file).expanduser(), "the key file"
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or type(error).__name__
            raise ConfigError(
                f"The personal-data key file {path} cannot be read ({reason})",
                fix="fix the path in TOTES_PERSONAL_DATA_KEY_FILE.",
            ) from None
    elif settings.personal_data_key_secret:
        key, where = read_secret(settings.personal_data_key_secret, "personal_data_key"), "the key secret"
    elif StatePaths(lake).personal_data_key is not None:
        return _local_key(StatePaths(lake).personal_data_key)
    else:
        raise ConfigError(
            "The personal-data policy hashes columns but no key is set (only a local lake makes its own)",
            fix="set TOTES_PERSONAL_DATA_KEY_SECRET (or TOTES_PERSONAL_DATA_KEY / _FILE) to the key "
            "every reader of this lake uses.",
        )
    remember_secret_value(key)
    if len(key.encode("utf-8")) < MIN_KEY_BYTES:
        raise ConfigError(
            f"The personal-data key from {where} is shorter than {MIN_KEY_BYTES} bytes", fix="give a longer one."
        )
    return key.encode("utf-8")


def _local_key(path: Path) -> bytes:
    """A local lake's own key, made at its first use (hashes stay equal across runs)."""
    import secrets

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(secrets.token_hex(32) + "\n")
    key = path.read_text(encoding="utf-8").strip()
    remember_secret_value(key)
    return key.encode("utf-8")
