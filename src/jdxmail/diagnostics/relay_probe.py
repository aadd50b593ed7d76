"""test-relay and send-test: walk an SMTP session stage by stage and explain the first failure.

Stages: DNS, TCP connect, TLS (implicit), banner, EHLO, TLS (STARTTLS), EHLO after TLS,
AUTH, MAIL FROM, RCPT TO, DATA, QUIT, each timed. The session is spoken by hand (asyncio
streams) rather than through a client library, so that every byte can be attributed to a
stage: a TLS record where a banner should be, silence on an implicit-TLS port, the exact
reply of a provider (rows C1-C7, E2).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import errno
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from jdxmail.client_tls import client_tls_context
from jdxmail.data_encoding import dot_stuffed
from jdxmail.diagnostics.stages import StageResult
from jdxmail.findings import Finding, KeyPath, Severity
from jdxmail.providers import (
    Provider,
    provider_by_key,
    provider_for_banner,
    provider_for_host,
    reply_hint,
    suggest_host,
)
from jdxmail.settings.model import RelaySettings, Settings

__all__ = [
    "SLOW_STAGE_MS",
    "ProbeOptions",
    "ProbeStage",
    "RelayReport",
    "RelayTarget",
    "Resolver",
    "ServerReply",
    "TlsMode",
    "config_targets",
    "describe_certificate",
    "probe_relay",
    "provider_target",
    "sample_message",
    "target_from_relay",
]

#: a stage slower than this gets a latency warning (row E2)
SLOW_STAGE_MS = 2000.0
_MAX_REPLY_LINES = 200

Resolver = Callable[[str, int], Awaitable[list[str]]]


class TlsMode(enum.StrEnum):
    """How the session is encrypted."""

    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    NONE = "none"
    #: STARTTLS when the server offers it, else plain (send-test's default)
    AUTO = "auto"


class ProbeStage(enum.StrEnum):
    """The stages of a session, in order."""

    DNS = "DNS"
    CONNECT = "TCP connect"
    BANNER = "banner"
    EHLO = "EHLO"
    TLS = "TLS"
    EHLO_TLS = "EHLO after TLS"
    AUTH = "AUTH"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    QUIT = "QUIT"


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """Where to connect and how; ``key`` is the config key of the relay (for fixes)."""

    host: str
    port: int
    tls: TlsMode
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    ca_file: Path | None = None
    verify: bool = True
    timeout: float = 15.0
    #: the relay's key path in the config (``RelayServer``), or () for command-line targets
    key: KeyPath = ()
    name: str = ""
    provider: Provider | None = None
    #: a server of this machine (send-test to jdxmail), not a provider: fixes say so
    local: bool = False

    @property
    def label(self) -> str:
        """Name, or ``host:port``."""
        return self.name or f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    """What to try beyond the login."""

    mail_from: str | None = None
    rcpt_to: str | None = None
    send: bool = False
    ehlo_name: str = "jdxmail-test"
    message: bytes | None = None
    slow_ms: float = SLOW_STAGE_MS


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


@dataclass(slots=True)
class RelayReport:
    """The stages run, the findings with fixes, the failing stage and the transcript."""

    target: RelayTarget
    stages: list[StageResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    failed: ProbeStage | None = None
    #: (``C`` or ``S``, line): AUTH secrets masked, message body summarised
    transcript: list[tuple[str, str]] = field(default_factory=list)
    final_reply: str | None = None

    @property
    def ok(self) -> bool:
        """True when no stage failed."""
        return self.failed is None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (never holds a secret)."""
        t = self.target
        return {
            "relay": t.label,
            "host": t.host,
            "port": t.port,
            "tls": t.tls.value,
            "provider": t.provider.key if t.provider else None,
            "ok": self.ok,
            "failed_stage": self.failed.value if self.failed else None,
            "stages": [s.to_json() for s in self.stages],
            "findings": [f.to_json() for f in self.findings],
            "final_reply": self.final_reply,
        }


