"""Upstream relays for the delivery tests: aiosmtpd servers on port 0 in the test loop.

Each upstream records what it received and can be told to refuse: per-recipient
replies, a reply to MAIL or DATA (optionally only the first N times), AUTH users,
STARTTLS or implicit TLS with a trustme certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from jdxmail.queue.spool import AcceptedMessage, Spool
from jdxmail.queue.state import DeliveryState
from jdxmail.queue.worker import DeliveryEngine, DeliveryOptions
from jdxmail.settings.model import PathSettings, RelaySettings, Settings, SmtpServerSettings

RELAY_USER = "app@example.com"
RELAY_PASSWORD = "s3cret-relay-pw"


@dataclass
class Received:
    """One message an upstream accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    tls: bool


@dataclass
class UpstreamSpec:
    """How a fake upstream answers."""

    #: "none", "starttls" or "implicit"
    tls: str = "none"
    users: dict[str, str] | None = None
    #: mechanisms not offered (e.g. ["PLAIN"] for an Outlook-like server)
    exclude_auth: list[str] = field(default_factory=list)
    #: recipient → reply (e.g. "550 5.1.1 no such user")
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    data_reply: str | None = None
    #: how many times data_reply/mail_reply is given before accepting (None: always)
    refusals: int | None = None
    cert: trustme.LeafCert | None = None
    #: offer PIPELINING (RFC 2920) in the EHLO reply
    pipelining: bool = False
    #: offer 8BITMIME (RFC 6152) in the EHLO reply (aiosmtpd does by default)
    eight_bit_mime: bool = True


@dataclass
class Upstream:
    """A running fake relay: its port, and what it saw."""

    host: str
    port: int
    spec: UpstreamSpec
    received: list[Received] = field(default_factory=list)
    mechanisms: list[str] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    refused: int = 0
    sessions: list[SMTP] = field(default_factory=list)
    #: transactions whose RCPT and DATA had arrived already when MAIL was handled
    pipelined: int = 0
    #: messages whose end of data came with the next message's MAIL (RFC 2920 §3.1)
    chained: int = 0

    def recipients(self) -> list[str]:
        """Every recipient of every received message, in order."""
        return [r for m in self.received for r in m.rcpt_tos]

    async def wait_for(self, count: int) -> None:
        """Wait until *count* messages have arrived."""
        while len(self.received) < count:
            self.arrived.clear()
            await self.arrived.wait()

    async def close(self) -> None:
        """Stop listening and drop the sessions."""
        if self.server is not None:
            self.server.close()
            for session in self.sessions:
                transport = session.transport
                if isinstance(transport, asyncio.WriteTransport):
                    transport.abort()
            await self.server.wait_closed()
            self.server = None


class _Handler:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def _refuse(self, reply: str | None) -> str | None:
        spec = self.upstream.spec
        if reply is None:
            return None
        if spec.refusals is not None and self.upstream.refused >= spec.refusals:
            return None
        self.upstream.refused += 1
        return reply

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.upstream.spec.pipelining:
            responses.insert(-1, "250-PIPELINING")
        if not self.upstream.spec.eight_bit_mime:
            responses = [r for r in responses if r[4:].upper() != "8BITMIME"]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        waiting = getattr(getattr(server, "_reader", None), "_buffer", b"")
        if b"DATA\r\n" in bytes(waiting):
            self.upstream.pipelined += 1
        refusal = self._refuse(self.upstream.spec.mail_reply)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.upstream.spec.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        waiting = getattr(getattr(server, "_reader", None), "_buffer", b"")
        if bytes(waiting).upper().startswith(b"MAIL FROM:"):
            self.upstream.chained += 1
        refusal = self._refuse(self.upstream.spec.data_reply)
        if refusal:
            return refusal
        content = envelope.original_content or b""
        self.upstream.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=content,
                mail_options=list(envelope.mail_options),
                tls=session.ssl is not None
                or (
                    server.transport is not None
                    and server.transport.get_extra_info("ssl_object") is not None
                ),
            )
        )
        self.upstream.arrived.set()
        return f"250 2.0.0 Ok: queued as UP{len(self.upstream.received):04d}"


StartUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
def upstream_pipelining() -> bool:
    """Whether every fake upstream offers PIPELINING (tests parametrize this name)."""
    return False


@pytest.fixture
async def upstream_factory(
    server_cert: trustme.LeafCert, upstream_pipelining: bool
) -> AsyncIterator[StartUpstream]:
    """Start fake upstreams on 127.0.0.1, port 0; all are closed after the test."""
    started: list[Upstream] = []

    async def start(
        spec: UpstreamSpec | None = None, port: int = 0, host: str = "127.0.0.1"
    ) -> Upstream:
        spec = spec or UpstreamSpec()
        spec.pipelining = spec.pipelining or upstream_pipelining
        cert = spec.cert or server_cert
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        upstream = Upstream(host, 0, spec)
        handler = _Handler(upstream)

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            upstream.mechanisms.append(mechanism)
            users = spec.users or {}
            if isinstance(data, LoginPassword):
                user, password = data.login.decode(), data.password.decode()
                if users.get(user) == password:
                    return AuthResult(success=True)
            return AuthResult(success=False, handled=False)

        def factory() -> SMTP:
            upstream.connections += 1
            kwargs: dict[str, Any] = {"hostname": "upstream.test"}
            if spec.tls == "starttls":
                kwargs["tls_context"] = context
            if spec.users is not None:
                kwargs["authenticator"] = authenticator
                kwargs["auth_require_tls"] = False
                kwargs["auth_exclude_mechanism"] = spec.exclude_auth
            smtp = SMTP(handler, **kwargs)
            upstream.sessions.append(smtp)
            return smtp

        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            factory, host, port, ssl=context if spec.tls == "implicit" else None
        )
        upstream.server = server
        upstream.port = server.sockets[0].getsockname()[1]
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.close()


