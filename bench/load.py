"""SMTP load for the benchmark: a stand-in for smtp-source, idle sessions, one big message.

As a script it is the fallback load generator that ``bench/run.py`` uses when Postfix's
``smtp-source`` is not installed; it takes the same knobs::

    python bench/load.py 127.0.0.1:2525 --messages 100 --sessions 20 --size 1024 \
        [--persistent] [--recipients 10]

It is a Python client (asyncio, no pipelining, like smtp-source), so it costs far more
CPU per message than smtp-source and its figures are client-bound: fine for a smoke
run, not for comparing servers. The functions below are used in-process by run.py for
the memory figures (idle sessions, one 25 MB message).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass

SENDER = "bench@example.com"
RECIPIENT = "rcpt@example.net"
HELO = "bench.example.com"
LINE = b"x" * 76 + b"\r\n"


class SmtpLoadError(Exception):
    """The server answered something other than the expected reply, or hung up."""


def message_bytes(size: int, n: int = 0) -> bytes:
    """A message with a few headers and *size* bytes of body in 78-byte lines, CRLF."""
    full, rest = divmod(size, len(LINE))
    body = LINE * full + (b"x" * max(rest - 2, 0) + b"\r\n" if rest else b"")
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench {n}\r\n"
        f"Message-ID: <{n}.{time.monotonic_ns()}@bench.example.com>\r\n\r\n"
    ).encode()
    return head + body


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Read one (possibly multi-line) SMTP reply; return its code and last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpLoadError("the server closed the connection")
        if line[3:4] != b"-":
            try:
                return int(line[:3]), line.decode("ascii", "replace").rstrip()
            except ValueError:
                raise SmtpLoadError(f"not an SMTP reply: {line[:80]!r}") from None


async def command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str, expect: int
) -> None:
    """Send one command line and require the reply code *expect*."""
    writer.write(line.encode() + b"\r\n")
    code, text = await read_reply(reader)
    if code != expect:
        raise SmtpLoadError(f"{line.split(maxsplit=1)[0]}: {text}")


async def open_session(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, read the greeting and say EHLO."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    code, text = await read_reply(reader)
    if code != 220:
        writer.close()
        raise SmtpLoadError(f"greeting: {text}")
    await command(reader, writer, f"EHLO {HELO}", 250)
    return reader, writer


async def send_message(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    data: bytes,
    recipients: int = 1,
    to: str = RECIPIENT,
) -> None:
    """Send one transaction; *data* must be CRLF text without lines starting with a dot."""
    await command(reader, writer, f"MAIL FROM:<{SENDER}> SIZE={len(data)}", 250)
    for i in range(recipients):
        rcpt = to if recipients == 1 else f"{i}{to}"
        await command(reader, writer, f"RCPT TO:<{rcpt}>", 250)
    await command(reader, writer, "DATA", 354)
    view = memoryview(data)
    for start in range(0, len(data), 1 << 20):
        writer.write(view[start : start + (1 << 20)])
        await writer.drain()
    writer.write(b".\r\n")
    code, text = await read_reply(reader)
    if code != 250:
        raise SmtpLoadError(f"end of data: {text}")


async def close_session(writer: asyncio.StreamWriter) -> None:
    """Close the connection without waiting for the peer."""
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await writer.wait_closed()


@dataclass
class LoadJob:
    """What the fallback client sends: like smtp-source's -m/-s/-l/-d/-r."""

    host: str
    port: int
    messages: int
    sessions: int
    size: int
    persistent: bool
    recipients: int
    #: the recipient address (numbered when there are several, as smtp-source does)
    to: str = RECIPIENT


async def run_load(job: LoadJob) -> int:
    """Send *job.messages* messages over *job.sessions* parallel sessions; return the count."""
    data = message_bytes(job.size)
    left = job.messages
    sent = 0

    async def session() -> None:
        nonlocal left, sent
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while left > 0:
                left -= 1
                if conn is None:
                    conn = await open_session(job.host, job.port)
                await send_message(conn[0], conn[1], data, job.recipients, job.to)
                sent += 1
                if not job.persistent:
                    await command(conn[0], conn[1], "QUIT", 221)
                    await close_session(conn[1])
                    conn = None
            if conn is not None:
                await command(conn[0], conn[1], "QUIT", 221)
        finally:
            if conn is not None:
                await close_session(conn[1])

    await asyncio.gather(*(session() for _ in range(min(job.sessions, job.messages))))
    return sent


async def open_idle(host: str, port: int, count: int) -> list[asyncio.StreamWriter]:
    """Open *count* sessions that each got the greeting and said EHLO, and keep them open."""
    gate = asyncio.Semaphore(64)

    async def one() -> asyncio.StreamWriter:
        async with gate:
            _, writer = await open_session(host, port)
            return writer

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    writers = [r for r in results if isinstance(r, asyncio.StreamWriter)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await asyncio.gather(*(close_session(w) for w in writers))
        raise SmtpLoadError(
            f"{len(errors)} of {count} idle sessions failed, first: {errors[0]!r}"
        ) from errors[0]
    return writers


async def send_one(host: str, port: int, data: bytes) -> None:
    """Send one message over a fresh session and QUIT."""
    reader, writer = await open_session(host, port)
    try:
        await send_message(reader, writer, data)
        await command(reader, writer, "QUIT", 221)
    finally:
        await close_session(writer)


def main(argv: list[str] | None = None) -> int:
    """Command line of the fallback load generator; exit 0 when every message got 250."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("address", help="HOST:PORT")
    parser.add_argument("--messages", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--recipients", type=int, default=1)
    parser.add_argument("--persistent", action="store_true")
    parser.add_argument("--to", default=RECIPIENT, help="recipient address")
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    job = LoadJob(
        host, int(port), args.messages, args.sessions, args.size, args.persistent,
        args.recipients, args.to,
    )  # fmt: skip
    try:
        asyncio.run(run_load(job))
    except (OSError, SmtpLoadError) as exc:
        sys.stderr.write(f"load: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
