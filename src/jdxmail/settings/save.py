"""Saving a whole config: new values for some keys, or a new text from an editor.

The web console's Settings page and its restore go through here. The new text is made
by editing the file in place (jsonc / tomlkit keep comments and layout), validated with
the findings ``validate-config`` gives, and written atomically only when it has no
error. Which changes need a restart (the listeners, the relays, the paths) is said
here too, so every caller tells users the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jdxmail.findings import Finding, KeyPath, Severity, has_errors, sort_findings
from jdxmail.settings import secrets
from jdxmail.settings.edit import _write_atomically, config_lock
from jdxmail.settings.files import (
    ConfigError,
    ConfigParseError,
    ConfigSource,
    inspect_source,
    read_source,
    source_from_text,
)
from jdxmail.settings.inplace import with_values
from jdxmail.settings.model import DEFAULT_CONFIG_TEXT, Settings

__all__ = [
    "ConfigChangedError",
    "ConfigRejectedError",
    "SaveResult",
    "Validated",
    "restart_needed",
    "save_text",
    "save_values",
    "text_version",
    "validate_text",
]


class ConfigRejectedError(ConfigError, ValueError):
    """The new config has errors; nothing was written. Holds every finding."""

    def __init__(self, path: Path, findings: list[Finding]) -> None:
        errors = [f for f in findings if f.severity is Severity.ERROR]
        first = errors[0]
        where = f"{first.key}: " if first.key else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{path}: {where}{first.message}{more}; nothing was saved")
        self.path = path
        self.findings = findings


class ConfigChangedError(ConfigError, RuntimeError):
    """The file changed since the version the edit was based on; nothing was written."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} was changed by someone else since it was opened")
        self.path = path
        self.fix = "reload to see the current file, then make the change again"


@dataclass(frozen=True)
class Validated:
    """A config text checked as validate-config checks it."""

    source: ConfigSource | None  # None when the text does not parse
    settings: Settings | None  # None when there is an error
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return self.settings is not None and not has_errors(self.findings)


@dataclass(frozen=True)
class SaveResult:
    """What a save wrote: the new source and settings, its findings and what changed."""

    source: ConfigSource
    settings: Settings
    findings: list[Finding]  # warnings and hints only
    changed: list[str]  # key paths whose value changed, e.g. SmtpServer.Port
    restart: list[str]  # those of them that take effect only after a restart
    version: str


