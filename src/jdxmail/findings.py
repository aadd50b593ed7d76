"""Findings: what a check found, where, and how to fix it.

Every diagnostic of jdxmail (validate-config, later check-port, test-relay, doctor)
reports a list of findings; the CLI renders them the same way everywhere.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "KeyPath", "Severity", "format_path", "has_errors", "sort_findings"]

KeyPath = tuple[str | int, ...]


class Severity(enum.IntEnum):
    """How bad a finding is; ordered so that ``max()`` gives the worst."""

    INFO = 10
    WARNING = 20
    ERROR = 30

    @property
    def label(self) -> str:
        """Lowercase name as shown to users and in ``--json``."""
        return self.name.lower()


def format_path(path: KeyPath) -> str:
    """Render a key path as users write it: ``SmtpServer.Users[0].Password``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a check found: severity, a stable code, where, what, and the fix.

    ``row`` is the TROUBLESHOOTING-MAP id (``A3``, ``B2``…) when the finding is one of
    the guide's causes. ``path`` is the key path in the settings, ``line`` the line of
    the config file where that key is (when known).
    """

    severity: Severity
    code: str
    message: str
    fix: str = ""
    path: KeyPath = ()
    line: int | None = None
    row: str | None = None

    @property
    def key(self) -> str:
        """The key path as text (empty when the finding is about the whole file)."""
        return format_path(self.path)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; never holds a secret because messages never do."""
        return {
            "severity": self.severity.label,
            "code": self.code,
            "row": f"JDX-{self.row}" if self.row else None,
            "key": self.key or None,
            "line": self.line,
            "message": self.message,
            "fix": self.fix or None,
        }


def has_errors(findings: Iterable[Finding]) -> bool:
    """True when any of *findings* is an error."""
    return any(f.severity is Severity.ERROR for f in findings)


def sort_findings(findings: Sequence[Finding]) -> list[Finding]:
    """Errors first, then by line, keeping the order of checks otherwise."""
    return sorted(
        findings,
        key=lambda f: (-f.severity, f.line if f.line is not None else 1 << 30),
    )
