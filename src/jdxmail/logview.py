"""Reading the daily log files back: list the days, filter lines, follow the file.

The files are those :mod:`jdxmail.logs` writes (``jdxmail.log`` today, renamed to
``jdxmail-YYYYMMDD.log`` at midnight). Every process of ``serve`` (the workers, the
delivery process) appends to the same file, so reading the file — rather than
listening to this process's log records — shows the lines of all of them. All
functions block on file reads: call them in a thread.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from jdxmail.logs import LOG_FILE_NAME

__all__ = [
    "LEVELS",
    "LogDay",
    "LogFollower",
    "LogLine",
    "LogPage",
    "LogQuery",
    "UnknownLogDay",
    "log_days",
    "parse_line",
    "read_log",
]

#: level names in increasing severity (a filter keeps its level and those above)
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}
_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (?P<level>[A-Z]+)\s+"
    r"(?P<category>\S+)\s+\[(?P<session>[^\]]*)\] (?P<message>.*)$"
)
_DATED = re.compile(r"^jdxmail-(\d{4})(\d\d)(\d\d)\.log$")
_BLOCK = 64 * 1024
#: the most lines one read returns
MAX_LINES = 5000


class UnknownLogDay(ValueError):
    """No log file for the day asked for (or the day is not a date)."""


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of the log, split into its parts (``level`` empty for other lines)."""

    time: str
    level: str
    category: str
    session: str
    message: str
    #: where the line starts in its file (LogFollower's lines), else -1
    at: int = -1

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data: dict[str, Any] = {
            "time": self.time,
            "level": self.level,
            "category": self.category,
            "session": self.session,
            "message": self.message,
        }
        if self.at >= 0:
            data["at"] = self.at
        return data


def parse_line(text: str, at: int = -1) -> LogLine:
    """Split a log line (text, or JSON with ``Logging.Format: "json"``); a line of
    another shape is kept whole as the message."""
    if text.startswith("{"):
        parsed = _parse_json_line(text, at)
        if parsed is not None:
            return parsed
    match = _LINE.match(text)
    if match is None:
        return LogLine("", "", "", "", text, at)
    session = match["session"]
    return LogLine(
        match["time"],
        match["level"],
        match["category"],
        "" if session == "-" else session,
        match["message"],
        at,
    )


def _parse_json_line(text: str, at: int) -> LogLine | None:
    """A JSON log line (logs.JsonFormatter) as the text format's parts; None if not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return None
    # "2026-11-30T05:07:02.113+00:00" -> "2026-11-30 05:07:02.113", as text lines have it
    when = str(data.get("time", ""))[:23].replace("T", " ")
    return LogLine(
        when,
        str(data.get("level", "")),
        str(data.get("category", "")),
        str(data.get("session") or ""),
        data["message"],
        at,
    )


@dataclass(frozen=True, slots=True)
class LogDay:
    """One day's log file."""

    day: date
    path: Path
    size: int
    current: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the file's name, not its full path)."""
        return {
            "day": self.day.isoformat(),
            "file": self.path.name,
            "size": self.size,
            "current": self.current,
        }


