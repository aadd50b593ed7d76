"""SMTP smuggling end to end: what a client sends through serve, as the upstream sees it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.queue.conftest import StartUpstream
from tests.server.conftest import Client, make_settings, port_of
from tests.server.test_data import SMUGGLING, open_data

from jdxmail.server.app import SmtpServerApp

# The NUL variants: a receiver that drops NUL bytes (several do) sees <CRLF>.<CRLF>.
NUL_SMUGGLING = [
    pytest.param(end, id=repr(end))
    for end in ("\r\n\x00.\r\n", "\r\n.\x00\r\n", "\r\x00\n.\r\n", "\r\n.\r\x00\n", "\n\x00.\r\n")
]
MODES = pytest.mark.parametrize(
    ("bare", "nul"), [("Reject", "Reject"), ("Normalize", "Strip")], ids=["reject", "clean"]
)


@MODES
@pytest.mark.parametrize("fake_end", [*SMUGGLING, *NUL_SMUGGLING])
async def test_relayed_message_has_no_smuggling_bytes(
    tmp_path: Path, upstream_factory: StartUpstream, fake_end: str, bare: str, nul: str
) -> None:
    """Each fake end-of-data reaches the relay as one clean message or not at all."""
    upstream = await upstream_factory()
    app = await _relaying_app(tmp_path, upstream.port, bare=bare, nul=nul)
    try:
        client = await Client.connect(port_of(app))
        await open_data(client, rcpt="victim@example.org")
        smuggled = (
            "MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
            "Subject: smuggled\r\n\r\npay now\r\n"
        )
        client.send("Subject: real\r\n\r\nhello" + fake_end + smuggled + ".\r\n")
        first = await client.line()
        # A clean second message: once it has arrived, the first one has been relayed
        # (or was never accepted).
        assert (await client.cmd("MAIL FROM:<a@localhost>")).startswith("250")
        assert (await client.cmd("RCPT TO:<victim@example.org>")).startswith("250")
        assert (await client.cmd("DATA")).startswith("354")
        client.send("Subject: marker\r\n\r\nend\r\n.\r\n")
        assert (await client.line()).startswith("250 ")
        await client.close()
        expected = 1 if first.startswith("550 ") else 2
        await upstream.wait_for(expected)
    finally:
        await app.stop(1.0)
    assert len(upstream.received) == expected
    assert b"Subject: marker" in upstream.received[-1].data
    for got in upstream.received:
        assert b"\x00" not in got.data
        assert got.data.count(b"\r") == got.data.count(b"\n") == got.data.count(b"\r\n")
    if expected == 2:
        assert bare == "Normalize"
        assert b"Subject: smuggled" in upstream.received[0].data
        assert upstream.received[0].mail_from == "a@localhost"


async def test_bdat_end_of_data_lookalike_is_relayed_as_one_message(
    tmp_path: Path, upstream_factory: StartUpstream
) -> None:
    """A "." line inside BDAT data is content: the relay gets one message, dot-stuffed."""
    upstream = await upstream_factory()
    settings = make_settings(
        tmp_path,
        TrustedNetworks=["127.0.0.1/32"],
        RelayServers=[{"Host": "127.0.0.1", "Port": upstream.port, "UseTls": False}],
    )
    app = SmtpServerApp(settings, port=0, auth_failure_delay=0.0)
    await app.start()
    try:
        client = await Client.connect(port_of(app))
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<a@localhost>")).startswith("250")
        assert (await client.cmd("RCPT TO:<victim@example.org>")).startswith("250")
        data = (
            b"Subject: real\r\n\r\nhello\r\n.\r\nMAIL FROM:<ceo@bank.example>\r\n"
            b"RCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\npay\r\n"
        )
        client.send(b"BDAT %d LAST\r\n%s" % (len(data), data))
        assert (await client.line()).startswith("250 2.0.0 OK: queued as")
        await client.close()
        await upstream.wait_for(1)
    finally:
        await app.stop(1.0)
    assert len(upstream.received) == 1
    assert upstream.received[0].mail_from == "a@localhost"
    assert upstream.received[0].data.endswith(data)


@pytest.mark.parametrize(
    ("sent", "relayed"),
    [
        pytest.param(b"Subject: a\r\n\r\nplain. text.\r\n", b"plain. text.\r\n", id="none"),
        pytest.param(b"..first\r\nsecond\r\n", b".first\r\nsecond\r\n", id="first-line"),
        pytest.param(b"Subject: a\r\n\r\nx\r\n..y\r\n", b"x\r\n.y\r\n", id="later-line"),
        pytest.param(b"Subject: a\r\n\r\nx\n..y\r\n", b"x\r\n.y\r\n", id="bare-lf"),
        pytest.param(b"Subject: a\r\n\r\nx\r\n\x00.y\r\n", b"x\r\n.y\r\n", id="nul"),
    ],
)
async def test_lines_starting_with_a_dot_reach_the_relay_intact(
    tmp_path: Path, upstream_factory: StartUpstream, sent: bytes, relayed: bytes
) -> None:
    """A line that starts with a dot once stored (however it came to) reaches the relay
    with its dot; a message without one (sent without a search) arrives unchanged."""
    upstream = await upstream_factory()
    app = await _relaying_app(tmp_path, upstream.port, bare="Normalize", nul="Strip")
    try:
        client = await Client.connect(port_of(app))
        await open_data(client, rcpt="victim@example.org")
        client.send(sent + b".\r\n")
        assert (await client.line()).startswith("250 ")
        await client.close()
        await upstream.wait_for(1)
    finally:
        await app.stop(1.0)
    assert upstream.received[0].data.endswith(relayed)


async def _relaying_app(tmp_path: Path, relay_port: int, *, bare: str, nul: str) -> SmtpServerApp:
    """A started server trusting 127.0.0.1 that relays everything to *relay_port*."""
    settings = make_settings(
        tmp_path,
        TrustedNetworks=["127.0.0.1/32"],
        BareLineEndings=bare,
        NulBytes=nul,
        RelayServers=[{"Host": "127.0.0.1", "Port": relay_port, "UseTls": False}],
    )
    app = SmtpServerApp(settings, port=0, auth_failure_delay=0.0)
    await app.start()
    return app
