"""Fixtures for the SMTP server tests: a real server on port 0, a raw SMTP client."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from jdxmail.passwords import HashType, hash_password
from jdxmail.server.app import SmtpServerApp
from jdxmail.settings.model import Settings

StartServer = Callable[..., Awaitable[SmtpServerApp]]

PASSWORD = "password"
USER = "test@example.com"


def user_entry(
    name: str = USER, password: str = PASSWORD, hash_type: HashType = HashType.SHA256, **extra: Any
) -> dict[str, Any]:
    """A Users entry as written in appsettings.json."""
    return {
        "UserName": name,
        "Password": hash_password(password, hash_type),
        "HashType": hash_type.value,
        **extra,
    }


def make_settings(tmp_path: Path, **smtp: Any) -> Settings:
    """Settings with the given SmtpServer keys and every path under *tmp_path*."""
    relays = smtp.pop("RelayServers", None)
    data: dict[str, Any] = {
        "SmtpServer": {"HostName": "mx.test", "BindAddress": "127.0.0.1", **smtp},
        "Paths": {
            "Spool": str(tmp_path / "spool"),
            "Mailbox": str(tmp_path / "mailbox"),
            "Logs": str(tmp_path / "logs"),
        },
    }
    if relays is not None:
        data["RelayServers"] = relays
    return Settings.model_validate(data)


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start a server on 127.0.0.1 port 0 with the given SmtpServer keys; stop it after."""
    apps: list[SmtpServerApp] = []

    async def start(settings: Settings | None = None, **kwargs: Any) -> SmtpServerApp:
        options: dict[str, Any] = {"port": 0, "auth_failure_delay": 0.0, "grace": 2.0}
        for key in (
            "store",
            "self_signed",
            "implicit_tls_port",
            "proxy_port",
            "reload_settings",
            "grace",
        ):
            if key in kwargs:
                options[key] = kwargs.pop(key)
        app = SmtpServerApp(settings or make_settings(tmp_path, **kwargs), **options)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(1.0)


@pytest.fixture
async def spool_server(tmp_path: Path) -> AsyncIterator[Any]:
    """Start a server with the real spool (relays configured, nobody delivering)."""
    apps: list[SmtpServerApp] = []

    async def start(**smtp: Any) -> SmtpServerApp:
        settings = make_settings(
            tmp_path,
            TrustedNetworks=["127.0.0.1/32"],
            RelayServers=[{"Host": "127.0.0.1", "Port": 9, "UseTls": False}],
            **smtp,
        )
        app = SmtpServerApp(settings, port=0, auth_failure_delay=0.0, delivery="none")
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop(1.0)


def port_of(app: SmtpServerApp, implicit_tls: bool = False) -> int:
    """The bound port of *app*'s plain (or implicit-TLS) listener."""
    return next(a.port for a in app.addresses if a.implicit_tls is implicit_tls)


class Client:
    """A raw SMTP client over a real socket, for exact wire-level checks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, port: int, *, tls: ssl.SSLContext | None = None, banner: bool = True
    ) -> Client:
        """Connect to 127.0.0.1:*port* and read the banner."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
        )
        client = cls(reader, writer)
        if banner:
            code, _ = await client.reply()
            assert code == 220
        return client

    async def reply(self) -> tuple[int, list[str]]:
        """Read one (possibly multi-line) reply: its code and its lines' texts."""
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), 10)
            if not raw:
                raise ConnectionError(f"connection closed; lines so far: {lines}")
            assert raw.endswith(b"\r\n"), raw
            text = raw[:-2].decode("utf-8")
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), lines

    async def line(self) -> str:
        """Read one reply and return it as sent (single-line replies)."""
        code, lines = await self.reply()
        return f"{code} {lines[-1]}".rstrip() if lines[-1] else f"{code} "

    def send(self, data: str | bytes) -> None:
        """Write raw bytes (str is encoded as UTF-8) without adding anything."""
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def cmd(self, line: str) -> str:
        """Send one command line (CRLF added) and return the reply line."""
        self.send(line + "\r\n")
        return await self.line()

    async def ehlo(self, name: str = "client.test") -> list[str]:
        """EHLO and return the keyword lines."""
        self.send(f"EHLO {name}\r\n")
        code, lines = await self.reply()
        assert code == 250
        return lines[1:]

    async def closed(self) -> bool:
        """True when the server closed the connection (EOF) with nothing more to read."""
        data = await asyncio.wait_for(self.reader.read(), 10)
        return data == b""

    async def starttls(self, context: ssl.SSLContext) -> None:
        """STARTTLS and the TLS handshake."""
        assert await self.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        await self.writer.start_tls(context, server_hostname="localhost")

    async def close(self) -> None:
        """Close the socket."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A client SSL context that trusts the test CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def tls_keys(tmp_path: Path, server_cert: trustme.LeafCert) -> dict[str, str]:
    """SmtpServer.Tls keys pointing at the trustme server certificate."""
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    for extra in server_cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    server_cert.private_key_pem.write_to_path(str(key))
    return {"CertFile": str(cert), "KeyFile": str(key)}
