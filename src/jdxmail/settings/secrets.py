"""Write-only secrets: config views and texts without passwords, hashes or relay
credentials, and putting the stored ones back when such a text is saved.

Every ``Password`` value (SMTP users, console users, relays) is replaced by MARKER in
what is shown. When a text holding MARKER is saved, each marker is replaced by the
secret stored for the same user (by UserName) or relay (by Name, else Host and Port)
in the current file, so a form or an editor can leave a secret as it is without ever
having seen it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jdxmail.findings import Finding, KeyPath, Severity
from jdxmail.settings.files import ConfigError, ConfigSource, source_from_text
from jdxmail.settings.inplace import with_values
from jdxmail.settings.model import Settings

__all__ = ["MARKER", "is_secret_path", "redact_text", "restore", "secret_paths", "view"]

#: what a stored secret is shown as; saving it back keeps the stored secret
MARKER = "<write-only: unchanged>"
_SECRET_KEYS = frozenset({"password"})
_IDENTITY_KEYS = ("username", "name")


def is_secret_path(path: KeyPath) -> bool:
    """True when *path* names a secret (its last key is Password)."""
    return bool(path) and isinstance(path[-1], str) and path[-1].casefold() in _SECRET_KEYS


def secret_paths(data: Any, path: KeyPath = ()) -> list[KeyPath]:
    """Every key path in *data* (parsed config) whose value is a secret text."""
    found: list[KeyPath] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            here = (*path, key)
            if is_secret_path(here) and isinstance(value, str):
                found.append(here)
            else:
                found += secret_paths(value, here)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            found += secret_paths(item, (*path, index))
    return found


def redact_text(source: ConfigSource) -> str:
    """The text of *source* with every secret replaced by MARKER (layout kept)."""
    paths = [p for p in secret_paths(source.data) if _get(source.data, p) != ""]
    return with_values(source, dict.fromkeys(paths, MARKER)) if paths else source.text


def view(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-ready data by file key, every secret shown as MARKER
    (or None when there is none)."""
    data = settings.model_dump(mode="json", by_alias=True)
    masked: dict[str, Any] = _mask(data, settings)
    return masked


def _mask(data: Any, model: Any) -> Any:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if key.casefold() in _SECRET_KEYS:
                name = _field_name(model, key)
                secret = getattr(model, name, None) if name else None
                out[key] = MARKER if secret is not None else None
            else:
                name = _field_name(model, key)
                out[key] = _mask(value, getattr(model, name, None) if name else None)
        return out
    if isinstance(data, list) and isinstance(model, list):
        return [_mask(item, inner) for item, inner in zip(data, model, strict=False)]
    return data


def _field_name(model: Any, alias: str) -> str | None:
    for name, info in getattr(type(model), "model_fields", {}).items():
        if (info.alias or name) == alias:
            return str(name)
    return None


def restore(path: Path, text: str, current: ConfigSource | None) -> tuple[str, list[Finding]]:
    """*text* with each MARKER replaced by the matching secret of *current*.

    Returns the text and an error finding for each marker with no stored secret to
    match. A text that does not parse is returned as it is (validation reports it).
    """
    try:
        new = source_from_text(path, text)
    except ConfigError:
        return text, []
    markers = [p for p in secret_paths(new.data) if _get(new.data, p) == MARKER]
    if not markers:
        return text, []
    values: dict[KeyPath, Any] = {}
    problems: list[Finding] = []
    for secret in markers:
        stored = _stored_secret(new.data, current.data if current else {}, secret)
        if stored is None:
            problems.append(
                Finding(
                    Severity.ERROR,
                    "secret.missing",
                    "there is no stored password to keep here",
                    "type the password (or its hash) instead of the write-only marker",
                    (*new.prefix, *secret),
                    new.line_of(secret),
                )
            )
        else:
            values[secret] = stored
    return with_values(new, values), problems


def _stored_secret(new: Any, old: Any, secret: KeyPath) -> str | None:
    """The secret at *secret* in *old*, matching list items by who they are."""
    new_node, old_node = new, old
    for part in secret:
        if isinstance(part, int):
            if not isinstance(new_node, list) or not isinstance(old_node, list):
                return None
            item = new_node[part]
            match = _matching_item(item, old_node)
            if match is None:
                return None
            new_node, old_node = item, old_node[match]
        else:
            new_node = _member(new_node, part)
            old_node = _member(old_node, part)
    return old_node if isinstance(old_node, str) and old_node != MARKER else None


def _matching_item(item: Any, candidates: list[Any]) -> int | None:
    identity = _identity(item)
    if identity is None:
        return None
    for index, candidate in enumerate(candidates):
        if _identity(candidate) == identity:
            return index
    return None


def _identity(item: Any) -> tuple[str, str] | None:
    """Who a list item is: its UserName or Name, else its Host and Port (relays)."""
    if not isinstance(item, Mapping):
        return None
    for key in _IDENTITY_KEYS:
        value = _member(item, key)
        if isinstance(value, str) and value.strip():
            return key, value.strip().casefold()
    host = _member(item, "host")
    if isinstance(host, str):
        return "host", f"{host.strip().casefold()}:{_member(item, 'port') or 587}"
    return None


def _member(node: Any, key: str) -> Any:
    if not isinstance(node, Mapping):
        return None
    found = None
    for name, value in node.items():
        if name.casefold() == key.casefold():
            found = value  # a later duplicate wins, as when loading
    return found


def _get(data: Any, path: KeyPath) -> Any:
    node = data
    for part in path:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
        else:
            node = _member(node, part)
    return node
