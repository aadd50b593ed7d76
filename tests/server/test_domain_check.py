"""Delivery.CheckRecipientDomain: RCPT asks DNS (MX, then A/AAAA) whether a relayed
recipient's domain takes mail, at a DNS server the test runs on loopback."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from jdxmail.settings.model import Settings, parse_resolver
from tests.conftest import BOTH_LOOPS
from tests.server.conftest import Client, StartServer, make_settings, port_of

pytestmark = BOTH_LOOPS  # on uvloop too (serve --loop)

MX, A, AAAA = 15, 1, 28

#: name → record type → rdata of each answer; names absent from it do not exist
ZONE: dict[str, dict[int, list[bytes]]] = {
    "example.net": {MX: [b"\x00\x0a\x02mx\x07example\x03net\x00"]},
    "a-only.test": {A: [bytes([127, 0, 0, 9])]},
    "v6-only.test": {AAAA: [bytes(15) + b"\x01"]},
    "nomail.test": {},  # exists, no MX/A/AAAA
    "nullmx.test": {MX: [b"\x00\x00\x00"]},  # RFC 7505
}


@dataclass
class FakeDns(asyncio.DatagramProtocol):
    """A tiny authoritative DNS server over UDP: answers from ZONE, records questions."""

    questions: list[tuple[str, int]] = field(default_factory=list)
    #: when set, questions are not answered (a resolver that is down)
    silent: bool = False
    #: answers wait until this is set (to show a lookup does not block the server)
    release: asyncio.Event | None = None
    transport: asyncio.DatagramTransport | None = None
    #: set at each question
    asked: asyncio.Event = field(default_factory=asyncio.Event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ident, _, _, _, _, _ = struct.unpack_from("!HHHHHH", data)
        offset, labels = 12, []
        while data[offset]:
            labels.append(data[offset + 1 : offset + 1 + data[offset]].decode())
            offset += 1 + data[offset]
        qtype, _ = struct.unpack_from("!HH", data, offset + 1)
        question = data[12 : offset + 5]
        name = ".".join(labels).lower()
        self.questions.append((name, qtype))
        self.asked.set()
        if self.silent:
            return
        records = ZONE.get(name)
        rcode = 3 if records is None else 0
        answers = (records or {}).get(qtype, [])
        reply = struct.pack("!HHHHHH", ident, 0x8580 | rcode, 1, len(answers), 0, 0) + question
        for rdata in answers:
            reply += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 300, len(rdata)) + rdata
        if self.release is None:
            self.send(reply, addr)
        else:
            asyncio.get_running_loop().create_task(self._later(reply, addr))

    async def _later(self, reply: bytes, addr: Any) -> None:
        assert self.release is not None
        await self.release.wait()
        self.send(reply, addr)

    def send(self, reply: bytes, addr: Any) -> None:
        """Send *reply* to *addr*."""
        assert self.transport is not None
        self.transport.sendto(reply, addr)


@pytest.fixture
async def dns() -> AsyncIterator[tuple[FakeDns, int]]:
    """The fake DNS server on 127.0.0.1 and its port."""
    loop = asyncio.get_running_loop()
    server = FakeDns()
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    yield server, transport.get_extra_info("sockname")[1]
    transport.close()


def checking(tmp_path: Path, dns_port: int, check: bool = True) -> Settings:
    """Settings with one relay and the check on, asking the fake DNS server."""
    settings = make_settings(
        tmp_path,
        TrustedNetworks=["127.0.0.0/8"],
        LocalDomains=["mx.test"],
        RelayServers=[{"Host": "127.0.0.1", "Port": 9, "UseTls": False}],
    )
    delivery = settings.delivery.model_copy(
        update={"check_recipient_domain": check, "dns_resolver": f"127.0.0.1:{dns_port}"}
    )
    return settings.model_copy(update={"delivery": delivery})


async def rcpt(port: int, *addresses: str) -> list[str]:
    """The reply to RCPT TO of each address, in one transaction."""
    client = await Client.connect(port)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<app@example.com>")).startswith("250")
    answers = [await client.cmd(f"RCPT TO:<{a}>") for a in addresses]
    await client.close()
    return answers


async def test_domains_that_take_mail_are_accepted(
    tmp_path: Path,
    start_server: StartServer,
    dns: tuple[FakeDns, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MX, or without MX an A or AAAA record, is enough; local recipients are not looked up."""
    server, port = dns
    app = await start_server(checking(tmp_path, port))
    answers = await rcpt(
        port_of(app), "bob@example.net", "x@a-only.test", "y@v6-only.test", "me@mx.test"
    )
    assert all(a.startswith("250 2.1.5") for a in answers), answers
    asked = {name for name, _ in server.questions}
    assert asked == {"example.net", "a-only.test", "v6-only.test"}
    assert ("example.net", A) not in server.questions  # MX answered it
    assert "not checked" not in caplog.text  # every question had its answer


