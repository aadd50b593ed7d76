"""CHUNKING / BDAT (RFC 3030) on the wire: chunks, LAST, sequence, sizes, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import BOTH_LOOPS
from tests.server.conftest import Client, StartServer, port_of
from tests.server.test_big_data import HEAD, stored
from tests.server.test_data import RecordingStore

pytestmark = BOTH_LOOPS  # on uvloop too (serve --loop)


async def open_bdat(client: Client, rcpt: str = "v@localhost") -> None:
    """EHLO (which offers CHUNKING), MAIL, RCPT."""
    assert "CHUNKING" in await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@localhost>")).startswith("250")
    assert (await client.cmd(f"RCPT TO:<{rcpt}>")).startswith("250")


async def test_pipelined_chunks_make_one_message_byte_for_byte(start_server: StartServer) -> None:
    """Chunks split anywhere (inside CRLF too) are joined as sent: no dot-unstuffing."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_bdat(client)
    message = b"Subject: bdat\r\n\r\n.leading dot\r\n..two\r\n.\r\nafter the dot line\r\n"
    first, second, third = message[:16], message[16:40], message[40:]
    assert first.endswith(b"\r")
    client.send(
        b"BDAT %d\r\n%s" % (len(first), first)
        + b"BDAT %d\r\n%s" % (len(second), second)
        + b"BDAT %d LAST\r\n%s" % (len(third), third)
    )
    assert await client.line() == f"250 2.0.0 {len(first)} octets received"
    assert await client.line() == f"250 2.0.0 {len(second)} octets received"
    assert (await client.line()).startswith("250 2.0.0 OK: queued as Q1")
    assert store.messages[0].data.endswith(b"\r\n" + message)
    assert store.messages[0].data.startswith(b"Received: from client.test")
    # A new transaction may use DATA again.
    assert (await client.cmd("MAIL FROM:<a@localhost>")).startswith("250")


async def test_bdat_zero_last_and_missing_final_crlf(start_server: StartServer) -> None:
    """BDAT 0 LAST ends a message; one that does not end in CRLF gets it added."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_bdat(client)
    client.send(b"BDAT 20\r\nSubject: x\r\n\r\nno end")
    assert await client.line() == "250 2.0.0 20 octets received"
    assert (await client.cmd("BDAT 0 LAST")).startswith("250 2.0.0 OK: queued as Q1")
    assert store.messages[0].data.endswith(b"Subject: x\r\n\r\nno end\r\n")


async def test_chunk_data_is_never_read_as_commands(start_server: StartServer) -> None:
    """A refused BDAT (no MAIL yet) still swallows its data; the session goes on."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await client.ehlo()
    client.send(b"BDAT 36 LAST\r\nQUIT\r\nMAIL FROM:<evil@example.org>\r\n")
    assert await client.line() == "503 5.5.1 Send MAIL first"
    assert await client.cmd("NOOP") == "250 2.0.0 OK"
    assert await client.cmd("MAIL FROM:<a@localhost>") == "250 2.1.0 Sender OK"
    client.send(b"BDAT 6\r\nRSET\r\n")
    assert await client.line() == "503 5.5.1 Send RCPT first"
    assert store.messages == []


async def test_too_big_fails_the_transaction(start_server: StartServer) -> None:
    """Chunks past MaxMessageSize get 552; later chunks of that message get 503."""
    store = RecordingStore()
    app = await start_server(store=store, MaxMessageSize=2048)
    client = await Client.connect(port_of(app))
    await open_bdat(client)
    client.send(b"BDAT 1500\r\n" + b"a" * 1500)
    assert await client.line() == "250 2.0.0 1500 octets received"
    client.send(b"BDAT 1500\r\n" + b"b" * 1500)
    assert await client.line() == "552 5.3.4 Message too big (limit 2048 bytes)"
    client.send(b"BDAT 10 LAST\r\n" + b"c" * 10)
    assert await client.line() == "503 5.5.1 Send MAIL first"
    assert store.messages == []
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


async def test_data_after_bdat_is_refused_until_rset(start_server: StartServer) -> None:
    """DATA in a transaction that began with BDAT gets 503; RSET starts over."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_bdat(client)
    # (not hex: the trace headers hold hex session ids)
    client.send(b"BDAT 9\r\nDISCARDED")
    assert await client.line() == "250 2.0.0 9 octets received"
    assert await client.cmd("DATA") == "503 5.5.1 DATA not allowed after BDAT; send RSET"
    assert await client.cmd("RSET") == "250 2.0.0 Reset OK"
    await open_bdat(client)
    assert (await client.cmd("DATA")).startswith("354")
    client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as Q1")
    data = store.messages[0].data
    assert data.endswith(b"Subject: x\r\n\r\nbody\r\n")
    assert b"DISCARDED" not in data


@pytest.mark.parametrize("arg", ["", "x", "-1", "10 MORE", "10 LAST extra", "1" * 19])
async def test_bad_bdat_syntax_closes_the_session(start_server: StartServer, arg: str) -> None:
    """BDAT without a readable size gets 501 and the connection is closed (its data
    could not be told from commands)."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    await open_bdat(client)
    assert await client.cmd(f"BDAT {arg}".strip()) == (
        "501 5.5.4 Syntax: BDAT size [LAST]; closing connection"
    )
    assert await client.closed()


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"Subject: x\r\n\r\nbare\nlf\r\n", "550 5.6.0 Message contains a bare CR or LF"),
        (b"Subject: x\r\n\r\nnul\x00\r\n", "550 5.6.0 Message contains a NUL byte"),
    ],
)
async def test_bdat_data_gets_the_data_checks(
    start_server: StartServer, data: bytes, reply: str
) -> None:
    """Bare line endings and NUL bytes are refused in BDAT data as in DATA."""
    store = RecordingStore()
    app = await start_server(store=store)
    client = await Client.connect(port_of(app))
    await open_bdat(client)
    client.send(b"BDAT %d LAST\r\n%s" % (len(data), data))
    assert (await client.line()).startswith(reply)
    assert store.messages == []


async def test_big_bdat_message_goes_through_the_spool(
    spool_server: object, tmp_path: Path
) -> None:
    """A 5 MB message in 64 KiB chunks is stored exactly, through the tmp/ file."""
    app = await spool_server()  # type: ignore[operator]
    client = await Client.connect(port_of(app))
    await open_bdat(client, rcpt="dev@localhost")
    body = HEAD + b"".join(b".%d\r\n" % i for i in range(700_000))
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    for piece in pieces[:-1]:
        client.send(b"BDAT %d\r\n%s" % (len(piece), piece))
    client.send(b"BDAT %d LAST\r\n%s" % (len(pieces[-1]), pieces[-1]))
    for piece in pieces[:-1]:
        assert await client.line() == f"250 2.0.0 {len(piece)} octets received"
    assert (await client.line()).startswith("250 2.0.0 OK: queued as")
    _, mailbox = stored(tmp_path)
    assert mailbox[0].endswith(body)
    assert len(mailbox[0]) - len(body) < 300
