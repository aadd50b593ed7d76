"""Setting values in a config text in place: only those values change, comments, key
order and layout stay (JSON through jsonc's splicing, TOML through tomlkit)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomlkit
from tomlkit.items import AoT

from jdxmail.findings import KeyPath, format_path
from jdxmail.settings import jsonc, tomlfile
from jdxmail.settings.files import ConfigSource

__all__ = ["with_values"]


def with_values(source: ConfigSource, values: Mapping[KeyPath, Any]) -> str:
    """The text of *source* with each key path of *values* set (None: removed).

    Only those values change; comments, order and layout stay. Missing sections are
    added. Keys of the item just past the end of a list (``RelayServers[2].Host`` when
    there are two) make a new item appended to it; any other index into a list that is
    not there raises KeyError.
    """
    text = source.text
    appended: dict[KeyPath, dict[str, Any]] = {}
    for path, value in values.items():
        new_item = _new_item_path(source.data, path)
        if new_item is not None:
            if value is not None:
                appended.setdefault(new_item, {})[str(path[len(new_item)])] = value
            continue
        full = (*source.prefix, *path)
        if source.format == "toml":
            text = _toml_set(text, full, value)
        else:
            text = _json_set(text, full, value)
    for item_path, item in sorted(appended.items(), key=lambda entry: str(entry[0])):
        full_list = (*source.prefix, *item_path[:-1])
        if source.format == "toml":
            text = _toml_append(text, full_list, item)
        else:
            text = _json_append(text, full_list, item)
    return text


def _new_item_path(data: Any, path: KeyPath) -> KeyPath | None:
    """The path of the list item *path* is in, when that item is one past the end of
    its list (or the list is missing and the index is 0) and *path* names one of its
    keys; else None."""
    node = data
    for depth, part in enumerate(path):
        if isinstance(part, int):
            length = len(node) if isinstance(node, list) else 0 if node is None else -1
            if part == length and depth == len(path) - 2:
                return path[: depth + 1]
            if not isinstance(node, list) or not 0 <= part < len(node):
                return None
            node = node[part]
        else:
            matches = (
                [v for k, v in node.items() if k.casefold() == part.casefold()]
                if (isinstance(node, Mapping))
                else []
            )
            node = matches[-1] if matches else None
    return None


def _json_append(text: str, list_path: KeyPath, item: dict[str, Any]) -> str:
    node, _ = jsonc.find(jsonc.parse(text), list_path)
    if node is None:
        return _json_set(text, list_path, [item])
    return jsonc.append_item(text, list_path, item)


def _toml_append(text: str, list_path: KeyPath, item: dict[str, Any]) -> str:
    document = tomlfile.parse(text)
    try:
        parent = tomlfile.lookup(document, list_path[:-1])
    except KeyError:
        return _toml_set(text, list_path, [item])
    try:
        items = tomlfile.lookup(parent, list_path[-1:])
    except KeyError:
        items = None
    if items is None or isinstance(items, AoT):
        table = tomlkit.table()
        table.update(item)
        table.add(tomlkit.nl())
        if items is None:
            items = tomlkit.aot()
            parent.add(str(list_path[-1]), items)
        items.append(table)
    else:
        inline = tomlkit.inline_table()
        inline.update(item)
        items.append(inline)
    return tomlkit.dumps(document)


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
    if value is None:
        if depth < len(path) - 1:
            return text  # removing a key whose section is not there: nothing to do
        return _json_remove(text, path[:depth], key)
    return jsonc.set_member(text, path[:depth], key, nested)


def _json_remove(text: str, path: KeyPath, key: str) -> str:
    """*text* without the member *key* (any spelling) of the object at *path*: its
    line(s) and the comma that separated it; comments elsewhere stay."""
    while True:
        obj, _ = jsonc.find(jsonc.parse(text), path)
        if obj is None or obj.kind != "object":
            return text
        found = [i for i, m in enumerate(obj.members) if m.key.casefold() == key.casefold()]
        if not found:
            return text
        index = found[-1]
        member = obj.members[index]
        line_start = text.rfind("\n", 0, member.key_start) + 1
        own_line = not text[line_start : member.key_start].strip()
        start = line_start if own_line else member.key_start
        end = member.value.end
        stripped = text[end:].lstrip(" \t")
        comma = -1
        if stripped.startswith(","):
            end = len(text) - len(stripped) + 1
        elif index > 0:
            # the last member: the comma after the one before it goes instead
            comma = text.find(",", obj.members[index - 1].value.end, member.key_start)
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        tail = text[end:line_end].strip()
        if own_line and (tail == "" or tail.startswith("//")):
            end = min(line_end + 1, len(text))
        text = text[:start] + text[end:]
        if comma >= 0:
            text = text[:comma] + text[comma + 1 :]


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
