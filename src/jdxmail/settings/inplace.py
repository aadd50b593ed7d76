"""Setting values in a config text in place: only those values change, comments, key
order and layout stay (JSON through jsonc's splicing, TOML through tomlkit)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomlkit

from jdxmail.findings import KeyPath, format_path
from jdxmail.settings import jsonc, tomlfile
from jdxmail.settings.files import ConfigSource

__all__ = ["with_values"]


def with_values(source: ConfigSource, values: Mapping[KeyPath, Any]) -> str:
    """The text of *source* with each key path of *values* set (None: removed).

    Only those values change; comments, order and layout stay. Missing sections are
    added. An index into a list that is not there raises KeyError.
    """
    text = source.text
    for path, value in values.items():
        full = (*source.prefix, *path)
        if source.format == "toml":
            text = _toml_set(text, full, value)
        else:
            text = _json_set(text, full, value)
    return text


def _json_set(text: str, path: KeyPath, value: Any) -> str:
    root = jsonc.parse(text)
    depth = len(path) - 1
    while depth > 0 and jsonc.find(root, path[:depth])[0] is None:
        depth -= 1
    if depth < len(path) - 1 and isinstance(path[depth], int):
        raise KeyError(format_path(path[: depth + 1]))
    nested: Any = value
    for part in reversed(path[depth + 1 :]):
        if isinstance(part, int):
            raise KeyError(format_path(path))
        nested = {part: nested}
    key = path[depth]
    if isinstance(key, int):
        raise KeyError(format_path(path))
    if value is None and depth < len(path) - 1:
        return text  # removing a key whose section is not there: nothing to do
    return jsonc.set_member(text, path[:depth], key, nested)


def _toml_set(text: str, path: KeyPath, value: Any) -> str:
    document = tomlfile.parse(text)
    node: Any = document
    for part in path[:-1]:
        try:
            node = tomlfile.lookup(node, (part,))
        except KeyError:
            if isinstance(part, int) or value is None:
                if value is None:
                    return text
                raise KeyError(format_path(path)) from None
            node.add(part, tomlkit.table())
            node = tomlfile.lookup(node, (part,))
    key = path[-1]
    if isinstance(key, int):
        raise KeyError(format_path(path))
    existing = [k for k in node if str(k).casefold() == key.casefold()]
    if value is None:
        for name in existing:
            del node[name]
    else:
        node[existing[-1] if existing else key] = value
    return tomlkit.dumps(document)
