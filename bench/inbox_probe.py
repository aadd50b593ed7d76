"""Stores per second and CPU per message of the dev inbox's storing side, in-process.

Usage::

    python bench/inbox_probe.py [--seconds 3] [--sessions 20] [--rounds 3] [--no-index]

Opens a spool and the inbox index (``MailboxIndex``, as ``serve`` runs it: inotify,
the spool's hand-over, one listener subscribed) on a temporary directory, and has
*sessions* tasks store 1 KB messages for ``bob@localhost`` back to back for
*seconds*: each store writes the mailbox file and waits for it to be durable, and
the index lists it. No SMTP, no client: what is left is the spool's and the index's
own cost, steady enough to compare two versions of them (``PYTHONPATH=<other
checkout>/src``). ``--no-index`` leaves the index out, to see its share. The full
benchmark measures the whole path in its ``1k-s20-inbox`` workload.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from jdxmail.inbox.index import MailboxIndex
from jdxmail.queue.spool import AcceptedMessage, Spool

_DATA = (
    b"From: App <app@example.com>\r\nTo: bob@localhost\r\nSubject: Your sign-up code\r\n"
    b"Date: Fri, 4 Dec 2026 19:00:00 +0000\r\nMessage-ID: <probe@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 1000 + b"\r\n"
)


async def _round(root: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    spool = Spool(root / "spool", root / "mailbox")
    await spool.open(announce=False, make_ahead=True)
    index = None
    if args.index:
        if hasattr(MailboxIndex, "filed"):  # the spool hands over what it stores
            index = MailboxIndex(root / "mailbox", filed_here=True)
            spool.on_filed = index.filed
        else:  # (older versions read every new file)
            index = MailboxIndex(root / "mailbox")
        await index.start()
        await index.ready()
    stored = listed = 0
    stop = time.monotonic() + args.seconds
    caught_up = asyncio.Event()

    def on_listed(entry: object) -> None:
        nonlocal listed
        listed += 1
        if listed >= stored and time.monotonic() >= stop:
            caught_up.set()

    if index is not None:
        index.subscribe(on_listed)

    async def session(number: int) -> None:
        nonlocal stored
        while time.monotonic() < stop:
            message = AcceptedMessage(
                "app@example.com", (), ("bob@localhost",), _DATA,
                f"<{number}.{stored}@example.com>", None, "127.0.0.1", "probe", time.time(),
            )  # fmt: skip
            await spool.store(message)
            stored += 1

    started, times = time.perf_counter(), os.times()
    await asyncio.gather(*(session(n) for n in range(args.sessions)))
    if index is not None and listed < stored:  # the index catches up before the clock stops
        await caught_up.wait()
    elapsed, after = time.perf_counter() - started, os.times()
    user, system = after.user - times.user, after.system - times.system
    if index is not None:
        await index.stop()
    await spool.close()
    return stored / elapsed, (user + system) / stored * 1e6, user / stored * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-index", dest="index", action="store_false")
    args = parser.parse_args()
    rates, cpus, users = [], [], []
    for number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="jdxinbox-") as tmp:
            rate, cpu, user = asyncio.run(_round(Path(tmp), args))
        rates.append(rate)
        cpus.append(cpu)
        users.append(user)
        print(
            f"round {number + 1}: {rate:,.0f} stores/s, {cpu:,.0f} µs CPU per message "
            f"({user:,.0f} user)"
        )
    print(
        f"median: {statistics.median(rates):,.0f} stores/s, "
        f"{statistics.median(cpus):,.0f} µs CPU per message "
        f"({statistics.median(users):,.0f} user)"
        f" ({'with' if args.index else 'without'} the inbox index)"
    )


if __name__ == "__main__":
    main()