class _ProtocolError(Exception):
    """The peer sent something that is not an SMTP reply."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data[:80].decode("latin-1"))
        self.data = data


class _Session:
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
        """Read one (possibly multi-line) reply; TimeoutError, _ProtocolError, OSError."""
        lines: list[str] = []
        async with asyncio.timeout(self.timeout):
            while len(lines) < _MAX_REPLY_LINES:
                raw = self.pending + await self.reader.readline()
                self.pending = b""
                if not raw:
                    raise ConnectionResetError(errno.ECONNRESET, "the server closed the connection")
                if len(raw) < 3 or not raw[:3].isdigit():
                    raise _ProtocolError(raw)
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.transcript.append(("S", text))
                lines.append(text[4:])
                if text[3:4] != "-":
                    return ServerReply(int(text[:3]), tuple(lines))
        raise _ProtocolError(b"too many reply lines")

    async def command(self, line: str, shown: str | None = None) -> ServerReply:
        """Send *line* (recorded as *shown* when it holds a secret) and read the reply."""
        self.transcript.append(("C", line if shown is None else shown))
        self.writer.write(line.encode("utf-8") + b"\r\n")
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()
        return await self.reply()


def provider_target(
    spec: str, *, port: int | None = None, tls: TlsMode | None = None
) -> RelayTarget | None:
    """A target for ``--provider gmail`` / ``ses:eu-west-1``… (None for an unknown one)."""
    key, _, region = spec.partition(":")
    provider = provider_by_key(key)
    if provider is None:
        return None
    if provider.key == "ses":
        host = f"email-smtp.{region or 'us-east-1'}.amazonaws.com"
    elif provider.hosts:
        host = provider.hosts[0]
    else:
        return None
    chosen = port or (587 if 587 in provider.ports else next(iter(provider.ports)))
    implicit = provider.ports.get(chosen, False)
    mode = tls or (TlsMode.IMPLICIT if implicit else TlsMode.STARTTLS)
    return RelayTarget(host, chosen, mode, name=provider.label, provider=provider)


def target_from_relay(relay: RelaySettings, key: KeyPath, default_timeout: float) -> RelayTarget:
    """The target for a relay of the config, its TLS mode as jdxmail would use it."""
    if relay.implicit_tls:
        mode = TlsMode.IMPLICIT
    elif relay.use_tls:
        mode = TlsMode.STARTTLS
    else:
        mode = TlsMode.NONE
    return RelayTarget(
        relay.host,
        relay.port,
        mode,
        relay.username,
        relay.password,
        relay.ca_file,
        relay.verify_certificate,
        float(relay.time_out or default_timeout),
        key,
        relay.display_name,
        provider_for_host(relay.host),
    )


def config_targets(settings: Settings, default_timeout: float = 15.0) -> list[RelayTarget]:
    """A target for each relay of *settings*, with its key path (for the findings' fixes)."""
    targets = []
    for index, item in enumerate(settings.relays):
        key = (settings.relay_key,) if settings.relay_server else (settings.relay_key, index)
        targets.append(target_from_relay(item, key, default_timeout))
    return targets


def sample_message(mail_from: str, rcpt_to: str, host: str) -> bytes:
    """A small test message from *mail_from* to *rcpt_to*."""
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = rcpt_to
    message["Subject"] = "jdxmail test message"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="jdxmail.invalid")
    message.set_content(
        f"This is a test message sent by jdxmail through {host}.\n"
        "If you can read it, the server took the message.\n"
    )
    return message.as_bytes()


