"""Output shared by every command: findings, errors, JSON. The only place that prints."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from jdxmail.cli.exitcodes import ExitCode
from jdxmail.findings import Finding, Severity, sort_findings

__all__ = [
    "err_console",
    "fail",
    "out_console",
    "print_json",
    "render_findings",
    "summary_line",
]

out_console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def fail(message: str, fix: str = "", code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """Print ``error: message`` (and the fix) to stderr and exit with *code*."""
    text = Text("error: ", style="bold red")
    text.append(message)
    err_console.print(text)
    if fix:
        err_console.print(Text("  fix: ", style="green").append(fix))
    raise typer.Exit(int(code))


def print_json(data: Any) -> None:
    """Write *data* as indented JSON to stdout (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def summary_line(findings: Sequence[Finding]) -> str:
    """``2 errors, 1 warning, 3 notes`` (or ``no problems found``)."""
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    parts = []
    for severity, word in (
        (Severity.ERROR, "error"),
        (Severity.WARNING, "warning"),
        (Severity.INFO, "note"),
    ):
        if counts[severity]:
            parts.append(f"{counts[severity]} {word}{'s' if counts[severity] > 1 else ''}")
    return ", ".join(parts) if parts else "no problems found"


def render_findings(
    title: str, findings: Sequence[Finding], console: Console | None = None
) -> None:
    """Print *findings*, errors first, each with where it is, what is wrong and the fix."""
    console = console or out_console
    console.print(Text(f"{title}: {summary_line(findings)}", style="bold"))
    for finding in sort_findings(findings):
        head = Text()
        head.append(f"{finding.severity.label.upper():7}", style=_STYLE[finding.severity])
        if finding.key:
            head.append(" " + finding.key, style="bold")
        if finding.line is not None:
            head.append(f" (line {finding.line})", style="dim")
        if finding.row:
            head.append(f" [JDX-{finding.row}]", style="dim")
        console.print(head)
        console.print(Text("  " + finding.message))
        if finding.fix:
            console.print(Text("  fix: ", style="green").append(finding.fix))
