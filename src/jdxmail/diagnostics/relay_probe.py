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
import errno
import ipaddress
import re
import socket
import ssl
import time

from jdxmail.data_encoding import dot_stuffed
from jdxmail.diagnostics.relay_session import ProbeSession, ProtocolError, Resolver, ServerReply
from jdxmail.diagnostics.relay_target import (
    SLOW_STAGE_MS,
    ProbeOptions,
    ProbeStage,
    RelayReport,
    RelayTarget,
    TlsMode,
    config_targets,
    provider_target,
    sample_message,
    target_from_relay,
)
from jdxmail.diagnostics.relay_tls import TlsStages, describe_certificate, looks_like_tls
from jdxmail.findings import Severity
from jdxmail.providers import provider_for_banner

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


async def _system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


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


class _Prober(TlsStages):
    """One probe run: the stages in order."""

    async def run(self) -> RelayReport:
        addresses = await self.dns()
        if addresses is None:
            return self.report
        connected = await self.connect(addresses)
        if connected is None:
            return self.report
        reader, writer = connected
        self.session = ProbeSession(reader, writer, self.target.timeout, self.report.transcript)
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
            self.dns_fail(started, exc)
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

    def dns_fail(self, started: float, exc: BaseException) -> None:
        """The host name did not resolve: why, and the likely fix (a typo, or local DNS)."""
        host = self.target.host
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
                if looks_like_tls(first):
                    raise ProtocolError(first)
                session.pending = first
                reply = await session.reply()
        except TimeoutError:
            await self.silent_banner(started)
            return False
        except ProtocolError as exc:
            if looks_like_tls(exc.data):
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

    async def ehlo(self, name: ProbeStage) -> bool:
        session = self.session
        assert session is not None
        started = time.perf_counter()
        try:
            reply = await session.command(f"EHLO {self.options.ehlo_name}")
        except (OSError, TimeoutError, ProtocolError) as exc:
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
            self.no_auth_fail(started)
            return False
        mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
        if mechanism is None:
            self.fail(
                ProbeStage.AUTH,
                started,
                f"offered: {' '.join(offered)}",
                f"the server offers only {' '.join(offered)}; jdxmail logs in with PLAIN or LOGIN",
                "use a relay that takes PLAIN or LOGIN over TLS",
                "Username",
                None,
                "relay.auth-mechanism",
            )
            return False
        try:
            reply = await self.log_in(mechanism, user, password.get_secret_value())
        except (OSError, TimeoutError, ProtocolError) as exc:
            self.io_fail(ProbeStage.AUTH, started, exc)
            return False
        if reply.code != 235:
            self.reply_fail(ProbeStage.AUTH, started, reply, f"login as {user!r} refused")
            return False
        self.stage(
            ProbeStage.AUTH, True, started, f"{mechanism} as {user}: {reply}", mechanism=mechanism
        )
        return True

    def no_auth_fail(self, started: float) -> None:
        """The server offers no AUTH: after TLS only, or not on this port at all."""
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

    async def log_in(self, mechanism: str, user: str, secret: str) -> ServerReply:
        """AUTH PLAIN or LOGIN as *user*; the last reply (the transcript masks secrets)."""
        session = self.session
        assert session is not None
        if mechanism == "PLAIN":
            token = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
            return await session.command(f"AUTH PLAIN {token}", "AUTH PLAIN ********")
        reply = await session.command("AUTH LOGIN")
        if reply.code == 334:
            encoded = base64.b64encode(user.encode()).decode()
            reply = await session.command(encoded, f"{encoded}  (username)")
        if reply.code == 334:
            token = base64.b64encode(secret.encode()).decode()
            reply = await session.command(token, "********  (password)")
        return reply

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
            except (OSError, TimeoutError, ProtocolError) as exc:
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
        except (OSError, TimeoutError, ProtocolError) as exc:
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
        except (OSError, TimeoutError, ProtocolError, ssl.SSLError):
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