async def _system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _tls_context(target: RelayTarget) -> ssl.SSLContext:
    """The client TLS context; OSError/ssl.SSLError when the CA file cannot be used."""
    if not target.verify:
        return client_tls_context(verify=False)
    return client_tls_context(target.ca_file)


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _host_name_problem(host: str) -> str | None:
    """Why *host* cannot be a DNS name (checked before any lookup), or None."""
    if not host:
        return "it is empty"
    try:
        ascii_name = host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        return "it cannot be written as a DNS name (IDNA)"
    if len(ascii_name) > 253:
        return "it is longer than 253 characters"
    if not all(_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        return "only letters, digits, '-' and '.' are allowed, in labels of 1 to 63"
    return None


def _looks_like_tls(data: bytes) -> bool:
    """True for the start of a TLS record (handshake or alert, version 3.x)."""
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03


def describe_certificate(der: bytes) -> dict[str, Any]:
    """Subject, issuer, SANs, days to expiry and self-signedness of a DER certificate.

    Used where the ssl module gives no details: an unverified or untrusted certificate.
    Returns {} for bytes that are not a certificate.
    """
    from cryptography import x509  # noqa: PLC0415 - only when a certificate is described

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {}
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [*alt.get_values_for_type(x509.DNSName)]
        sans += [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    remaining = cert.not_valid_after_utc - datetime.now(UTC)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": sans,
        "days_to_expiry": remaining.days,
        "self_signed": cert.issuer == cert.subject,
    }


def _certificate_text(facts: dict[str, Any]) -> str:
    text = f"cert {facts['subject'] or '(no subject)'} issued by {facts['issuer']}"
    if facts.get("self_signed"):
        text += " (self-signed)"
    text += f", SANs {', '.join(facts['sans']) or 'none'}"
    return text + f", {facts['days_to_expiry']} days left"


class _Prober:
    """One probe run: the state shared by the stages."""

    def __init__(self, target: RelayTarget, options: ProbeOptions, resolver: Resolver) -> None:
        self.target = target
        self.options = options
        self.resolver = resolver
        self.report = RelayReport(target)
        self.session: _Session | None = None
        self.provider = target.provider
        self.extensions: dict[str, str] = {}

    # -- helpers --------------------------------------------------------------------

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
            name.value, ok, None if started is None else _ms(started), detail, facts
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
        elif isinstance(exc, _ProtocolError):
            detail = f"not an SMTP reply: {exc.data[:60]!r}"
            fix = "this port does not speak SMTP here: " + self.setting("Port", "587")
            row = "C1"
        else:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            fix = "the server dropped the session; read its log or try again"
            row = "C2"
        self.fail(name, started, detail, detail, fix, "Port", row, "relay.io")

    # -- stages ---------------------------------------------------------------------

    async def run(self) -> RelayReport:
        addresses = await self.dns()
        if addresses is None:
            return self.report
        connected = await self.connect(addresses)
        if connected is None:
            return self.report
        reader, writer = connected
        self.session = _Session(reader, writer, self.target.timeout, self.report.transcript)
        try:
            await self.conversation()
        except asyncio.CancelledError:
            # Ctrl-C or a caller giving up: no polite QUIT (it could wait a full timeout)
            writer.transport.abort()
            raise
        finally:
            if not writer.is_closing():
                await self.quit()
                writer.close()
                try:
                    async with asyncio.timeout(1):
                        await writer.wait_closed()
                except (OSError, TimeoutError, ssl.SSLError):
                    pass
        self.latency()
        return self.report

    async def dns(self) -> list[str] | None:
        host = self.target.host
        started = time.perf_counter()
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            self.stage(ProbeStage.DNS, True, started, f"{host} is an IP address", addresses=[host])
            return [host]
        problem = _host_name_problem(host)
        if problem is not None:
            self.fail(
                ProbeStage.DNS,
                started,
                problem,
                f"{host!r} is not a host name: {problem}",
                self.setting("Host", '"smtp.example.com"'),
                "Host",
                "C1",
                "relay.bad-host",
            )
            return None
        try:
            name = host.rstrip(".").lower()
            if name == "invalid" or name.endswith(".invalid"):
                # RFC 6761 §6.4: resolvers answer names under .invalid negatively at once.
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            async with asyncio.timeout(self.target.timeout):
                addresses = await self.resolver(host, self.target.port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            reason = (
                "no answer from DNS"
                if isinstance(exc, TimeoutError)
                else (getattr(exc, "strerror", None) or str(exc))
            )
            typo = self.typo_fix()
            fix = typo or (
                "check the spelling of Host; if it is right, check this machine's DNS "
                "(`getent hosts " + host + "`)"
            )
            self.fail(
                ProbeStage.DNS,
                started,
                reason,
                f"{host} does not resolve ({reason})",
                fix,
                "Host",
                "C1" if typo else "C2",
                "relay.dns",
            )
            return None
        if not addresses:
            self.fail(
                ProbeStage.DNS,
                started,
                "no addresses",
                f"{host} has no addresses",
                self.typo_fix() or "check Host",
                "Host",
                "C1",
                "relay.dns",
            )
            return None
        self.stage(ProbeStage.DNS, True, started, ", ".join(addresses), addresses=addresses)
        return addresses

    async def connect(
        self, addresses: list[str]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        started = time.perf_counter()
        port = self.target.port
        errors: list[tuple[str, BaseException]] = []
        for address in addresses:
            try:
                async with asyncio.timeout(self.target.timeout):
                    reader, writer = await asyncio.open_connection(address, port)
            except (OSError, TimeoutError) as exc:
                errors.append((address, exc))
                continue
            self.stage(ProbeStage.CONNECT, True, started, f"connected to {address}:{port}")
            return reader, writer
        address, error = errors[0]
        known = ""
        if self.provider is not None:
            ports = ", ".join(
                f"{p} ({'implicit TLS' if tls else 'STARTTLS'})"
                for p, tls in self.provider.ports.items()
            )
            known = f"; {self.provider.label} listens on {ports}"
        typo = self.typo_fix()
        if isinstance(error, ConnectionRefusedError):
            detail = f"connection refused by {address}:{port}"
            message = f"{detail}: nothing listens on that port (wrong Port, or the server is down)"
            fix = typo or self.port_fix(known)
            row = "C1"
        elif isinstance(error, TimeoutError):
            detail = f"no answer from {address}:{port} within {self.target.timeout:g} s"
            message = (
                f"{detail}: a firewall drops the traffic (many networks block port 25 "
                "outwards), or the host is wrong"
            )
            fix = typo or (self.port_fix(known) + "; check the outbound firewall")
            row = "C2"
        elif getattr(error, "errno", None) in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            detail = f"{address} is unreachable: {getattr(error, 'strerror', error)}"
            message = f"{detail}: this machine has no route there (network down, no IPv6?)"
            fix = "check this machine's network connection and routes (`ip route`)"
            row = "C2"
        else:
            detail = f"{address}:{port}: {getattr(error, 'strerror', None) or error}"
            message = detail
            fix = typo or "check Host and Port"
            row = "C2"
        self.fail(ProbeStage.CONNECT, started, detail, message, fix, "Port", row, "relay.connect")
        return None

    async def conversation(self) -> None:
        session = self.session
        assert session is not None
        if self.target.tls is TlsMode.IMPLICIT and not await self.start_tls(implicit=True):
            return
        if not await self.banner():
            return
        if not await self.ehlo(ProbeStage.EHLO):
            return
        mode = self.target.tls
        wants_tls = mode is TlsMode.STARTTLS or (
            mode is TlsMode.AUTO and "STARTTLS" in self.extensions
        )
        if wants_tls:
            if not await self.start_tls(implicit=False):
                return
            if not await self.ehlo(ProbeStage.EHLO_TLS):
                return
        elif mode is not TlsMode.IMPLICIT:
            offered = "STARTTLS" in self.extensions
            self.stage(
                ProbeStage.TLS,
                None,
                None,
                "not used" + (" (the server offers STARTTLS)" if offered else ""),
            )
        if not await self.auth():
            return
        if not await self.envelope():
            return
        await self.data()

    async def banner(self) -> bool:
        session = self.session
        assert session is not None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.target.timeout):
                first = await session.reader.read(2)
                if _looks_like_tls(first):
                    raise _ProtocolError(first)
                session.pending = first
                reply = await session.reply()
        except TimeoutError:
            await self.silent_banner(started)
            return False
        except _ProtocolError as exc:
            if _looks_like_tls(exc.data):
                self.tls_mismatch(started, "the server sent a TLS record instead of a banner")
            else:
                self.io_fail(ProbeStage.BANNER, started, exc)
            return False
        except OSError as exc:
            self.io_fail(ProbeStage.BANNER, started, exc)
            return False
        if self.provider is None:
            self.provider = provider_for_banner(str(reply))
        if reply.code != 220:
            self.reply_fail(ProbeStage.BANNER, started, reply, "the server refused the session")
            return False
        self.stage(ProbeStage.BANNER, True, started, str(reply)[:200])
        return True

    async def silent_banner(self, started: float) -> None:
        """No banner: find out whether the port speaks TLS from the first byte (C3)."""
        if self.target.tls is not TlsMode.IMPLICIT and await self.port_speaks_tls():
            self.tls_mismatch(
                started,
                f"no banner within {self.target.timeout:g} s, but the port completes a TLS "
                "handshake",
            )
            return
        self.fail(
            ProbeStage.BANNER,
            started,
            f"no banner within {self.target.timeout:g} s",
            f"the server accepted the connection but said nothing within {self.target.timeout:g} s",
            "the server is overloaded or this is not an SMTP port; " + self.port_fix(),
            "Port",
            "C2",
            "relay.banner-timeout",
        )

    def tls_mismatch(self, started: float, detail: str) -> None:
        mode = "plain text" if self.target.tls is TlsMode.NONE else "STARTTLS mode"
        key = "Port"
        if self.target.key and self.target.tls is TlsMode.NONE:
            key = "UseTls"
            fix = self.setting("UseTls", "true") + ' and "Port": 465 (jdxmail speaks TLS '
            fix += "from the first byte on 465), or the provider's STARTTLS port 587"
        elif self.target.key:
            fix = self.setting("Port", "465") + " (with UseTls true, jdxmail speaks TLS from "
            fix += "the first byte on 465), or the provider's STARTTLS port 587"
        else:
            fix = "--tls implicit (or use the STARTTLS port 587)"
        self.fail(
            ProbeStage.BANNER,
            started,
            detail,
            f"port {self.target.port} speaks TLS from the first byte (implicit TLS), but "
            f"the session was started in {mode}",
            fix,
            key,
            "C3",
            "relay.tls-mode",
        )

    async def port_speaks_tls(self) -> bool:
        """True when a fresh connection to the port completes a TLS handshake."""
        context = client_tls_context(verify=False)
        try:
            async with asyncio.timeout(self.target.timeout):
                _, writer = await asyncio.open_connection(
                    self.target.host, self.target.port, ssl=context
                )
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        writer.close()
        return True

    async def port_speaks_plain(self) -> str | None:
        """The banner a fresh plain connection gets, or None."""
        try:
            async with asyncio.timeout(self.target.timeout):
                reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
                try:
                    line = await reader.readline()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return None
        text = line.decode("utf-8", "replace").strip()
        return text if text[:3].isdigit() else None

    async def ehlo(self, name: ProbeStage) -> bool:
        session = self.session
        assert session is not None
        started = time.perf_counter()
        try:
            reply = await session.command(f"EHLO {self.options.ehlo_name}")
        except (OSError, TimeoutError, _ProtocolError) as exc:
            self.io_fail(name, started, exc)
            return False
        if reply.code != 250:
            self.reply_fail(name, started, reply, "the server refused EHLO")
            return False
        self.extensions = {}
        for line in reply.lines[1:]:
            word, _, rest = line.partition(" ")
            self.extensions[word.upper()] = rest
        if self.provider is None:
            self.provider = provider_for_banner(reply.lines[0] if reply.lines else "")
        auth = self.extensions.get("AUTH", "")
        detail = (
            ", ".join(
                f"{k} {v}".strip() if k in ("AUTH", "SIZE") else k
                for k, v in self.extensions.items()
            )
            or "no extensions"
        )
        self.stage(name, True, started, detail, extensions=list(self.extensions), auth=auth)
        return True

    async def start_tls(self, *, implicit: bool) -> bool:
        session = self.session
        assert session is not None
        started = time.perf_counter()
        if not implicit:
            if "STARTTLS" not in self.extensions:
                fix = (
                    self.setting("UseTls", "false") + " only if the relay is on a trusted "
                    "network; otherwise use the provider's STARTTLS port 587 or implicit TLS on 465"
                )
                self.fail(
                    ProbeStage.TLS,
                    started,
                    "STARTTLS not offered",
                    "the server does not offer STARTTLS on this port",
                    fix,
                    "UseTls",
                    "C3",
                    "relay.no-starttls",
                )
                return False
            try:
                reply = await session.command("STARTTLS")
            except (OSError, TimeoutError, _ProtocolError) as exc:
                self.io_fail(ProbeStage.TLS, started, exc)
                return False
            if reply.code != 220:
                self.reply_fail(ProbeStage.TLS, started, reply, "the server refused STARTTLS")
                return False
        try:
            context = _tls_context(self.target)
        except (OSError, ssl.SSLError) as exc:
            self.fail(
                ProbeStage.TLS,
                started,
                f"cannot use the CA file: {exc}",
                f"the CA file {self.target.ca_file} cannot be used ({exc})",
                "point CaFile (--ca) at a readable PEM file",
                "CaFile",
                None,
                "relay.ca-file",
            )
            return False
        try:
            async with asyncio.timeout(self.target.timeout):
                await session.writer.start_tls(context, server_hostname=self.target.host)
        except ssl.SSLCertVerificationError as exc:
            await self.cert_fail(started, exc, implicit=implicit)
            return False
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            await self.handshake_fail(started, exc, implicit=implicit)
            return False
        self.tls_success(started, implicit=implicit)
        return True

    async def cert_fail(
        self, started: float, exc: ssl.SSLCertVerificationError, *, implicit: bool
    ) -> None:
        reason = exc.verify_message or str(exc)
        der = await self.fetch_certificate(implicit=implicit)
        facts = describe_certificate(der) if der else {}
        seen = f" ({_certificate_text(facts)})" if facts else ""
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            names = [n for n in facts.get("sans", []) if not n.startswith("*")]
            name = f'"{names[0]}"' if names else '"<a name on the certificate>"'
            fix = "connect by a name the certificate holds: " + self.setting("Host", name)
            row: str | None = "C1"
        elif "expired" in reason.lower():
            fix = "the relay's certificate has expired: tell its operator"
            row = None
        else:
            fix = (
                "if the relay uses a private CA, "
                + self.setting("CaFile", '"/path/to/ca.pem"')
                + "; keep certificate checks on"
            )
            row = None
        result = StageResult(
            ProbeStage.TLS.value, False, _ms(started), f"certificate not trusted: {reason}", facts
        )
        self.report.stages.append(result)
        self.report.failed = self.report.failed or ProbeStage.TLS
        self.finding(
            Severity.ERROR,
            "relay.certificate",
            f"TLS: the certificate of {self.target.host} is not trusted: {reason}{seen}",
            fix,
            "CaFile",
            row,
        )

    async def fetch_certificate(self, *, implicit: bool) -> bytes | None:
        """The server's certificate (DER), from a fresh session that does not verify it."""
        context = client_tls_context(verify=False)
        host, port = self.target.host, self.target.port
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.target.timeout):
                if implicit:
                    _, writer = await asyncio.open_connection(
                        host, port, ssl=context, server_hostname=host
                    )
                else:
                    reader, writer = await asyncio.open_connection(host, port)
                    session = _Session(reader, writer, self.target.timeout, [])
                    await session.reply()
                    await session.command(f"EHLO {self.options.ehlo_name}")
                    if (await session.command("STARTTLS")).code != 220:
                        return None
                    await writer.start_tls(context, server_hostname=host)
                ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
                return ssl_object.getpeercert(binary_form=True) if ssl_object else None
        except (OSError, TimeoutError, ssl.SSLError, _ProtocolError):
            return None
        finally:
            if writer is not None:
                writer.close()

    async def handshake_fail(self, started: float, exc: BaseException, *, implicit: bool) -> None:
        reason = (
            f"no TLS handshake within {self.target.timeout:g} s"
            if isinstance(exc, TimeoutError)
            else (getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc))
        )
        if implicit:
            banner = await self.port_speaks_plain()
            if banner is not None:
                fix = (
                    self.setting("Port", "587") + ' with "UseTls": true (STARTTLS)'
                    if self.target.key
                    else "--tls starttls (or --tls none)"
                )
                self.fail(
                    ProbeStage.TLS,
                    started,
                    f"TLS handshake failed: {reason}",
                    f"port {self.target.port} speaks plain SMTP ({banner[:60]}), not TLS "
                    "from the first byte",
                    fix,
                    "UseTls",
                    "C3",
                    "relay.tls-mode",
                )
                return
        self.fail(
            ProbeStage.TLS,
            started,
            f"TLS handshake failed: {reason}",
            f"TLS handshake failed: {reason}",
            "the server's TLS setup does not fit this client; try the provider's other TLS "
            "port (587 STARTTLS / 465 implicit)",
            "UseTls",
            "C3",
            "relay.tls-handshake",
        )

    def tls_success(self, started: float, *, implicit: bool) -> None:
        session = self.session
        assert session is not None
        ssl_object: ssl.SSLObject | None = session.writer.get_extra_info("ssl_object")
        facts: dict[str, Any] = {"mode": "implicit" if implicit else "STARTTLS"}
        parts = [facts["mode"]]
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            facts["protocol"] = ssl_object.version()
            facts["cipher"] = cipher[0] if cipher else None
            parts.append(f"{facts['protocol']} {facts['cipher']}")
            der = ssl_object.getpeercert(binary_form=True)
            facts.update(describe_certificate(der) if der else {})
            if "subject" in facts:
                parts.append(_certificate_text(facts))
            # with verification on, a completed handshake means both checks passed
            verified = self.target.verify
            facts["hostname_match"] = verified
            facts["chain_verified"] = verified
            parts.append(
                "hostname matches, chain verified"
                if verified
                else "certificate NOT verified (--insecure / VerifyCertificate false)"
            )
            days = facts.get("days_to_expiry")
            if isinstance(days, int) and days < 14:
                self.finding(
                    Severity.WARNING,
                    "relay.cert-expiry",
                    f"the certificate of {self.target.host} expires in {days} days",
                    "tell the relay's operator",
                    "",
                    None,
                )
        self.stage(ProbeStage.TLS, True, started, "; ".join(parts), **facts)

    async def auth(self) -> bool:
        session = self.session
        assert session is not None
        user = self.target.username
        password = self.target.password
        if not user:
            self.stage(ProbeStage.AUTH, None, None, "no Username: not logging in")
            return True
        started = time.perf_counter()
        if password is None:
            self.fail(
                ProbeStage.AUTH,
                started,
                "no password",
                f"Username {user!r} is set but there is no password",
                "set Password, or the password's environment variable, or use --password-stdin",
                "Password",
                None,
                "relay.no-password",
            )
            return False
        offered = self.extensions.get("AUTH", "").upper().split()
        if not offered:
            tls_note = (
                "the server offers AUTH only after TLS: " + self.setting("UseTls", "true")
                if self.target.tls is TlsMode.NONE
                else "this server takes no logins on this port; remove Username, or use the "
                "submission port 587"
            )
            self.fail(
                ProbeStage.AUTH,
                started,
                "no AUTH offered",
                "the server does not offer AUTH here",
                tls_note,
                "UseTls",
                "C3",
                "relay.no-auth",
            )
            return False
        secret = password.get_secret_value()
        try:
            if "PLAIN" in offered:
                mechanism = "PLAIN"
                token = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
                reply = await session.command(f"AUTH PLAIN {token}", "AUTH PLAIN ********")
            elif "LOGIN" in offered:
                mechanism = "LOGIN"
                reply = await session.command("AUTH LOGIN")
                if reply.code == 334:
                    encoded = base64.b64encode(user.encode()).decode()
                    reply = await session.command(encoded, f"{encoded}  (username)")
                if reply.code == 334:
                    token = base64.b64encode(secret.encode()).decode()
                    reply = await session.command(token, "********  (password)")
            else:
                self.fail(
                    ProbeStage.AUTH,
                    started,
                    f"offered: {' '.join(offered)}",
                    f"the server offers only {' '.join(offered)}; jdxmail logs in with "
                    "PLAIN or LOGIN",
                    "use a relay that takes PLAIN or LOGIN over TLS",
                    "Username",
                    None,
                    "relay.auth-mechanism",
                )
                return False
        except (OSError, TimeoutError, _ProtocolError) as exc:
            self.io_fail(ProbeStage.AUTH, started, exc)
            return False
        if reply.code != 235:
            self.reply_fail(ProbeStage.AUTH, started, reply, f"login as {user!r} refused")
            return False
        self.stage(
            ProbeStage.AUTH, True, started, f"{mechanism} as {user}: {reply}", mechanism=mechanism
        )
        return True

    async def envelope(self) -> bool:
        session = self.session
        assert session is not None
        for name, verb, value in (
            (ProbeStage.MAIL, "MAIL FROM", self.options.mail_from),
            (ProbeStage.RCPT, "RCPT TO", self.options.rcpt_to),
        ):
            if value is None:
                self.stage(
                    name,
                    None,
                    None,
                    f"not tried (give {'--from' if name is ProbeStage.MAIL else '--to'})",
                )
                continue
            started = time.perf_counter()
            try:
                reply = await session.command(f"{verb}:<{value}>")
            except (OSError, TimeoutError, _ProtocolError) as exc:
                self.io_fail(name, started, exc)
                return False
            if reply.code not in (250, 251):
                self.reply_fail(name, started, reply, f"{value} refused")
                return False
            self.stage(name, True, started, str(reply))
        return True

    async def data(self) -> None:
        session = self.session
        assert session is not None
        opts = self.options
        if not opts.send or opts.mail_from is None or opts.rcpt_to is None:
            self.stage(ProbeStage.DATA, None, None, "not sent (give --send with --from and --to)")
            return
        started = time.perf_counter()
        body = opts.message or sample_message(opts.mail_from, opts.rcpt_to, self.target.host)
        payload = dot_stuffed(body)
        try:
            reply = await session.command("DATA")
            if reply.code != 354:
                self.reply_fail(ProbeStage.DATA, started, reply, "DATA refused")
                return
            session.transcript.append(("C", f"<message, {len(body)} bytes>"))
            session.transcript.append(("C", "."))
            session.writer.write(payload)
            async with asyncio.timeout(self.target.timeout):
                await session.writer.drain()
            reply = await session.reply()
        except (OSError, TimeoutError, _ProtocolError) as exc:
            self.io_fail(ProbeStage.DATA, started, exc)
            return
        self.report.final_reply = str(reply)
        if reply.code != 250:
            self.reply_fail(ProbeStage.DATA, started, reply, "the message was refused")
            return
        self.stage(ProbeStage.DATA, True, started, str(reply))

    async def quit(self) -> None:
        session = self.session
        if session is None or session.writer.is_closing():
            return
        if self.report.failed in (ProbeStage.BANNER, ProbeStage.TLS):
            return
        started = time.perf_counter()
        try:
            reply = await session.command("QUIT")
        except (OSError, TimeoutError, _ProtocolError, ssl.SSLError):
            if self.report.failed is None:
                self.stage(ProbeStage.QUIT, None, started, "no reply to QUIT (ignored)")
            return
        if self.report.failed is None:
            self.stage(ProbeStage.QUIT, reply.code == 221 or None, started, str(reply))

    def latency(self) -> None:
        slow = [
            s
            for s in self.report.stages
            # a failed stage's time is its failure (a timeout), already reported
            if s.ok is not False
            and s.elapsed_ms is not None
            and s.elapsed_ms > self.options.slow_ms
        ]
        for result in slow:
            seconds = (result.elapsed_ms or 0.0) / 1000
            self.finding(
                Severity.WARNING,
                "relay.slow",
                f"{result.name} took {seconds:.1f} s: the network or the "
                "relay is slow (clients never wait for it: mail is queued first)",
                "if it stays slow, raise TimeOut for this relay or pick a closer relay",
                "TimeOut",
                "E2",
            )


async def probe_relay(
    target: RelayTarget,
    options: ProbeOptions | None = None,
    *,
    resolver: Resolver | None = None,
    report: RelayReport | None = None,
) -> RelayReport:
    """Walk one SMTP session with *target* and report every stage (never raises for
    network trouble: every outcome is in the report).

    Stages are added to *report* (a new one by default) as they finish, so a caller
    that cancels the probe (Ctrl-C) still has what was learnt so far.
    """
    prober = _Prober(target, options or ProbeOptions(), resolver or _system_resolver)
    if report is not None:
        prober.report = report
    return await prober.run()
