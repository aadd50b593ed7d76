"""Hostile and broken clients: NUL bytes, endless lines, slow clients, bad AUTH data."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import logging
import socket
from pathlib import Path

import pytest

import jdxmail.server.app as app_module
from jdxmail.server.app import SmtpServerApp
from jdxmail.server.errors import BindError
from tests.conftest import BOTH_LOOPS
from tests.server.conftest import Client, StartServer, make_settings, port_of, user_entry
from tests.server.test_data import RecordingStore, open_data
from tests.server.test_lifecycle import run_serve

pytestmark = BOTH_LOOPS  # on uvloop too (serve --loop)

NUL_REFUSED = "550 5.6.0 Message contains a NUL byte (not allowed in mail, RFC 5321 2.3.8)"


async def test_nul_byte_in_data_is_refused_by_default(start_server: StartServer) -> None:
    """A message with a NUL byte gets 550 5.6.0, is not stored, and the session goes on."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    client.send("Subject: x\r\n\r\nbefore\r\n\x00.\r\nafter\r\n.\r\n")
    assert await client.line() == NUL_REFUSED
    assert store.messages == []
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


async def test_nul_bytes_are_stripped_when_configured(start_server: StartServer) -> None:
    """With NulBytes "Strip" the message is stored without its NUL bytes."""
    store = RecordingStore()
    app = await start_server(store=store, NulBytes="Strip")
    client = await Client.connect(port_of(app))
    await open_data(client)
    client.send("Subject: x\r\n\r\nhel\x00lo\r\n\x00.\r\n..dot\r\n.\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as Q1")
    data = store.messages[0].data
    assert b"\x00" not in data
    # The line "\0." was not dot-stuffed: it stays a line holding one dot.
    assert data.endswith(b"\r\n\r\nhello\r\n.\r\n.dot\r\n")


@pytest.mark.parametrize("mode", ["Reject", "Strip"])
async def test_nul_never_reaches_a_local_mailbox(
    start_server: StartServer, tmp_path: Path, mode: str
) -> None:
    """A local mailbox never gets a file holding a NUL byte, in either mode."""
    app = await start_server(NulBytes=mode)
    client = await Client.connect(port_of(app))
    await open_data(client, rcpt="dev@localhost")
    client.send("Subject: nul\r\n\r\nbody\x00\r\n.\r\n")
    reply = await client.line()
    files = list((tmp_path / "mailbox").rglob("*.eml"))
    if mode == "Reject":
        assert reply == NUL_REFUSED
        assert files == []
    else:
        assert reply.startswith("250 ")
        assert len(files) == 1
        assert b"\x00" not in files[0].read_bytes()


LINE_TOO_LONG = "500 5.5.6 Line too long (limit 512 bytes)"


async def test_endless_command_line_is_answered_while_it_streams(
    start_server: StartServer,
) -> None:
    """10 MB without CRLF gets 500 5.5.6 before the line ends; after its CRLF the session goes on."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    chunk = b"A" * 65536
    sent = 0

    async def stream() -> None:
        nonlocal sent
        while sent < 10 * 1024 * 1024:
            client.send(chunk)
            await client.writer.drain()
            sent += len(chunk)

    streaming = asyncio.create_task(stream())
    assert await client.line() == LINE_TOO_LONG
    await streaming
    # The rest of the long line is discarded up to its CRLF without another reply.
    client.send(b"QUIT\r\n")
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


async def hung_up(client: Client) -> bool:
    """True once the server closed the connection (a reset counts: the trickler may
    have sent a byte after the close)."""
    try:
        return await client.closed()
    except ConnectionResetError:
        return True


async def trickle(client: Client, data: bytes, every: float = 0.2) -> None:
    """Send *data* one byte at a time, *every* seconds, until done or the server hangs up."""
    for byte in data:
        if client.writer.is_closing() or client.reader.at_eof():
            return
        client.send(bytes([byte]))
        try:
            await client.writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)


async def test_command_line_trickled_byte_by_byte_times_out(start_server: StartServer) -> None:
    """A command line that is not complete within TimeOut gets 421 4.4.2 however it trickles."""
    app = await start_server(TimeOut=1)
    client = await Client.connect(port_of(app))
    sender = asyncio.create_task(trickle(client, b"NOOP" * 100))
    assert await client.line() == (
        "421 4.4.2 mx.test Timeout waiting for a command, closing connection"
    )
    sender.cancel()
    assert await hung_up(client)
    assert app.session_count == 0


async def test_data_trickled_below_the_minimum_rate_times_out(start_server: StartServer) -> None:
    """DATA arriving slower than the minimum rate gets 421 4.4.2 once its deadline passes."""
    store = RecordingStore()
    app = await start_server(TimeOut=1, store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    sender = asyncio.create_task(trickle(client, b"Subject: slow\r\n\r\n" + b"x" * 500))
    assert await client.line() == (
        "421 4.4.2 mx.test Message data arriving too slowly, closing connection"
    )
    sender.cancel()
    assert await hung_up(client)
    assert store.messages == []


async def test_data_at_a_fair_rate_may_take_longer_than_timeout(start_server: StartServer) -> None:
    """A message sent in bursts above the minimum rate is accepted though it takes > TimeOut."""
    store = RecordingStore()
    app = await start_server(TimeOut=1, store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    for _ in range(4):
        client.send(b"y" * 990 + b"\r\n")
        await client.writer.drain()
        await asyncio.sleep(0.4)
    client.send(b".\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as Q1")


async def test_connections_per_client_address_are_capped(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client address gets at most MaxConnectionsPerClient sessions; others still get in."""
    # Tests may only use loopback, which is exempt: count it as a remote address here.
    monkeypatch.setattr(app_module, "_capped_per_client", lambda ip: True)
    app = await start_server(MaxConnectionsPerClient=2, MaxConnections=10)
    first = await Client.connect(port_of(app))
    second = await Client.connect(port_of(app))
    third = await Client.connect(port_of(app), banner=False)
    assert await third.line() == (
        "421 4.7.0 mx.test Too many connections from your address, try again later"
    )
    assert await third.closed()
    assert await first.cmd("NOOP") == "250 2.0.0 OK"
    # Another address is not held back by the first one's sessions.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port_of(app), local_addr=("127.0.0.2", 0)
    )
    assert (await reader.readline()).startswith(b"220 ")
    writer.close()
    assert await second.cmd("QUIT") == "221 2.0.0 Bye"
    assert await second.closed()
    fourth = await Client.connect(port_of(app))
    assert await fourth.cmd("NOOP") == "250 2.0.0 OK"


