"""The hand-driven SMTP session of a relay probe, and how its stages report.

:class:`ProbeSession` reads replies and sends commands, recording a masked
transcript; :class:`ProberBase` holds one run's state and the helpers every stage
uses to record its result and a finding with a fix.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jdxmail.diagnostics.relay_target import ProbeOptions, ProbeStage, RelayReport, RelayTarget
from jdxmail.diagnostics.stages import StageResult
from jdxmail.findings import Finding, KeyPath, Severity
from jdxmail.providers import reply_hint, suggest_host

__all__ = ["ProbeSession", "ProberBase", "ProtocolError", "Resolver", "ServerReply", "elapsed_ms"]


_MAX_REPLY_LINES = 200

Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class ServerReply:
    """One SMTP reply: code and text lines."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """All lines joined with spaces, without the code."""
        return " ".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class ProtocolError(Exception):
    """The peer sent something that is not an SMTP reply."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data[:80].decode("latin-1"))
        self.data = data


class ProbeSession:
    """A hand-driven SMTP conversation that records a masked transcript."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float,
        transcript: list[tuple[str, str]],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.transcript = transcript
        #: bytes read ahead (the first bytes, peeked at to spot a TLS record)
        self.pending = b""

    async def reply(self) -> ServerReply:
        """Read one (possibly multi-line) reply; TimeoutError, ProtocolError, OSError."""
        lines: list[str] = []
        async with asyncio.timeout(self.timeout):
            while len(lines) < _MAX_REPLY_LINES:
                raw = self.pending + await self.reader.readline()
                self.pending = b""
                if not raw:
                    raise ConnectionResetError(errno.ECONNRESET, "the server closed the connection")
                if len(raw) < 3 or not raw[:3].isdigit():
                    raise ProtocolError(raw)
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.transcript.append(("S", text))
                lines.append(text[4:])
                if text[3:4] != "-":
                    return ServerReply(int(text[:3]), tuple(lines))
        raise ProtocolError(b"too many reply lines")

    async def command(self, line: str, shown: str | None = None) -> ServerReply:
        """Send *line* (recorded as *shown* when it holds a secret) and read the reply."""
        if "\r" in line or "\n" in line or "\0" in line:  # (one command per line, always)
            raise ValueError("an SMTP command may not hold CR, LF or NUL")
        self.transcript.append(("C", line if shown is None else shown))
        self.writer.write(line.encode("utf-8") + b"\r\n")
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()
        return await self.reply()


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class ProberBase:
    """One probe run: the state shared by the stages, and how they report."""

    def __init__(self, target: RelayTarget, options: ProbeOptions, resolver: Resolver) -> None:
        self.target = target
        self.options = options
        self.resolver = resolver
        self.report = RelayReport(target)
        self.session: ProbeSession | None = None
        self.provider = target.provider
        self.extensions: dict[str, str] = {}

    def setting(self, key: str, value: str) -> str:
        """How to set *key* to *value*: a config key, or a command-line flag."""
        if self.target.key:
            path = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in self.target.key)
            path = path.replace(".[", "[")
            return f'"{key}": {value} ({path}.{key})'
        if key == "UseTls":
            return "--tls starttls" if value == "true" else "--tls none"
        flags = {"Port": "--port", "Host": "--host", "CaFile": "--ca"}
        return f"{flags.get(key, key)} {value}"

    def stage(
        self, name: ProbeStage, ok: bool | None, started: float | None, detail: str, **facts: Any
    ) -> StageResult:
        result = StageResult(
            name.value, ok, None if started is None else elapsed_ms(started), detail, facts
        )
        self.report.stages.append(result)
        if ok is False and self.report.failed is None:
            self.report.failed = name
        return result

    def finding(
        self, severity: Severity, code: str, message: str, fix: str, key: str, row: str | None
    ) -> None:
        path: KeyPath = (*self.target.key, key) if self.target.key and key else ()
        self.report.findings.append(Finding(severity, code, message, fix, path, row=row))

    def fail(
        self,
        name: ProbeStage,
        started: float,
        detail: str,
        message: str,
        fix: str,
        key: str,
        row: str | None,
        code: str,
    ) -> None:
        self.stage(name, False, started, detail)
        self.finding(Severity.ERROR, code, f"{name.value}: {message}", fix, key, row)

    def port_fix(self, known: str = "") -> str:
        """What to change when nothing SMTP answers on the port (never the port it is)."""
        if self.target.local:
            return (
                "start the server (`jdxmail serve`) and check its log, or give the address "
                "it listens on with --host HOST --port PORT"
            )
        if self.target.port == 587:
            return "check Host, and whether the server is up (587 is the submission port)" + known
        if not self.target.key:  # the port was given on the command line: say it back
            return (
                f"check that the server is up and listens on port {self.target.port}, or "
                "try the submission port: --port 587" + known
            )
        return self.setting("Port", "587") + " (the submission port)" + known

    def typo_fix(self) -> str:
        typo = suggest_host(self.target.host)
        return f"did you mean {typo!r}? " + self.setting("Host", f'"{typo}"') if typo else ""

    def reply_fail(self, name: ProbeStage, started: float, reply: ServerReply, what: str) -> None:
        hint = reply_hint(self.provider, name.name, reply.code, str(reply), self.target.username)
        if hint is not None:
            self.fail(
                name,
                started,
                str(reply),
                f"{what}: {reply} — {hint.meaning}",
                hint.fix,
                "Password" if name is ProbeStage.AUTH else "",
                hint.row,
                "relay.reply",
            )
            return
        fix = {
            ProbeStage.AUTH: "check Username and Password (or the password's environment variable)",
            ProbeStage.MAIL: "use a sender address the relay account may send as",
            ProbeStage.RCPT: "check the recipient address; the relay may not relay for this "
            "account without AUTH",
            ProbeStage.DATA: "read the server's reply above; the message was not accepted",
        }.get(name, "read the server's reply above")
        key = "Username" if name is ProbeStage.AUTH else ""
        self.fail(name, started, str(reply), f"{what}: {reply}", fix, key, None, "relay.reply")

    def io_fail(self, name: ProbeStage, started: float, exc: BaseException) -> None:
        if isinstance(exc, TimeoutError):
            detail = f"no reply within {self.target.timeout:g} s"
            fix = "the server or the network is slow or stuck; raise TimeOut, or try later"
            row = "E2"
        elif isinstance(exc, ProtocolError):
            detail = f"not an SMTP reply: {exc.data[:60]!r}"
            fix = "this port does not speak SMTP here: " + self.setting("Port", "587")
            row = "C1"
        else:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            fix = "the server dropped the session; read its log or try again"
            row = "C2"
        self.fail(name, started, detail, detail, fix, "Port", row, "relay.io")
