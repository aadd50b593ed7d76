"""JSON with comments, as .NET's configuration reader accepts it, with source spans.

``appsettings.json`` files may hold ``//`` and ``/* */`` comments and trailing commas.
The standard ``json`` module rejects those, and no parser keeps the positions we need to
name the line of a key and to edit one value while leaving every other byte of the
file (comments, order, indentation) as it was. This module parses into a small tree of
nodes with their offsets, and edits text by splicing at those offsets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "JsoncError",
    "Member",
    "Node",
    "PositionedSyntaxError",
    "append_item",
    "find",
    "parse",
    "remove_item",
    "set_member",
    "to_python",
]

_MAX_DEPTH = 64
#: longer numbers fit no setting (and Python refuses int() of over 4300 digits)
_MAX_NUMBER_LENGTH = 100
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LITERALS = {"true": True, "false": False, "null": None}


class PositionedSyntaxError(ValueError):
    """A config text does not parse; carries the reason and a 1-based line and column."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{message} (line {line}, column {column})")
        self.reason = message
        self.line = line
        self.column = column


class JsoncError(PositionedSyntaxError):
    """The text is not valid JSON-with-comments."""


@dataclass(slots=True)
class Member:
    """One ``"key": value`` pair of an object, with the offset of its key."""

    key: str
    key_start: int
    value: Node


@dataclass(slots=True)
class Node:
    """A parsed value and the half-open span ``[start, end)`` it covers in the text."""

    kind: str  # "object", "array", "string", "number" or "literal"
    start: int
    end: int
    scalar: Any = None
    members: list[Member] = field(default_factory=list)
    items: list[Node] = field(default_factory=list)

    def member(self, key: str) -> Member | None:
        """The last member named *key*, compared case-insensitively as .NET does."""
        wanted = key.casefold()
        found = None
        for member in self.members:
            if member.key.casefold() == wanted:
                found = member
        return found


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of *offset* in *text*."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, offset: int | None = None) -> JsoncError:
        line, column = line_col(self.text, self.pos if offset is None else offset)
        return JsoncError(message, line, column)

    def skip(self) -> None:
        """Skip whitespace and comments."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n\ufeff":
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.fail("unterminated /* comment")
                self.pos = end + 2
            else:
                return

    def value(self, depth: int) -> Node:
        if depth > _MAX_DEPTH:
            raise self.fail(f"nested more than {_MAX_DEPTH} levels deep")
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of file, expected a value")
        char = self.text[self.pos]
        if char == "{":
            return self.object(depth)
        if char == "[":
            return self.array(depth)
        if char == '"':
            start = self.pos
            decoded = self.string()
            return Node("string", start, self.pos, scalar=decoded)
        number = _NUMBER.match(self.text, self.pos)
        if number:
            start, self.pos = self.pos, number.end()
            literal = number.group()
            if len(literal) > _MAX_NUMBER_LENGTH:
                raise self.fail(
                    f"a number of {len(literal)} characters is too long for any setting", start
                )
            scalar: Any = float(literal) if any(c in literal for c in ".eE") else int(literal)
            return Node("number", start, self.pos, scalar=scalar)
        for word, scalar in _LITERALS.items():
            if self.text.startswith(word, self.pos):
                start, self.pos = self.pos, self.pos + len(word)
                return Node("literal", start, self.pos, scalar=scalar)
        if char == "'":
            raise self.fail("strings must use double quotes")
        raise self.fail(f"unexpected character {char!r}, expected a value")

    def string(self) -> str:
        start = self.pos
        index = start + 1
        text = self.text
        while True:
            if index >= len(text):
                raise self.fail("unterminated string", start)
            char = text[index]
            if char == "\\":
                index += 2
            elif char == '"':
                break
            elif char == "\n":
                raise self.fail("line break inside a string", index)
            else:
                index += 1
        self.pos = index + 1
        try:
            decoded: str = json.loads(text[start : self.pos])
        except json.JSONDecodeError as exc:
            raise self.fail(f"bad string: {exc.msg}", start + exc.pos) from None
        return decoded

    def object(self, depth: int) -> Node:
        node = Node("object", self.pos, self.pos)
        self.pos += 1
        while True:
            self.skip()
            if self.pos >= len(self.text):
                raise self.fail("unexpected end of file, expected '}'")
            if self.text[self.pos] == "}":
                break
            if self.text[self.pos] != '"':
                raise self.fail("expected a quoted key or '}'")
            key_start = self.pos
            key = self.string()
            self.skip()
            if not self.text.startswith(":", self.pos):
                raise self.fail(f"expected ':' after key {key!r}")
            self.pos += 1
            node.members.append(Member(key, key_start, self.value(depth + 1)))
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("}", self.pos):
                raise self.fail("expected ',' or '}' after a value")
        self.pos += 1
        node.end = self.pos
        return node

    def array(self, depth: int) -> Node:
        node = Node("array", self.pos, self.pos)
        self.pos += 1
        while True:
            self.skip()
            if self.pos >= len(self.text):
                raise self.fail("unexpected end of file, expected ']'")
            if self.text[self.pos] == "]":
                break
            node.items.append(self.value(depth + 1))
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("]", self.pos):
                raise self.fail("expected ',' or ']' after a value")
        self.pos += 1
        node.end = self.pos
        return node


def parse(text: str) -> Node:
    """Parse JSON with comments and trailing commas; raise JsoncError with line/column."""
    parser = _Parser(text)
    root = parser.value(0)
    parser.skip()
    if parser.pos != len(text):
        raise parser.fail("unexpected text after the end of the document")
    return root


def to_python(node: Node) -> Any:
    """Plain Python value of *node* (a later duplicate key wins, as in .NET)."""
    if node.kind == "object":
        return {member.key: to_python(member.value) for member in node.members}
    if node.kind == "array":
        return [to_python(item) for item in node.items]
    return node.scalar


def find(root: Node, path: Sequence[str | int]) -> tuple[Node | None, int | None]:
    """The node at *path* and the offset where its key (or item) starts.

    Keys match case-insensitively. Returns ``(None, offset)`` with the offset of the
    deepest ancestor that exists when the path is not in the document.
    """
    node = root
    offset: int | None = root.start
    for part in path:
        if isinstance(part, int):
            if node.kind != "array" or not 0 <= part < len(node.items):
                return None, offset
            node = node.items[part]
            offset = node.start
        else:
            member = node.member(part) if node.kind == "object" else None
            if member is None:
                return None, offset
            node, offset = member.value, member.key_start
    return node, offset


# --- editing -------------------------------------------------------------------------


def _indent_unit(text: str) -> str:
    widths = [
        len(line) - len(line.lstrip(" "))
        for line in text.splitlines()
        if line.startswith(" ") and line.strip()
    ]
    if any(line.startswith("\t") for line in text.splitlines()):
        return "\t"
    return " " * (min(widths) if widths else 2)


def _line_indent(text: str, offset: int) -> str:
    start = text.rfind("\n", 0, offset) + 1
    line = text[start:offset]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _render(value: Any, indent: str, unit: str) -> str:
    dumped = json.dumps(value, indent=unit, ensure_ascii=False)
    return dumped.replace("\n", "\n" + indent)


def _end_of_line_after(text: str, offset: int) -> int:
    """Offset just before the newline ending the line that holds *offset*, if the rest of
    that line is only a comma, spaces or a ``//`` comment; else *offset* itself."""
    rest_end = text.find("\n", offset)
    rest_end = len(text) if rest_end < 0 else rest_end
    rest = text[offset:rest_end].strip().lstrip(",").strip()
    if rest == "" or rest.startswith("//"):
        return rest_end
    return offset


