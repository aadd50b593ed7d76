"""The PROXY protocol listener: the client's address comes from the balancer's header."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdxmail.server import proxy
from jdxmail.server.app import SmtpServerApp
from tests.conftest import BOTH_LOOPS

from .conftest import Client, StartServer

pytestmark = BOTH_LOOPS  # on uvloop too (serve --loop)

PROXY_PORT_OPTION = {"proxy_port": 0}


def v1(client: str = "203.0.113.7", port: int = 40000) -> bytes:
    """A PROXY v1 header for *client* (TCP4 or TCP6 by its form)."""
    family = "TCP6" if ":" in client else "TCP4"
    server = "::1" if family == "TCP6" else "127.0.0.1"
    af = socket.AF_INET6 if family == "TCP6" else socket.AF_INET
    written = socket.inet_ntop(af, ipaddress.ip_address(client).packed)  # as proxies write
    return f"PROXY {family} {written} {server} {port} 2525\r\n".encode()


def v2(client: str = "203.0.113.7", port: int = 40000, *, local: bool = False) -> bytes:
    """A PROXY v2 header for *client* (or a LOCAL one), with one TLV after the addresses."""
    if local:
        return proxy.V2_SIGNATURE + b"\x20\x00\x00\x00"
    address = ipaddress.ip_address(client)
    server = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    family = b"\x21" if address.version == 6 else b"\x11"
    body = address.packed + server.packed + struct.pack("!HH", port, 2525)
    body += b"\x04\x00\x03abc"  # a TLV (PP2_TYPE_NOOP): read past, never believed
    return proxy.V2_SIGNATURE + b"\x21" + family + struct.pack("!H", len(body)) + body


def proxy_port(app: SmtpServerApp) -> int:
    """The bound port of *app*'s PROXY listener."""
    return next(a.port for a in app.addresses if a.proxy)


async def proxied(app: SmtpServerApp, header: bytes) -> Client:
    """Connect to the PROXY port, send *header*, read the banner."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(app))
    writer.write(header)
    client = Client(reader, writer)
    code, _ = await client.reply()
    assert code == 220
    return client


async def said_before_closing(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""


# -- the parser ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "client", "version"),
    [
        (v1(), "203.0.113.7", 1),
        (v1("2001:db8::7"), "2001:db8::7", 1),
        (v2(), "203.0.113.7", 2),
        (v2("2001:db8::7"), "2001:db8::7", 2),
    ],
)
def test_parse_names_the_client(header: bytes, client: str, version: int) -> None:
    """v1 and v2 headers over IPv4 and IPv6 give the client's address and port."""
    parsed = proxy.parse(header + b"EHLO x\r\n")
    assert parsed is not None
    assert (parsed.client_ip, parsed.client_port, parsed.version) == (client, 40000, version)
    assert parsed.length == len(header)


@pytest.mark.parametrize("header", [v1(), v2()])
def test_parse_waits_for_a_whole_header(header: bytes) -> None:
    """Every proper prefix of a valid header asks for more bytes instead of guessing."""
    for cut in range(len(header)):
        assert proxy.parse(header[:cut]) is None


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO client\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40000\r\n",
        b"PROXY TCP4 203.0.113.777 127.0.0.1 40000 25\r\n",
        b"PROXY TCP4 2001:db8::1 127.0.0.1 40000 25\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 70000 25\r\n",
        b"PROXY TCP4 203.0.113.7  127.0.0.1 4 25\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 04 25\r\n",
        b"PROXY TCP6 2:01:db8::7 ::1 4 25\r\n",
        b"PROXY TCP6 2001:DB8::7 ::1 4 25\r\n",
        b"PROXY TCP4 203.0.113.007 127.0.0.1 4 25\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 4 25\n",
        b"PROXY " + b"1" * 120,
        proxy.V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),  # version 3
        proxy.V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
        proxy.V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),  # UDP
        proxy.V2_SIGNATURE + b"\x21\x31\x00\x0c" + bytes(12),  # AF_UNIX
        proxy.V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # too short for IPv4
        proxy.V2_SIGNATURE + b"\x21\x11\xff\xff",  # longer than any header accepted
        b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c",
    ],
)
def test_parse_refuses_what_the_spec_does_not_allow(data: bytes) -> None:
    """No header, UNKNOWN, bad addresses, ports, spacing, versions or families: refused."""
    with pytest.raises(proxy.ProxyHeaderError):
        proxy.parse(data)


addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))


@settings(max_examples=300, deadline=None)
@given(client=addresses, port=st.integers(0, 65535), tail=st.binary(max_size=40))
def test_parse_round_trips_every_valid_header(client: str, port: int, tail: bytes) -> None:
    """Any client address and port written by a proxy, v1 or v2, is read back exactly."""
    for header in (v1(client, port), v2(client, port)):
        parsed = proxy.parse(header + tail)
        assert parsed is not None
        assert (parsed.client_ip, parsed.client_port, parsed.length) == (
            str(ipaddress.ip_address(client)),
            port,
            len(header),
        )