async def test_loopback_clients_are_not_capped_per_address(start_server: StartServer) -> None:
    """Local apps all share 127.0.0.1: MaxConnectionsPerClient does not apply to loopback."""
    app = await start_server(MaxConnectionsPerClient=1)
    clients = [await Client.connect(port_of(app)) for _ in range(3)]
    for client in clients:
        assert await client.cmd("NOOP") == "250 2.0.0 OK"


def b64(data: bytes) -> str:
    """Base64 of raw *data*."""
    return base64.b64encode(data).decode()


AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
BAD_BASE64 = "501 5.5.2 Cannot decode base64"
BAD_PLAIN = "501 5.5.2 AUTH PLAIN needs authzid NUL user NUL password"


@pytest.mark.parametrize(
    ("exchange", "last"),
    [
        (["AUTH PLAIN //4A/wD/"], AUTH_FAILED),  # \xff\xfe NUL \xff NUL \xff
        (["AUTH PLAIN " + b64(b"\x00\xc3(\x00password")], AUTH_FAILED),
        (["AUTH PLAIN " + b64(b"\x00test@example.com\x00\xff\xfe")], AUTH_FAILED),
        (["AUTH PLAIN " + b64(b"\xff\x00test@example.com\x00password")], AUTH_FAILED),
        (["AUTH PLAIN", "//4A/wD/"], AUTH_FAILED),
        (["AUTH PLAIN !!!!"], BAD_BASE64),
        (["AUTH PLAIN dGVzdA="], BAD_BASE64),
        (["AUTH PLAIN \u00e9\u00e9\u00e9\u00e9"], BAD_BASE64),
        (["AUTH PLAIN " + b64(b"user\x00password")], BAD_PLAIN),
        (["AUTH PLAIN " + b64(b"a\x00b\x00c\x00d")], BAD_PLAIN),
        (["AUTH PLAIN " + b64(b"\x00\x00password")], BAD_PLAIN),
        (["AUTH PLAIN ="], BAD_PLAIN),
        (["AUTH LOGIN //4=", b64(b"password")], AUTH_FAILED),
        (["AUTH LOGIN", b64(b"\xff\xfe"), b64(b"password")], AUTH_FAILED),
        (["AUTH LOGIN", b64(b"test@example.com"), b64(b"\xff\xfe\x00")], AUTH_FAILED),
        (["AUTH LOGIN", "not base64!"], BAD_BASE64),
        (["AUTH LOGIN", b64(b"test@example.com"), "%%%"], BAD_BASE64),
    ],
)
async def test_malformed_auth_gets_a_reply_and_the_session_lives(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    exchange: list[str],
    last: str,
) -> None:
    """Broken or non-UTF-8 AUTH data gets 501/535, no ERROR line, and the session goes on."""
    app = await start_server(Users=[user_entry()])
    client = await Client.connect(port_of(app))
    await client.ehlo()
    with caplog.at_level(logging.INFO, logger="jdxmail"):
        for line in exchange[:-1]:
            assert (await client.cmd(line)).startswith("334 ")
        assert await client.cmd(exchange[-1]) == last
        assert await client.cmd("NOOP") == "250 2.0.0 OK"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "jdxmail.auth"]
    assert any("127.0.0.1" in w and ("login failed" in w or "malformed" in w) for w in warnings)
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "jdxmail.auth")