def log_days(logs_dir: Path) -> list[LogDay]:
    """The log files in *logs_dir*, newest day first (today's ``jdxmail.log`` first)."""
    days: list[LogDay] = []
    current = Path(logs_dir) / LOG_FILE_NAME
    try:
        stat = current.stat()
        days.append(LogDay(date.fromtimestamp(stat.st_mtime), current, stat.st_size, True))
    except OSError:
        pass
    try:
        entries = list(os.scandir(logs_dir))
    except OSError:
        entries = []
    dated: list[LogDay] = []
    for entry in entries:
        match = _DATED.match(entry.name)
        if match is None:
            continue
        try:
            day = date(int(match[1]), int(match[2]), int(match[3]))
            size = entry.stat().st_size
        except (ValueError, OSError):
            continue
        dated.append(LogDay(day, Path(entry.path), size, False))
    dated.sort(key=lambda d: d.day, reverse=True)
    return days + dated


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Which lines to keep: a lowest level, a category, a text (all case-insensitive)."""

    level: str | None = None
    category: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if self.level is not None and self.level.upper() not in _RANK:
            raise ValueError(f"unknown level {self.level!r}: use one of {', '.join(LEVELS)}")

    def keeps(self, line: LogLine) -> bool:
        """True when *line* passes every filter given."""
        if self.level is not None:
            rank = _RANK.get(line.level)
            if rank is None or rank < _RANK[self.level.upper()]:
                return False
        if self.category is not None and line.category.casefold() != self.category.casefold():
            return False
        if self.text:
            needle = self.text.casefold()
            return needle in line.message.casefold() or needle in line.session.casefold()
        return True


@dataclass(slots=True)
class LogPage:
    """The newest matching lines of one day, oldest first."""

    day: LogDay | None
    lines: list[LogLine] = field(default_factory=list)
    #: True when older matching lines were left out (the limit was reached)
    more: bool = False
    #: the file's size when it was read: followed lines before it are already here
    end: int = 0
    #: the file's inode (a follower's lines of another file are all new)
    inode: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "day": None if self.day is None else self.day.to_json(),
            "lines": [line.to_json() for line in self.lines],
            "more": self.more,
            "end": self.end,
            "file": self.inode,
        }


def _find_day(logs_dir: Path, day: str | None) -> LogDay | None:
    days = log_days(logs_dir)
    if day is None or day in ("", "today"):
        return days[0] if days and days[0].current else None
    try:
        wanted = date.fromisoformat(day)
    except ValueError:
        raise UnknownLogDay(f"{day!r} is not a day: use YYYY-MM-DD") from None
    for item in days:
        if item.day == wanted:
            return item
    raise UnknownLogDay(f"no log file for {wanted.isoformat()} in {logs_dir}")


def _lines_backwards(handle: Any, end: int) -> Any:
    """The lines of the open file before *end*, last first, read in blocks."""
    position = end
    rest = b""
    while position > 0:
        step = min(_BLOCK, position)
        position -= step
        handle.seek(position)
        chunk = handle.read(step) + rest
        parts = chunk.split(b"\n")
        rest = parts[0]
        for raw in reversed(parts[1:]):
            if raw:
                yield raw.decode("utf-8", "replace").rstrip("\r")
    if rest:
        yield rest.decode("utf-8", "replace").rstrip("\r")


def read_log(
    logs_dir: Path, day: str | None = None, query: LogQuery | None = None, *, limit: int = 500
) -> LogPage:
    """The last *limit* lines of *day* (``YYYY-MM-DD``; None: today) that *query* keeps.

    Raises UnknownLogDay for a day without a file. Today without a file yet is an
    empty page.
    """
    query = query or LogQuery()
    limit = max(1, min(limit, MAX_LINES))
    found = _find_day(Path(logs_dir), day)
    page = LogPage(found)
    if found is None:
        return page
    kept: list[LogLine] = []
    try:
        with open(found.path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            page.end, page.inode = stat.st_size, stat.st_ino
            for text in _lines_backwards(handle, stat.st_size):
                line = parse_line(text)
                if query.keeps(line):
                    if len(kept) == limit:
                        page.more = True
                        break
                    kept.append(line)
    except FileNotFoundError:
        pass
    kept.reverse()
    page.lines = kept
    return page


class LogFollower:
    """New lines of today's file since the last look (``tail -F``: follows the rename
    at midnight by opening the new file)."""

    def __init__(self, logs_dir: Path) -> None:
        self.path = Path(logs_dir) / LOG_FILE_NAME
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""

    def start_at_end(self) -> None:
        """Skip what the file holds now."""
        try:
            stat = self.path.stat()
        except OSError:
            return
        self._inode, self._offset = stat.st_ino, stat.st_size

    @property
    def inode(self) -> int:
        """The inode of the file followed (0 before the first look)."""
        return self._inode or 0

    def read_new(self, max_bytes: int = 1 << 20) -> list[LogLine]:
        """Lines appended since the last call (complete lines only), each with ``at``."""
        try:
            stat = self.path.stat()
        except OSError:
            return []
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._inode, self._offset, self._partial = stat.st_ino, 0, b""
        if stat.st_size == self._offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read(max_bytes)
        start = self._offset - len(self._partial)
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        lines = []
        for raw in complete:
            if raw:
                lines.append(parse_line(raw.decode("utf-8", "replace").rstrip("\r"), start))
            start += len(raw) + 1
        return lines
