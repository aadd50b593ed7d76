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
    "error_json",
    "fail",
    "json_errors",
    "json_requested",
    "out_console",
    "print_json",
    "render_findings",
    "render_overrides",
    "render_stages",
    "summary_line",
]

out_console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


class _Mode:
    """Whether this run was asked for ``--json`` (then errors go to stdout as JSON too)."""

    json = False


def json_errors(value: bool) -> bool:
    """The ``--json`` option's callback: from now on, errors are also one JSON document.

    Called with False too (the default), so one in-process run never leaks into the next.
    """
    _Mode.json = bool(value)
    return value


def json_requested() -> bool:
    """True when this run was asked for ``--json``."""
    return _Mode.json


def error_json(message: str, fix: str = "", code: int = ExitCode.FAILED) -> dict[str, Any]:
    """The JSON document of an error: the same for every command that takes ``--json``."""
    return {"ok": False, "exit_code": int(code), "error": message, "fix": fix or None}


def fail(message: str, fix: str = "", code: int = ExitCode.FAILED) -> NoReturn:
    """Print ``error: message`` (and the fix) to stderr and exit with *code*.

    With ``--json``, stdout also gets the error as one JSON document (``error_json``).
    """
    text = Text("error: ", style="bold red")
    text.append(message)
    err_console.print(text)
    if fix:
        err_console.print(Text("  fix: ", style="green").append(fix))
    if _Mode.json:
        print_json(error_json(message, fix, code))
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


def render_stages(title: str, stages: Sequence[Any], console: Console | None = None) -> None:
    """Print a staged checklist: ``✓``/``✗``/``-`` per stage, its time and what was seen.

    *stages* are ``jdxmail.diagnostics.stages.StageResult`` values (name, ok,
    elapsed_ms, detail).
    """
    console = console or out_console
    console.print(Text(title, style="bold"))
    width = max((len(s.name) for s in stages), default=0)
    for stage in stages:
        line = Text("  ")
        if stage.ok is True:
            line.append("✓", style="bold green")
        elif stage.ok is False:
            line.append("✗", style="bold red")
        else:
            line.append("-", style="dim")
        line.append(f" {stage.name:<{width}}  ")
        timing = "" if stage.elapsed_ms is None else f"{stage.elapsed_ms:.0f} ms"
        line.append(f"{timing:>8}  ", style="dim")
        line.append(stage.detail, style="red" if stage.ok is False else "")
        console.print(line)


def render_sources(origins: Sequence[dict[str, Any]], console: Console | None = None) -> None:
    """Print every effective value and where it came from (validate-config --sources)."""
    console = console or out_console
    console.print(Text("effective values:", style="bold"))
    for item in origins:
        line = Text(f"  {item['key']}", style="bold")
        line.append(f" = {json.dumps(item['value'], ensure_ascii=False)}")
        if item["origin"] == "file":
            where = f"line {item['line']}" if item.get("line") else "the file"
        elif item["origin"] == "environment":
            where = item["variable"]
        else:
            where = "default"
        line.append(f"  ({where})", style="dim")
        console.print(line)


def render_overrides(overrides: Sequence[dict[str, Any]], console: Console | None = None) -> None:
    """Print the keys the environment set: key, variable, and the file line it replaces."""
    if not overrides:
        return
    console = console or out_console
    console.print(Text("set from the environment:", style="bold"))
    for item in overrides:
        line = Text(f"  {item['key']}", style="bold")
        line.append(f" from {item['variable']}")
        if item["file_line"] is not None:
            line.append(f" (instead of line {item['file_line']})", style="dim")
        console.print(line)