async def test_recipient_with_empty_domain_is_refused(start_server: StartServer) -> None:
    """RCPT TO:<x@> gets 553 5.1.3 instead of a mailbox folder named "x@"."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert await client.cmd("MAIL FROM:<a@localhost>") == "250 2.1.0 Sender OK"
    assert await client.cmd("RCPT TO:<x@>") == "553 5.1.3 Malformed address: no domain"
    assert (
        await client.cmd("MAIL FROM:<x@>")
        == "503 5.5.1 Sender already given; send RSET to start over"
    )
    assert await client.cmd("RSET") == "250 2.0.0 Reset OK"
    assert await client.cmd("MAIL FROM:<x@>") == "553 5.1.3 Malformed address: no domain"


@pytest.mark.parametrize(
    "name", ["bad\x00name", "bad\x01name", "tab\tname", "del\x7f", "a..\u00fc"]
)
async def test_ehlo_name_with_control_characters_is_refused(
    start_server: StartServer, name: str
) -> None:
    """EHLO/HELO with a control character (or a non-ASCII name with no A-label) gets 501."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    for verb in ("EHLO", "HELO"):
        assert await client.cmd(f"{verb} {name}") == f"501 5.5.4 Invalid {verb} name"
    assert await client.cmd("MAIL FROM:<a@localhost>") == "503 5.5.1 Send EHLO or HELO first"


async def test_non_ascii_ehlo_name_is_written_as_a_label(start_server: StartServer) -> None:
    """A UTF-8 EHLO name (RFC 6531 U-label) goes into Received: as its xn-- form, never raw."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await client.ehlo("b\u00fccher.example")
    assert (await client.cmd("MAIL FROM:<a@localhost>")).startswith("250")
    assert (await client.cmd("RCPT TO:<v@localhost>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert (await client.line()).startswith("250 ")
    data = store.messages[0].data
    assert data.startswith(b"Received: from xn--bcher-kva.example ([127.0.0.1])\r\n")
    assert data.isascii()


@pytest.mark.parametrize("rcpt", ["v@localhost", "far@example.org"])
async def test_message_without_date_gets_one(start_server: StartServer, rcpt: str) -> None:
    """A message without Date: is stored (for mailbox and relay alike) with one added."""
    store = RecordingStore()
    app = await start_server(store=store, TrustedNetworks=["127.0.0.1/32"])
    client = await Client.connect(port_of(app))
    await open_data(client, rcpt=rcpt)
    client.send("Subject: no date\r\n\r\nDate: not a header\r\n.\r\n")
    assert (await client.line()).startswith("250 ")
    message = email.message_from_bytes(store.messages[0].data, policy=email.policy.default)
    assert len(message.get_all("Date") or []) == 1
    assert message["Date"].datetime is not None
    body = message.get_body()
    assert body is not None
    assert body.get_content().strip() == "Date: not a header"


async def test_message_with_a_date_keeps_it(start_server: StartServer) -> None:
    """A message that has a Date: header keeps it and gets no second one."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    client.send("Subject: x\r\ndate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n.\r\n")
    assert (await client.line()).startswith("250 ")
    data = bytes(store.messages[0].data)
    assert data.lower().count(b"\r\ndate:") == 1
    assert b"date: Tue, 01 Dec 2026 10:00:00 +0000" in data


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])
def test_busy_port_fails_before_spool_and_delivery_start(
    tmp_path: Path, workers: list[str]
) -> None:
    """serve on a taken port fails at once: no spool made, no cleanup, no delivery process."""
    config = tmp_path / "appsettings.json"
    config.write_text(
        json.dumps(
            {
                "SmtpServer": {"BindAddress": "127.0.0.1"},
                "RelayServers": [{"Host": "127.0.0.1", "Port": 9, "UseTls": False}],
                "Paths": {"Spool": "spool", "Mailbox": "mailbox", "Logs": "logs"},
            }
        )
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(tmp_path, "--config", str(config), "--port", str(port), *workers)
    assert result.returncode == 1
    assert "the port is already in use" in result.stderr
    assert "delivery process" not in result.stderr
    assert not (tmp_path / "spool").exists()
    assert not (tmp_path / "mailbox").exists()


async def test_app_binds_before_opening_the_spool(tmp_path: Path) -> None:
    """SmtpServerApp.start raises BindError on a taken port before the spool is made."""
    settings = make_settings(tmp_path, RelayServers=[{"Host": "127.0.0.1", "Port": 9}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = SmtpServerApp(settings, port=taken.getsockname()[1])
        with pytest.raises(BindError):
            await app.start()
    assert not (tmp_path / "spool").exists()