async def test_typo_of_a_provider_gets_550_with_did_you_mean(
    tmp_path: Path, start_server: StartServer, dns: tuple[FakeDns, int]
) -> None:
    """A domain that does not exist gets 550 5.1.2, with a did-you-mean for a provider typo."""
    _, port = dns
    app = await start_server(checking(tmp_path, port))
    (answer,) = await rcpt(port_of(app), "someone@gmial.com")
    assert answer == (
        "550 5.1.2 Recipient domain gmial.com does not exist; check the address "
        "(did you mean gmail.com?)"
    )


@pytest.mark.parametrize(
    ("domain", "reason"),
    [
        ("nomail.test", "has no MX, A or AAAA record"),
        ("nullmx.test", "takes no mail (null MX)"),
    ],
)
async def test_domain_without_mail_server_gets_550(
    tmp_path: Path,
    start_server: StartServer,
    dns: tuple[FakeDns, int],
    domain: str,
    reason: str,
) -> None:
    """A domain that exists but has no MX, A or AAAA record (or a null MX) gets 550 5.1.2."""
    _, port = dns
    app = await start_server(checking(tmp_path, port))
    (answer,) = await rcpt(port_of(app), f"x@{domain}")
    assert answer == f"550 5.1.2 Recipient domain {domain} {reason}; check the address"


async def test_off_by_default_and_no_question_asked(
    tmp_path: Path, start_server: StartServer, dns: tuple[FakeDns, int]
) -> None:
    """Without CheckRecipientDomain no DNS question is asked and typos are accepted."""
    server, port = dns
    app = await start_server(checking(tmp_path, port, check=False))
    assert (await rcpt(port_of(app), "someone@gmial.com"))[0].startswith("250")
    assert server.questions == []


async def test_dns_down_accepts_and_logs(
    tmp_path: Path,
    start_server: StartServer,
    dns: tuple[FakeDns, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When DNS does not answer the recipient is accepted (the check is for typos, never
    a reason to hold mail up), and the log says it was not checked."""
    server, port = dns
    server.silent = True
    app = await start_server(checking(tmp_path, port))
    (answer,) = await rcpt(port_of(app), "someone@gmial.com")
    assert answer.startswith("250")
    assert "recipient domain gmial.com not checked" in caplog.text


async def test_a_lookup_does_not_hold_up_other_clients(
    tmp_path: Path, start_server: StartServer, dns: tuple[FakeDns, int]
) -> None:
    """While one client's RCPT waits for DNS, another client is served."""
    server, port = dns
    server.release = asyncio.Event()
    app = await start_server(checking(tmp_path, port))
    smtp_port = port_of(app)
    waiting = asyncio.create_task(rcpt(smtp_port, "bob@example.net"))
    await server.asked.wait()
    other = await Client.connect(smtp_port)
    assert await other.ehlo()
    assert await other.cmd("NOOP") == "250 2.0.0 OK"
    await other.close()
    assert not waiting.done()
    server.release.set()
    assert (await waiting)[0].startswith("250")
    server.release = None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:53", ("::1", 53)),
        ("::1", ("::1", 53)),
    ],
)
def test_resolver_address_forms(text: str, expected: tuple[str, int]) -> None:
    """DnsResolver takes an IP with an optional port, IPv6 in brackets or bare."""
    assert parse_resolver(text) == expected


def test_resolver_given_by_name_is_a_config_error() -> None:
    """A resolver given by name is refused with the forms that work."""
    with pytest.raises(ValidationError, match="is not an IP address"):
        Settings.model_validate({"Delivery": {"DnsResolver": "dns.example"}})
