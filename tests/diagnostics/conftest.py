"""Fake providers for the diagnostics tests: aiosmtpd servers on port 0 that answer as
Gmail, SendGrid and SES do, and raw listeners that misbehave (silent, TLS-only)."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

GMAIL_BAD_PASSWORD = (
    "535 5.7.8 Username and Password not accepted. Learn more at "
    "https://support.google.com/mail/?p=BadCredentials"
)
GMAIL_APP_PASSWORD_REQUIRED = (
    "534 5.7.9 Application-specific password required. Learn more at "
    "https://support.google.com/mail/?p=InvalidSecondFactor"
)
SENDGRID_BAD_LOGIN = "535 Authentication failed: Bad username / password"
SES_BAD_LOGIN = "535 Authentication Credentials Invalid"
OUTLOOK_SEND_AS = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
GOOD_USER = "app@example.com"
GOOD_PASSWORD = "abcd efgh ijkl mnop"


@dataclass
class FakeProvider:
    """A running fake SMTP server: where it listens and what it received."""

    host: str
    port: int
    messages: list[Envelope] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


@dataclass
class ProviderSpec:
    """How a fake provider greets and answers."""

    hostname: str = "smtp.gmail.com"
    ident: str = "ESMTP fake1234 - gsmtp"
    #: "starttls", "implicit" or "none"
    tls: str = "starttls"
    #: the reply to a wrong login (None: aiosmtpd's default)
    auth_failure: str | None = GMAIL_BAD_PASSWORD
    users: dict[str, str] = field(default_factory=lambda: {GOOD_USER: GOOD_PASSWORD})
    #: reply to every MAIL FROM (None: accept)
    mail_reply: str | None = None
    #: reply to every RCPT TO (None: accept)
    rcpt_reply: str | None = None
    queue_reply: str = "250 2.0.0 OK 1700000000 fake-queue-id - gsmtp"
    #: names on the server's certificate (None: localhost, 127.0.0.1, ::1)
    cert_names: tuple[str, ...] | None = None
    #: days until the server's certificate expires (None: the default, years)
    cert_days: int | None = None


class _Handler:
    def __init__(self, spec: ProviderSpec, fake: FakeProvider) -> None:
        self.spec = spec
        self.fake = fake

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.spec.mail_reply is not None:
            return self.spec.mail_reply
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.spec.rcpt_reply is not None:
            return self.spec.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.fake.messages.append(envelope)
        return self.spec.queue_reply


def _authenticator(spec: ProviderSpec, fake: FakeProvider) -> Callable[..., AuthResult]:
    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            user = data.login.decode()
            fake.logins.append(user)
            if spec.users.get(user) == data.password.decode():
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False, message=spec.auth_failure)

    return check


StartProvider = Callable[..., Awaitable[FakeProvider]]


@pytest.fixture
async def fake_provider(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> AsyncIterator[StartProvider]:
    """Start fake providers (``await fake_provider(ProviderSpec(...))``) on 127.0.0.1:0."""
    servers: list[asyncio.Server] = []

    async def start(spec: ProviderSpec | None = None) -> FakeProvider:
        spec = spec or ProviderSpec()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert = server_cert
        if spec.cert_names or spec.cert_days is not None:
            names = spec.cert_names or ("localhost", "127.0.0.1", "::1")
            days = 365 if spec.cert_days is None else spec.cert_days
            not_after = datetime.now(UTC) + timedelta(days=days, hours=12)
            cert = ca.issue_cert(*names, not_after=not_after)
        cert.configure_cert(context)
        fake = FakeProvider("127.0.0.1", 0)
        handler = _Handler(spec, fake)

        def factory() -> SMTP:
            return SMTP(
                handler,
                hostname=spec.hostname,
                ident=spec.ident,
                tls_context=context if spec.tls == "starttls" else None,
                authenticator=_authenticator(spec, fake),
                auth_require_tls=spec.tls == "starttls",
            )

        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            factory, "127.0.0.1", 0, ssl=context if spec.tls == "implicit" else None
        )
        servers.append(server)
        fake.port = server.sockets[0].getsockname()[1]
        return fake

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def silent_listener() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word (a stuck server)."""
    writers: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound but never listening)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@dataclass(frozen=True)
class NetNs:
    """A network namespace made by the test: loopback, a veth with 198.18.0.1/24 (a test
    host of our own, RFC 2544 range), no default route, and an empty nft input chain."""

    name: str
    address: str = "198.18.0.1"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run *args* inside the namespace and return the finished process."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def etc(self) -> Path:
        """``/etc/netns/NAME``: ``ip netns exec`` mounts its files over ``/etc``."""
        return Path("/etc/netns") / self.name

    def hosts(self, entries: dict[str, str]) -> None:
        """Make *entries* (name → address) resolve inside the namespace via its hosts file."""
        lines = ["127.0.0.1 localhost"] + [f"{ip} {name}" for name, ip in entries.items()]
        (self.etc / "hosts").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def drop(self, port: int) -> None:
        """Make the namespace's firewall drop TCP to the veth address on *port*."""
        done = self.run(
            "nft",
            "add",
            "rule",
            "inet",
            "jdxtest",
            "input",
            "ip",
            "daddr",
            self.address,
            "tcp",
            "dport",
            str(port),
            "drop",
        )
        assert done.returncode == 0, done.stderr


_NETNS_COUNT = itertools.count()


@pytest.fixture
def netns() -> Iterator[NetNs]:
    """A network namespace of our own (skipped without root, ip and nft); removed after."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"):
        pytest.skip("needs root, ip and nft")
    namespace = NetNs(f"jdxmail-test-{os.getpid()}-{next(_NETNS_COUNT)}")
    made = subprocess.run(["ip", "netns", "add", namespace.name], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.decode().strip()}")
    try:
        # name lookups inside stay inside: the only DNS server is the namespace's own
        # loopback (where nothing listens), and the hosts file is the test's
        namespace.etc.mkdir(parents=True, exist_ok=True)
        (namespace.etc / "resolv.conf").write_text("nameserver 127.0.0.1\n", encoding="utf-8")
        namespace.hosts({})
        for args in (
            ("ip", "link", "set", "lo", "up"),
            ("ip", "link", "add", "jdx0", "type", "veth", "peer", "name", "jdx1"),
            ("ip", "addr", "add", f"{namespace.address}/24", "dev", "jdx0"),
            ("ip", "link", "set", "jdx0", "up"),
            ("ip", "link", "set", "jdx1", "up"),
            ("nft", "add", "table", "inet", "jdxtest"),
            (
                "nft",
                "add",
                "chain",
                "inet",
                "jdxtest",
                "input",
                "{ type filter hook input priority 0; }",
            ),
        ):
            done = namespace.run(*args)
            assert done.returncode == 0, f"{args}: {done.stderr}"
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "del", namespace.name], capture_output=True, check=False)
        shutil.rmtree(namespace.etc, ignore_errors=True)