def text_version(text: str) -> str:
    """A short fingerprint of a config text, to notice a file changed under an editor."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def validate_text(path: Path, text: str) -> Validated:
    """Parse and check *text* as the config file *path*: syntax, schema, semantic checks.

    Never raises for a bad text: a syntax error is an error finding with its line.
    """
    try:
        source = source_from_text(path, text)
    except ConfigParseError as error:
        finding = Finding(
            Severity.ERROR,
            "syntax",
            f"{error.reason} (column {error.column})",
            "fix the syntax at that line; comments (//) and trailing commas are allowed"
            if path.suffix.lower() != ".toml"
            else "fix the TOML syntax at that line",
            (),
            error.line,
        )
        return Validated(None, None, [finding])
    settings, findings = inspect_source(source)
    if settings is not None:
        from jdxmail.settings.checks import check_settings  # noqa: PLC0415

        resolved = settings.with_environment().with_base_dir(source.base_dir)
        findings = findings + check_settings(resolved, source)
    findings = sort_findings(findings)
    return Validated(source, None if has_errors(findings) else settings, findings)


def save_text(path: Path, text: str, *, base_version: str | None = None) -> SaveResult:
    """Validate *text* and write it as the config file *path*.

    Write-only markers (see ``secrets``) are replaced by the secrets stored in the
    current file first. With *base_version* (``text_version`` of the text the edit
    started from) a file changed meanwhile raises ConfigChangedError. Raises
    ConfigRejectedError (findings) when the text has an error, ConfigFileError /
    ConfigParseError when the current file cannot be read, and ConfigWriteError (row
    F1) when it cannot be written; in every case the file is left as it was.
    """
    with config_lock(path):
        current = read_source(path) if path.exists() else None
        version = text_version(current.text) if current is not None else None
        if base_version is not None and version is not None and version != base_version:
            raise ConfigChangedError(path)
        text, problems = secrets.restore(path, text, current)
        if problems:
            raise ConfigRejectedError(path, problems)
        checked = validate_text(path, text)
        if not checked.ok or checked.source is None or checked.settings is None:
            raise ConfigRejectedError(path, checked.findings)
        _write_atomically(path, text)
        old = _settings_of(current)
        return SaveResult(
            checked.source,
            checked.settings,
            checked.findings,
            changed_keys(old, checked.settings),
            restart_needed(old, checked.settings),
            text_version(text),
        )


def save_values(
    path: Path, values: Mapping[KeyPath, Any], *, base_version: str | None = None
) -> SaveResult:
    """Set each key path of *values* in the config file *path* and save it (save_text).

    A value None removes the key (its default applies); a secret given as "" or the
    write-only marker keeps the stored secret. Raises as save_text does.
    """
    with config_lock(path):
        current = read_source(path) if path.exists() else _default_source(path)
        if base_version is not None and text_version(current.text) != base_version:
            raise ConfigChangedError(path)
        kept = {
            key: value
            for key, value in values.items()
            if not (secrets.is_secret_path(key) and value in ("", secrets.MARKER))
        }
        return save_text(path, with_values(current, kept))


def _default_source(path: Path) -> ConfigSource:
    """The built-in default config as the text of a new file at *path*."""
    from jdxmail.settings.edit import _default_toml  # noqa: PLC0415

    toml = path.suffix.lower() == ".toml"
    return source_from_text(path, _default_toml() if toml else DEFAULT_CONFIG_TEXT)


def _settings_of(source: ConfigSource | None) -> Settings | None:
    if source is None:
        return None
    settings, _ = inspect_source(source)
    return settings


#: the sections and SmtpServer keys whose changes apply only after a restart: the
#: listeners and the folders. Every other key applies on reload (SIGHUP, or a save from
#: the console): users and policy to new commands, relays and Delivery to the next
#: delivery attempts.
_RESTART_SECTIONS = ("paths", "webui")
_RESTART_SMTP_KEYS = ("Enabled", "BindAddress", "Port", "Tls", "ProxyPort")
_RELAY_SECTIONS = ("relayserver", "relayservers")


def changed_keys(old: Settings | None, new: Settings) -> list[str]:
    """The key paths (section.key) whose values differ between *old* and *new*."""
    before = _flat(old) if old is not None else {}
    after = _flat(new)
    return [key for key in after.keys() | before.keys() if before.get(key) != after.get(key)]


def restart_needed(old: Settings | None, new: Settings) -> list[str]:
    """The changed key paths that a reload does not apply: the listeners, the folders,
    the console's own settings, and relays where there were none (serve started no
    delivery engine then)."""
    restart = []
    first_relays = old is not None and not old.relays and bool(new.relays)
    for key in sorted(changed_keys(old, new)):
        section, _, name = key.partition(".")
        if key.casefold() == "webui.users":
            continue  # console users are read live, like SmtpServer.Users
        if section.casefold() in _RELAY_SECTIONS:
            if first_relays:
                restart.append(key)
            continue
        if section.casefold() in _RESTART_SECTIONS or (
            section == "SmtpServer" and name in _RESTART_SMTP_KEYS
        ):
            restart.append(key)
    return restart


def _flat(settings: Settings) -> dict[str, Any]:
    """section.Key → value (secrets compared by value, never shown)."""
    out: dict[str, Any] = {}
    for name, info in type(settings).model_fields.items():
        section = info.alias or name
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            for inner, inner_info in type(value).model_fields.items():
                out[f"{section}.{inner_info.alias or inner}"] = _comparable(getattr(value, inner))
        else:
            out[section] = _comparable(value)
    return out


def _comparable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return repr(sorted(_secret_dump(value).items()))
    if isinstance(value, list):
        return repr([_comparable(v) for v in value])
    return repr(value)


def _secret_dump(model: Any) -> dict[str, Any]:
    out = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if hasattr(value, "get_secret_value"):
            value = hashlib.sha256(value.get_secret_value().encode()).hexdigest()
        elif hasattr(value, "model_dump"):
            value = sorted(_secret_dump(value).items())
        out[name] = value
    return out
