"""DATA: SMTP smuggling, size and line limits, trace headers, durable acceptance."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jdxmail.queue.spool import AcceptedMessage, SpoolError
from jdxmail.server.smtp import add_trace_headers, clean_data
from tests.conftest import BOTH_LOOPS
from tests.server.conftest import Client, StartServer, port_of

pytestmark = BOTH_LOOPS  # on uvloop too (serve --loop)

# SEC Consult's SMTP smuggling end-of-data look-alikes: every <CR>/<LF>/<CRLF> before and
# after the dot except the real <CRLF>.<CRLF>.
ENDINGS = {"CR": "\r", "LF": "\n", "CRLF": "\r\n"}
SMUGGLING = [
    pytest.param(ENDINGS[a] + "." + ENDINGS[b], id=f"{a}.{b}")
    for a in ENDINGS
    for b in ENDINGS
    if (a, b) != ("CRLF", "CRLF")
]


class RecordingStore:
    """A message store that keeps messages in memory (for protocol-level tests)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.messages: list[AcceptedMessage] = []
        self.error = error

    async def store(self, message: AcceptedMessage) -> str:
        """Record *message*, or raise the configured error."""
        if self.error is not None:
            raise self.error
        self.messages.append(message)
        return f"Q{len(self.messages)}"


async def open_data(client: Client, rcpt: str = "v@localhost") -> None:
    """EHLO, MAIL, RCPT, DATA up to the 354."""
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@localhost>")).startswith("250")
    assert (await client.cmd(f"RCPT TO:<{rcpt}>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")


@pytest.mark.parametrize("fake_end", SMUGGLING)
@pytest.mark.parametrize("mode", ["Reject", "Normalize"])
async def test_smuggling_never_makes_two_messages(
    start_server: StartServer, fake_end: str, mode: str
) -> None:
    """A fake end-of-data followed by a second transaction stays one message (or is refused)."""
    store = RecordingStore()
    app = await start_server(BareLineEndings=mode, store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    smuggled = (
        "MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<v@localhost>\r\nDATA\r\n"
        "From: ceo@bank.example\r\nSubject: smuggled\r\n\r\npay now\r\n"
    )
    client.send("Subject: real\r\n\r\nhello" + fake_end + smuggled + ".\r\n")
    reply = await client.line()
    # The very next reply must belong to our NOOP: nothing else was run.
    assert await client.cmd("NOOP") == "250 2.0.0 OK"
    if mode == "Reject":
        assert reply == (
            "550 5.6.0 Message contains a bare CR or LF; lines must end with CRLF "
            "(SMTP smuggling protection)"
        )
        assert store.messages == []
    else:
        assert reply.startswith("250 2.0.0 OK: queued as")
        assert len(store.messages) == 1
        data = store.messages[0].data
        assert b"Subject: smuggled" in data
        assert b"\r\n.\r\n" not in data
        body = data.replace(b"\r\n", b"")
        assert b"\r" not in body
        assert b"\n" not in body


@pytest.mark.parametrize("mode", ["Reject", "Normalize"])
async def test_clean_crlf_message_passes_in_both_modes(
    start_server: StartServer, mode: str
) -> None:
    """A normal message with dot-stuffed lines is stored unstuffed in both modes."""
    store = RecordingStore()
    app = await start_server(BareLineEndings=mode, store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    client.send("Subject: dots\r\n\r\n..leading dot\r\n...\r\nend\r\n.\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as Q1")
    assert store.messages[0].data.endswith(b"Subject: dots\r\n\r\n.leading dot\r\n..\r\nend\r\n")


async def test_normalized_line_ending_before_a_dot_is_unstuffed(start_server: StartServer) -> None:
    """With Normalize, a dot-stuffed line after a bare LF or CR loses its extra dot too."""
    store = RecordingStore()
    app = await start_server(BareLineEndings="Normalize", store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    client.send("Subject: dots\r\n\r\nfirst\n..after LF\r..after CR\r\n.\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as Q1")
    assert store.messages[0].data.endswith(b"\r\n\r\nfirst\r\n.after LF\r\n.after CR\r\n")


async def test_oversized_message_is_refused_while_streaming(start_server: StartServer) -> None:
    """Data past MaxMessageSize gets 552 5.3.4 after the end; nothing stored; session lives."""
    store = RecordingStore()
    app = await start_server(MaxMessageSize=4096, store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    line = "x" * 76 + "\r\n"
    for _ in range(2000):  # ~156 KB, far past the limit
        client.send(line)
    client.send(".\r\n")
    assert await client.line() == "552 5.3.4 Message too big (limit 4096 bytes)"
    assert store.messages == []
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


async def test_message_at_the_size_limit_is_accepted(start_server: StartServer) -> None:
    """A message of exactly MaxMessageSize bytes is accepted; one byte more is not."""
    store = RecordingStore()
    app = await start_server(MaxMessageSize=4096, store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    body = ("y" * 62 + "\r\n") * 64
    assert len(body) == 4096
    client.send(body + ".\r\n")
    assert (await client.line()).startswith("250")
    await open_data(client)
    client.send("z" + body + ".\r\n")
    assert await client.line() == "552 5.3.4 Message too big (limit 4096 bytes)"


async def test_text_line_over_1000_bytes_is_refused(start_server: StartServer) -> None:
    """A data line longer than RFC 5321's 1000 bytes gets 550 5.6.0."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    client.send("Subject: long\r\n\r\n" + "z" * 1200 + "\r\n.\r\n")
    assert await client.line() == (
        "550 5.6.0 Message has a line longer than 1000 bytes (RFC 5321 4.5.3.1.6)"
    )
    assert store.messages == []


async def test_spool_failure_answers_451(start_server: StartServer) -> None:
    """When storing fails the client gets 451 4.3.0 and may try again."""
    store = RecordingStore(error=SpoolError("disk full"))
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert await client.line() == "451 4.3.0 Could not store the message; try again later"
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


async def test_250_only_after_the_store_returned(start_server: StartServer) -> None:
    """The 250 to DATA is not sent while the store is still writing."""
    release = asyncio.Event()
    entered = asyncio.Event()

    class SlowStore(RecordingStore):
        async def store(self, message: AcceptedMessage) -> str:
            entered.set()
            await release.wait()
            return await super().store(message)

    store = SlowStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    reply = asyncio.ensure_future(client.line())
    await entered.wait()
    await asyncio.sleep(0)
    assert not reply.done()
    assert store.messages == []
    release.set()
    assert (await reply).startswith("250 2.0.0 OK: queued as Q1")


async def test_message_is_on_disk_when_250_arrives(
    start_server: StartServer, tmp_path: Path
) -> None:
    """With the real spool, the mailbox file exists by the time the client reads 250."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    await open_data(client, rcpt="dev@localhost")
    client.send("Subject: durable\r\nMessage-ID: <abc@client>\r\n\r\nbody\r\n.\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as")
    files = list((tmp_path / "mailbox" / "dev@localhost").glob("*.eml"))
    assert [f.name for f in files] == ["abc@client.eml"]


async def test_accepted_message_envelope_and_headers(start_server: StartServer) -> None:
    """The stored message carries Received (with protocol), a Message-ID and the envelope."""
    store = RecordingStore()
    app = await start_server(
        store=store, TrustedNetworks=["127.0.0.1/32"], RelayServers=[{"Host": "smtp.example.org"}]
    )
    client = await Client.connect(port_of(app))
    await client.ehlo("laptop.test")
    await client.cmd("MAIL FROM:<a@localhost> BODY=8BITMIME SIZE=100")
    await client.cmd("RCPT TO:<b@localhost>")
    await client.cmd("RCPT TO:<far@example.org>")
    await client.cmd("DATA")
    client.send("Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert (await client.line()).startswith("250")
    message = store.messages[0]
    assert message.local_recipients == ("b@localhost",)
    assert message.relay_recipients == ("far@example.org",)
    assert message.mail_options == ("BODY=8BITMIME", "SIZE=100")
    assert message.client_address == "127.0.0.1"
    assert message.auth_user is None
    assert message.data.startswith(b"Received: from laptop.test ([127.0.0.1])\r\n\tby mx.test")
    assert b"with ESMTP id " in message.data
    assert f"Message-ID: <{message.message_id}>".encode() in message.data
    assert message.data.endswith(b"Subject: hi\r\n\r\nbody\r\n")


def test_trace_headers_keep_an_existing_message_id() -> None:
    """An existing (even folded) Message-ID is kept and reported without brackets."""
    data, message_id = add_trace_headers(
        b"Subject: x\r\nMessage-Id:\r\n <id-1@host>\r\n\r\nbody\r\n",
        helo="c",
        client_ip="127.0.0.1",
        host_name="mx",
        protocol="ESMTPSA",
        transaction_id="s.1",
        auth_user="alice",
        recipients=["b@x"],
        when=0,
    )
    assert message_id == "id-1@host"
    assert data.count(b"Message-I") == 1
    assert b"(authenticated user alice)\r\n\tfor <b@x>; " in data


def test_trace_headers_for_a_message_without_headers() -> None:
    """A body without a header section stays body: our headers are followed by a blank line."""
    data, _ = add_trace_headers(
        b"just text\r\n",
        helo=None,
        client_ip="::1",
        host_name="mx",
        protocol="SMTP",
        transaction_id="s.1",
        auth_user=None,
        recipients=["a@x", "b@x"],
        when=0,
    )
    assert b"\r\n\r\njust text\r\n" in data
    assert data.startswith(b"Received: from unknown ([::1])")


def test_clean_data_normalizes_every_bare_ending() -> None:
    """Normalize turns bare CR and bare LF into CRLF; Reject refuses them."""
    raw = b"a\rb\nc\r\r\nd\r\n"
    body, problem = clean_data(raw, normalize=True)
    assert problem is None
    assert body == b"a\r\nb\r\nc\r\n\r\nd\r\n"
    _, refused = clean_data(raw, normalize=False)
    assert refused is not None
    assert refused.code == 550


async def test_oversized_stream_keeps_memory_bounded(start_server: StartServer) -> None:
    """Streaming 24 MB into a 64 KB limit never holds the message in memory."""
    import tracemalloc

    store = RecordingStore()
    app = await start_server(MaxMessageSize=65536, store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    chunk = (b"x" * 998 + b"\r\n") * 1000  # 1 MB of valid lines
    tracemalloc.start()
    try:
        for _ in range(24):
            client.send(chunk)
            await client.writer.drain()
        client.send(b".\r\n")
        reply = await client.line()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply == "552 5.3.4 Message too big (limit 65536 bytes)"
    assert peak < 8 * 1024 * 1024


async def test_large_message_arrives_intact(start_server: StartServer) -> None:
    """A 3 MB message with dot-stuffed lines is stored byte for byte (unstuffed)."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    body = b"".join(b"." * (i % 3) + b"line %d\r\n" % i for i in range(300_000))
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    client.send(b"Subject: big\r\n\r\n" + stuffed + b".\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as Q1")
    assert store.messages[0].data.endswith(b"Subject: big\r\n\r\n" + body)


async def test_empty_message_and_the_next_command_in_one_packet(start_server: StartServer) -> None:
    """A lone "." right after DATA is an empty message; a command after it still runs."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_data(client)
    client.send(".\r\nNOOP\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as ")
    assert await client.line() == "250 2.0.0 OK"
    assert len(store.messages) == 1
    assert store.messages[0].data.startswith(b"Received: from ")
    assert store.messages[0].data.endswith(b">\r\n")  # only the headers jdxmail adds
