"""Hostile and broken clients: NUL bytes, endless lines, slow clients, bad AUTH data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.server.conftest import Client, StartServer, port_of
from tests.server.test_data import RecordingStore, open_data

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