@dataclass
class UpstreamStub:
    """Where a relay listens, for servers that are not an Upstream (silent ones)."""

    host: str
    port: int
    spec: UpstreamSpec = field(default_factory=UpstreamSpec)


def relay_for(
    upstream: Upstream | UpstreamStub,
    *,
    name: str | None = None,
    ca_file: Path | None = None,
    login: bool = False,
    **extra: Any,
) -> RelaySettings:
    """RelaySettings pointing at *upstream* (TLS mode from its spec)."""
    values: dict[str, Any] = {
        "name": name,
        "host": upstream.host,
        "port": upstream.port,
        "use_tls": upstream.spec.tls != "none",
        "ca_file": ca_file,
        "time_out": 5,
    }
    if login:
        values["username"] = RELAY_USER
        values["password"] = SecretStr(RELAY_PASSWORD)
    values.update(extra)
    return RelaySettings(**values)


def settings_for(tmp_path: Path, *relays: RelaySettings) -> Settings:
    """Settings with *relays*, spool and mailboxes under *tmp_path*."""
    return Settings(
        smtp_server=SmtpServerSettings(host_name="jdx.test", local_domains=["jdx.test"]),
        relay_servers=list(relays),
        paths=PathSettings(spool=tmp_path / "spool", mailbox=tmp_path / "mailbox"),
    )


def message(
    n: int = 1,
    *,
    sender: str = "alice@example.com",
    to: tuple[str, ...] = ("bob@example.net",),
    body: bytes = b"Hello from jdxmail.\r\n",
    options: tuple[str, ...] = (),
) -> AcceptedMessage:
    """A message as serve would store it."""
    data = (
        f"From: <{sender}>\r\nTo: <{to[0]}>\r\nSubject: test {n}\r\n"
        f"Message-ID: <m{n}@jdx.test>\r\n\r\n"
    ).encode() + body
    return AcceptedMessage(
        mail_from=sender,
        relay_recipients=to,
        local_recipients=(),
        data=data,
        message_id=f"m{n}@jdx.test",
        auth_user=None,
        client_address="127.0.0.1",
        session_id=f"s{n}",
        received_at=time.time(),
        mail_options=options,
    )


@dataclass
class Running:
    """An open spool with a started engine."""

    spool: Spool
    engine: DeliveryEngine


RunEngine = Callable[..., Awaitable[Running]]


@pytest.fixture
async def run_engine(tmp_path: Path) -> AsyncIterator[RunEngine]:
    """Open a spool and start a DeliveryEngine for given settings; stopped after."""
    running: list[Running] = []

    async def run(
        settings: Settings, options: DeliveryOptions | None = None, **kwargs: Any
    ) -> Running:
        spool = Spool(settings.paths.spool, settings.paths.mailbox)
        await spool.open()
        engine = DeliveryEngine(settings, spool, options=options, **kwargs)
        await engine.start()
        item = Running(spool, engine)
        running.append(item)
        return item

    yield run
    for item in running:
        await item.engine.stop(1.0)
        await item.spool.close()


# -- shared by the delivery tests ------------------------------------------------

#: run a test against an upstream without and with PIPELINING (two code paths)
BOTH_WAYS = pytest.mark.parametrize(
    "upstream_pipelining", [False, True], ids=["serial", "pipelined"]
)


def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    """The test CA written to a PEM file, as a user's CaFile."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@contextlib.asynccontextmanager
async def raw_upstream(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    *,
    time_out: int,
) -> AsyncIterator[RelaySettings]:
    """A relay pointing at a bare asyncio server running *handler* (for relays that
    misbehave in ways aiosmtpd will not)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield relay_for(UpstreamStub("127.0.0.1", port), time_out=time_out)
    finally:
        server.close()


@contextlib.asynccontextmanager
async def silent_upstream() -> AsyncIterator[tuple[RelaySettings, asyncio.Event]]:
    """A relay (TimeOut 30 s) that takes connections and never says a word; the event
    is set once one is made."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()
        writer.close()

    async with raw_upstream(silent, time_out=30) as relay:
        yield relay, accepted


def state_of(spool_dir: Path, queue_id: str) -> DeliveryState:
    """The delivery state on disk of *queue_id*."""
    data = json.loads((spool_dir / "state" / f"{queue_id}.json").read_text())
    return DeliveryState.from_json(data, ())


def parse(data: bytes) -> EmailMessage:
    """Parse a received message."""
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed
