"""TOML config files: parse with tomlkit (which keeps comments and layout on write-back)
and find the line of a key path, which tomlkit does not record."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.container import Container
from tomlkit.items import AoT, Table

from jdxmail.settings.jsonc import PositionedSyntaxError

__all__ = ["TomlError", "key_lines", "lookup", "parse"]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(r'^\s*("[^"]*"|\'[^\']*\'|[A-Za-z0-9_.\-" ]+?)\s*=')


class TomlError(PositionedSyntaxError):
    """The text is not valid TOML."""


def parse(text: str) -> tomlkit.TOMLDocument:
    """Parse *text*, raising TomlError with the position of the first problem."""
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        reason = str(exc).split(" at line ")[0]
        raise TomlError(reason, exc.line, exc.col + 1) from None  # tomlkit counts from 0
    except (tomlkit.exceptions.TOMLKitError, ValueError, RecursionError) as exc:
        raise TomlError(str(exc) or type(exc).__name__, 1, 1) from None


def _split_key(raw: str) -> list[str]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.\s]+)', raw)
    return [next(p for p in groups if p) for groups in parts]


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each key path (lowercased keys, array-of-tables indices) to its 1-based line.

    Tables map to their header line, keys to their assignment line. Values inside
    inline tables or arrays are not listed; callers fall back to the enclosing key.
    """
    lines: dict[tuple[str | int, ...], int] = {}
    counters: dict[tuple[str, ...], int] = {}
    table: tuple[str | int, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names = [p.lower() for p in _split_key(header.group(2))]
            if header.group(1) == "[[":
                key = tuple(names)
                index = counters.get(key, -1) + 1
                counters[key] = index
                # an array-of-tables header names the last element of that array
                table = (*_with_indices(names[:-1], counters), names[-1], index)
            else:
                table = tuple(_with_indices(names, counters))
            lines.setdefault(table, number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            parts = [p.lower() for p in _split_key(assign.group(1))]
            lines.setdefault((*table, *parts), number)
    return lines


def _with_indices(names: list[str], counters: dict[tuple[str, ...], int]) -> list[str | int]:
    """Insert the current array-of-tables index after each name that is such an array."""
    out: list[str | int] = []
    for depth, name in enumerate(names):
        out.append(name)
        key = tuple(names[: depth + 1])
        if key in counters:
            out.append(counters[key])
    return out


def lookup(container: Container | Table, path: Sequence[str | int]) -> Any:
    """The tomlkit item at *path*, keys compared case-insensitively; KeyError if absent."""
    node: Any = container
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, AoT | list) or not 0 <= part < len(node):
                raise KeyError(part)
            node = node[part]
            continue
        keys = [k for k in node if str(k).casefold() == part.casefold()]
        if not keys:
            raise KeyError(part)
        node = node[keys[-1]]
    return node
