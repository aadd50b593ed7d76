"""A small real SMTP upstream for the console tests: refuses or accepts on demand."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Upstream:
    """An SMTP server on 127.0.0.1 (port 0) that answers MAIL with *mail_reply* when set.

    ``received`` holds the recipients of each message it accepted; ``arrived`` is set
    at each one.
    """

    mail_reply: str | None = "451 4.3.0 upstream busy, try later"
    port: int = 0
    received: list[list[str]] = field(default_factory=list)
    #: every connection it took
    connections: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    async def start(self) -> Upstream:
        """Listen on a free loopback port."""
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            self.server = None

    async def wait_for(self, count: int) -> None:
        """Wait until *count* messages were accepted."""
        while len(self.received) < count:
            self.arrived.clear()
            await self.arrived.wait()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        recipients: list[str] = []
        self.connections += 1
        send("220 upstream.test ESMTP")
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                verb = raw.decode("utf-8", "replace").strip().split(" ")[0].upper()
                if verb in ("EHLO", "HELO"):
                    send("250-upstream.test" if verb == "EHLO" else "250 upstream.test")
                    if verb == "EHLO":
                        send("250 8BITMIME")
                elif verb == "MAIL":
                    recipients = []
                    send(self.mail_reply or "250 2.1.0 OK")
                elif verb == "RCPT":
                    address = raw.decode().split(":", 1)[1].strip().strip("<>")
                    recipients.append(address)
                    send("250 2.1.5 OK")
                elif verb == "DATA":
                    send("354 go ahead")
                    await writer.drain()
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    self.received.append(recipients)
                    self.arrived.set()
                    send("250 2.0.0 queued as UP1")
                elif verb == "QUIT":
                    send("221 bye")
                    break
                else:
                    send("250 OK")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def relay_config(
    upstream_port: int,
    name: str = "upstream",
    relay_extra: Mapping[str, object] | None = None,
    **smtp: object,
) -> str:
    """A console config relaying everything not local to 127.0.0.1:*upstream_port*."""

    server = {
        "BindAddress": "127.0.0.1",
        "Port": 2525,
        "HostName": "mx.test",
        "TrustedNetworks": ["127.0.0.0/8"],
        "LocalDomains": ["localhost"],
        **smtp,
    }
    relay = {
        "Name": name,
        "Host": "127.0.0.1",
        "Port": upstream_port,
        "UseTls": False,
        **(relay_extra or {}),
    }
    return json.dumps({"SmtpServer": server, "RelayServers": [relay]}, indent=2)
