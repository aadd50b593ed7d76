"""CPU per message of the server's own work on a 1 KB message, without the sockets.

Usage::

    python bench/session_probe.py [--count 20000] [--sessions 20] [--rounds 5]
                                  [--loop asyncio|uvloop]

Runs the server (``SmtpServerApp``, durable spool, no delivery) in this process and
hands its sessions the commands ``smtp-source -d`` sends (MAIL, RCPT, DATA and a
1 KB message, the bench's) through an in-memory transport: no socket, no client
process, so what is measured is the session's Python, the store (its files, the
sync thread's flushes, over spare files as a relaying server finds them) and the
log line (echoed to a file, as serve does to its console). It prints messages per second and CPU
microseconds per message of this process, user and system. ``ingest_probe.py``
measures the same path with a real client over loopback TCP, where the replies'
sends and the reads take about half of the server's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_figures import CpuFigures
from ingest_probe import _fill_spare, probe_settings

from jdxmail.eventloop import LoopChoice
from jdxmail.eventloop import run as run_loop
from jdxmail.logs import configure_logging
from jdxmail.process import settle_heap
from jdxmail.queue.recycling import SPARE_DIR
from jdxmail.server.app import SmtpServerApp
from jdxmail.server.smtp import SmtpSession

_HEAD = (
    b"From: <bench@example.com>\r\nTo: <rcpt@example.net>\r\n"
    b"Date: Sat,  5 Dec 2026 03:05:14 +0000 (UTC)\r\n"
    b"Message-Id: <6270.0003.0000@bench.example.com>\r\n\r\n"
)
#: the message smtp-source -l 1024 sends: its headers, then numbered lines of X
_DATA = _HEAD + b"".join(b"%dX" % (n % 10) + b"X" * 76 + b"\r\n" for n in range(13)) + b".\r\n"
_COMMANDS = (
    b"MAIL FROM:<bench@example.com>\r\n",
    b"RCPT TO:<rcpt@example.net>\r\n",
    b"DATA\r\n",
    _DATA,
)


class _Transport:
    """An in-memory stream transport: a write answers the client's wait."""

    def __init__(self) -> None:
        self.replied: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        if self.replied is not None and not self.replied.done():
            self.replied.set_result(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _client(session: SmtpSession, transport: _Transport, count: int) -> None:
    loop = asyncio.get_running_loop()
    transport.replied = loop.create_future()
    session.connection_made(transport)  # type: ignore[arg-type]
    await transport.replied  # the banner
    transport.replied = loop.create_future()
    session.data_received(memoryview(b"HELO bench.example.com\r\n"))
    await transport.replied
    for _ in range(count):
        for command in _COMMANDS:
            transport.replied = loop.create_future()
            session.data_received(memoryview(command))
            await transport.replied
    session.data_received(memoryview(b"QUIT\r\n"))


async def _round(root: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    settings = probe_settings(root)
    # spare/ filled as a delivery process keeps it (ingest_probe's --spare)
    _fill_spare(root / "spool" / SPARE_DIR, args.count, len(_DATA))
    echo = open(root / "console.log", "w", encoding="utf-8")  # noqa: ASYNC230, SIM115
    configure_logging(settings.paths.logs, console=echo)
    app = SmtpServerApp(settings, port=0, delivery="none")
    await app.start()
    settle_heap()
    per_session = args.count // args.sessions
    sessions = [SmtpSession(app) for _ in range(args.sessions)]
    try:
        wall0, times0 = time.perf_counter(), os.times()
        await asyncio.gather(*(_client(s, _Transport(), per_session) for s in sessions))
        wall, times = time.perf_counter() - wall0, os.times()
        for session in sessions:
            if session.task is not None:
                await session.task
    finally:
        await app.stop(5)
        configure_logging(None, console=None)
        echo.close()
    count = per_session * args.sessions
    queued = sum(1 for e in os.scandir(root / "spool" / "queue") if e.name.endswith(".msg"))
    if queued != count:
        raise SystemExit(f"{queued} of {count} messages queued: see {root / 'logs'}")
    user, system = times.user - times0.user, times.system - times0.system
    return count / wall, user / count * 1e6, system / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    args = parser.parse_args()
    figures = CpuFigures()
    with tempfile.TemporaryDirectory(prefix="jdx-session-") as tmp:
        for rnd in range(args.rounds):
            root = Path(tmp) / f"r{rnd}"
            root.mkdir()
            figures.add(*run_loop(_round(root, args), LoopChoice(args.loop)))
    figures.print_median()
    return 0


if __name__ == "__main__":
    sys.exit(main())