def _insert_last(text: str, container: Node, last_end: int | None, entry: str, indent: str) -> str:
    """Insert *entry*, rendered at *indent*, after the last element of *container*
    (which ends at *last_end*; None when the container is empty)."""
    if last_end is None:
        closing_indent = _line_indent(text, container.end - 1)
        if text[container.start + 1 : container.end - 1].strip() == "":
            closing_indent = indent[: len(indent) - len(_indent_unit(text))]
        return (
            text[: container.start + 1]
            + "\n"
            + indent
            + entry
            + "\n"
            + closing_indent
            + text[container.end - 1 :]
        )
    comma = "" if text[last_end:].lstrip(" \t").startswith(",") else ","
    if comma == "":
        last_end = text.index(",", last_end) + 1
    where = _end_of_line_after(text, last_end)
    if where == last_end and text.find("\n", last_end, container.end) < 0:
        return text[:last_end] + comma + " " + entry + text[last_end:]
    return text[:last_end] + comma + text[last_end:where] + "\n" + indent + entry + text[where:]


def append_item(text: str, path: Sequence[str | int], value: Any) -> str:
    """Return *text* with *value* appended to the array at *path*."""
    root = parse(text)
    array, key_offset = find(root, path)
    if array is None or array.kind != "array" or key_offset is None:
        raise KeyError(f"no array at {list(path)}")
    unit = _indent_unit(text)
    if array.items:
        indent = _line_indent(text, array.items[-1].start)
        last_end: int | None = array.items[-1].end
    else:
        indent = _line_indent(text, key_offset) + unit
        last_end = None
    return _insert_last(text, array, last_end, _render(value, indent, unit), indent)


def remove_item(text: str, path: Sequence[str | int], index: int) -> str:
    """Return *text* without item *index* of the array at *path*."""
    root = parse(text)
    array, _ = find(root, path)
    if array is None or array.kind != "array" or not 0 <= index < len(array.items):
        raise KeyError(f"no item {index} in the array at {list(path)}")
    items = array.items
    if len(items) == 1:
        return text[: array.start + 1] + text[array.end - 1 :]
    if index < len(items) - 1:
        return text[: items[index].start] + text[items[index + 1].start :]
    return text[: items[index - 1].end] + text[items[index].end :]


def set_member(text: str, path: Sequence[str | int], key: str, value: Any) -> str:
    """Return *text* with ``key: value`` set in the object at *path*.

    An existing key (matched case-insensitively) keeps its place and spelling and only
    its value changes; a new key is added after the last member.
    """
    root = parse(text)
    obj, key_offset = find(root, path)
    if obj is None or obj.kind != "object" or key_offset is None:
        raise KeyError(f"no object at {list(path)}")
    unit = _indent_unit(text)
    existing = obj.member(key)
    if existing is not None:
        indent = _line_indent(text, existing.key_start)
        rendered = _render(value, indent, unit)
        return text[: existing.value.start] + rendered + text[existing.value.end :]
    if obj.members:
        indent = _line_indent(text, obj.members[-1].key_start)
        last_end: int | None = obj.members[-1].value.end
    else:
        indent = _line_indent(text, key_offset) + unit
        last_end = None
    entry = json.dumps(key, ensure_ascii=False) + ": " + _render(value, indent, unit)
    return _insert_last(text, obj, last_end, entry, indent)
