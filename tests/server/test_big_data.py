"""DATA past 1 MiB goes to the spool as it arrives: bounded memory, same checks, same bytes."""

from __future__ import annotations

import os
import random
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest

from jdxmail.queue.spool import crc32_combine, read_queued_message
from jdxmail.server.smtp import SPILL_THRESHOLD, clean_data
from tests.conftest import BOTH_LOOPS
from tests.server.conftest import Client, port_of
from tests.server.test_data import open_data

pytestmark = BOTH_LOOPS  # on uvloop too (serve --loop)

HEAD = b"Subject: big\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <big@test>\r\n\r\n"


def stored(tmp_path: Path) -> tuple[list[bytes], list[bytes]]:
    """The data of every queued message and every mailbox file."""
    queue = [
        read_queued_message(path).data for path in sorted((tmp_path / "spool" / "queue").glob("*"))
    ]
    mailbox = [path.read_bytes() for path in sorted((tmp_path / "mailbox").rglob("*.eml"))]
    return queue, mailbox


def test_crc32_combine_matches_zlib() -> None:
    """crc32_combine(crc(A), crc(B), len(B)) is crc(A + B), for odd and even lengths."""
    rng = random.Random(5)  # noqa: S311 (test data, not secrets)
    for size_a, size_b in [(0, 0), (1, 0), (0, 1), (7, 13), (1000, 1 << 20), (3, 65537)]:
        a, b = rng.randbytes(size_a), rng.randbytes(size_b)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


async def test_big_message_keeps_memory_bounded_and_arrives_intact(
    spool_server: Any, tmp_path: Path
) -> None:
    """20 MB of DATA is stored byte for byte (unstuffed) while the server holds ~1 MB of it."""
    app = await spool_server()
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert (await client.cmd("MAIL FROM:<a@localhost>")).startswith("250")
    assert (await client.cmd("RCPT TO:<dev@localhost>")).startswith("250")
    assert (await client.cmd("RCPT TO:<far@example.org>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    lines = b"".join(
        b"." * (i % 3) + b"line %d " % i + b"x" * (i % 97) + b"\r\n" for i in range(9000)
    )
    stuffed = lines.replace(b"\r\n.", b"\r\n..")
    stuffed = (b"." + stuffed) if lines.startswith(b".") else stuffed
    chunks = 20 * 1024 * 1024 // len(stuffed)
    tracemalloc.start()
    try:
        client.send(HEAD)
        for _ in range(chunks):
            client.send(stuffed)
            await client.writer.drain()
        client.send(b".\r\n")
        reply = await client.line()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.startswith("250 2.0.0 OK: queued as")
    assert peak < 6 * 1024 * 1024
    queue, mailbox = stored(tmp_path)
    expected = HEAD + lines * chunks
    assert len(queue) == len(mailbox) == 1
    # read_queued_message checked size and checksum; the mailbox copy starts with its
    # envelope lines (Return-Path, Delivered-To), then the same data
    assert (
        mailbox[0] == b"Return-Path: <a@localhost>\r\nDelivered-To: <dev@localhost>\r\n" + queue[0]
    )
    assert queue[0].startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert queue[0].endswith(expected)
    assert len(queue[0]) - len(expected) < 300
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


def payload(kind: str) -> bytes:
    """About 3 MB of data (as sent: stuffed, with CRLF.CRLF) with some oddity past 2 MB."""
    rng = random.Random(kind)  # noqa: S311 (test data, not secrets)
    body = bytearray(HEAD)
    while len(body) < 3 * 1024 * 1024:
        line = b"." * rng.randrange(3) + rng.randbytes(rng.randrange(60)).hex().encode()
        if len(body) > 2 * 1024 * 1024 and rng.random() < 0.01:
            line += {"bare": b"\n", "cr": b"\r", "nul": b"\x00", "mix": b"\x00\r\n\x00.\n"}[kind]
        body += line + b"\r\n"
    return bytes(body).replace(b"\r\n.", b"\r\n..")


@pytest.mark.parametrize("kind", ["bare", "cr", "nul", "mix"])
async def test_big_message_is_cleaned_as_clean_data_would(
    spool_server: Any, tmp_path: Path, kind: str
) -> None:
    """With Normalize and Strip, a streamed message is stored as clean_data makes the whole."""
    app = await spool_server(BareLineEndings="Normalize", NulBytes="Strip")
    client = await Client.connect(port_of(app))
    await open_data(client, rcpt="dev@localhost")
    raw = payload(kind)
    client.send(raw + b".\r\n")
    assert (await client.line()).startswith("250 2.0.0 OK: queued as")
    expected, problem = clean_data(raw, normalize=True, strip_nul=True)
    assert problem is None
    _, mailbox = stored(tmp_path)
    assert mailbox[0].endswith(expected)
    assert len(mailbox[0]) - len(expected) < 300


@pytest.mark.parametrize(
    ("oddity", "reply"),
    [
        (b"bare\nlf\r\n", "550 5.6.0 Message contains a bare CR or LF"),
        (b"nul\x00\r\n", "550 5.6.0 Message contains a NUL byte"),
        (b"y" * 1200 + b"\r\n", "550 5.6.0 Message has a line longer than 1000 bytes"),
        (b"z" * 1_500_000, "550 5.6.0 Message has a line longer than 1000 bytes"),
        ((b"x" * 78 + b"\r\n") * 40_000, "552 5.3.4 Message too big"),
    ],
    ids=["bare-lf", "nul", "long-line", "endless-line", "too-big"],
)
async def test_problem_past_the_threshold_refuses_and_stores_nothing(
    spool_server: Any, tmp_path: Path, oddity: bytes, reply: str
) -> None:
    """A refused big message leaves no file behind and the session goes on."""
    app = await spool_server(MaxMessageSize=5 * 1024 * 1024)
    client = await Client.connect(port_of(app))
    await open_data(client, rcpt="dev@localhost")
    filler = (b"a" * 78 + b"\r\n") * (2 * SPILL_THRESHOLD // 80)
    client.send(HEAD + filler + oddity + filler[: 80 * 13_000] + b".\r\n")
    assert (await client.line()).startswith(reply)
    assert await client.cmd("NOOP") == "250 2.0.0 OK"
    assert stored(tmp_path) == ([], [])
    leftovers = [name for name in os.listdir(tmp_path / "spool" / "tmp") if "stock" not in name]
    assert leftovers == []