@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=300))
def test_parse_never_crashes_on_random_bytes(data: bytes) -> None:
    """Random bytes give a header, a wait for more, or ProxyHeaderError: nothing else."""
    try:
        parsed = proxy.parse(data)
    except proxy.ProxyHeaderError:
        return
    if parsed is not None:
        assert parsed.length <= len(data)


@settings(max_examples=1500, deadline=None)
@given(
    base=st.sampled_from([v1(), v2(), v1("2001:db8::7"), v2("2001:db8::7")]),
    at=st.integers(0, 60),
    byte=st.integers(0, 255),
)
def test_a_mutated_header_is_refused_or_read_as_written(base: bytes, at: int, byte: int) -> None:
    """One changed byte: the header is refused, or what is believed is in the bytes sent."""
    data = bytearray(base)
    data[at % len(data)] = byte
    try:
        parsed = proxy.parse(bytes(data))
    except proxy.ProxyHeaderError:
        return
    if parsed is None or parsed.local:
        return
    packed = ipaddress.ip_address(parsed.client_ip).packed
    assert parsed.client_ip.encode() in data or packed in data


# -- the listener --------------------------------------------------------------------


@pytest.mark.parametrize("header", [v1(), v2()], ids=["v1", "v2"])
async def test_client_address_from_the_header_reaches_received(
    start_server: StartServer, header: bytes, tmp_path: object
) -> None:
    """Mail through the PROXY port names the real client in Received: and the log."""
    app = await start_server(**PROXY_PORT_OPTION)
    client = await proxied(app, header)
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@example.com>")).startswith("250")
    assert (await client.cmd("RCPT TO:<bob@localhost>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    assert (await client.cmd("Subject: hi\r\n\r\nbody\r\n.")).startswith("250")
    await client.close()
    mailbox = app.settings.paths.mailbox / "bob@localhost"
    for _ in range(200):
        stored = list(mailbox.glob("*.eml")) if mailbox.exists() else []
        if stored:
            break
        await asyncio.sleep(0.01)
    text = stored[0].read_text()
    assert "[203.0.113.7]" in text.split("\n\n", 1)[0]
    assert "127.0.0.1" not in text.split("Received:", 1)[1].split("\n", 1)[0]


async def test_trusted_networks_apply_to_the_client_not_the_proxy(
    start_server: StartServer,
) -> None:
    """TrustedNetworks judges the address in the header: the proxy's own does not count."""
    app = await start_server(TrustedNetworks=["203.0.113.0/24"], **PROXY_PORT_OPTION)
    inside = await proxied(app, v1("203.0.113.7"))
    outside = await proxied(app, v1("198.51.100.9"))
    for client in (inside, outside):
        await client.ehlo()
        await client.cmd("MAIL FROM:<a@example.com>")
    assert await inside.cmd("RCPT TO:<x@gmail.com>") == "250 2.1.5 Recipient OK"
    assert (await outside.cmd("RCPT TO:<x@gmail.com>")).startswith("530")
    direct = await Client.connect(next(a.port for a in app.addresses if not a.proxy))
    await direct.ehlo()
    await direct.cmd("MAIL FROM:<a@example.com>")
    assert (await direct.cmd("RCPT TO:<x@gmail.com>")).startswith("530")


async def test_v2_local_is_the_proxys_health_check(start_server: StartServer) -> None:
    """A v2 LOCAL header gets an ordinary session with the proxy's own address."""
    app = await start_server(**PROXY_PORT_OPTION)
    client = await proxied(app, v2(local=True))
    assert (await client.cmd("QUIT")).startswith("221")


@pytest.mark.parametrize(
    "data",
    [b"EHLO client.test\r\n", b"PROXY UNKNOWN\r\n", b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n"],
    ids=["no header", "unknown", "malformed"],
)
async def test_a_connection_without_a_valid_header_is_closed_silently(
    start_server: StartServer, data: bytes
) -> None:
    """No banner, nothing at all, before a valid header: a bad one closes the connection."""
    app = await start_server(**PROXY_PORT_OPTION)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(app))
    writer.write(data)
    assert await said_before_closing(reader) == b""
    writer.close()


async def test_a_proxy_that_stalls_is_closed_after_proxy_timeout(
    start_server: StartServer,
) -> None:
    """Half a header and silence: closed after ProxyTimeout, with no byte sent."""
    app = await start_server(ProxyTimeout=1, **PROXY_PORT_OPTION)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(app))
    writer.write(b"PROXY TCP4 203.0.113.7 ")
    assert await said_before_closing(reader) == b""
    writer.close()


async def test_an_untrusted_proxy_is_not_believed(start_server: StartServer) -> None:
    """A connection from outside TrustedProxies is closed whatever header it sends."""
    app = await start_server(TrustedProxies=["192.0.2.0/24"], **PROXY_PORT_OPTION)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port(app))
    writer.write(v1())
    assert await said_before_closing(reader) == b""
    writer.close()


async def test_the_normal_port_still_serves_direct_clients(start_server: StartServer) -> None:
    """With a PROXY port configured, the plain port needs no header (internal clients)."""
    app = await start_server(**PROXY_PORT_OPTION)
    port = next(a.port for a in app.addresses if not a.proxy and not a.implicit_tls)
    client = await Client.connect(port)
    assert (await client.cmd("QUIT")).startswith("221")
