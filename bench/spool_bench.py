"""Micro-benchmark of the durable spool: msgs/s stored (fsync'ed) per commit design.

Usage: python bench/spool_bench.py [--seconds 2] [--dir PATH]

Compares, on the disk holding --dir (default: a temp folder under the current one),
the commit designs of ``Spool`` ("batch": files written by the event loop, one
``syncfs`` per batch; "batch-fsync": one writer thread, each file fsync'ed, one
directory fsync per batch) against "per-message" (every store its own write, fsync,
rename and directory fsync, run concurrently in the default thread pool; defined
here, as it serves only this comparison), for 1 KB and 100 KB messages with 1 and 20
concurrent store() calls. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from jdxmail.queue.durable import fsync_dir
from jdxmail.queue.layout import new_queue_id
from jdxmail.queue.queuefile import as_spool_error
from jdxmail.queue.spool import AcceptedMessage, Spool, SpoolError, _Plan

Mode = Literal["per-message", "batch-fsync", "batch"]


class PerMessageSpool(Spool):
    """The unbatched design, for comparison only: every store its own write, fsync,
    rename and directory fsync, run concurrently in the default thread pool."""

    def __init__(self, spool_dir: Path, mailbox_dir: Path) -> None:
        super().__init__(spool_dir, mailbox_dir, commit_mode="batch-fsync")

    async def store(self, message: AcceptedMessage) -> str:
        """Store *message* on its own, durably, and return its queue id."""
        if self._thread is None or self._closing:
            raise SpoolError("the spool is not open")
        plan = _Plan(queue_id=new_queue_id())
        self._plan(plan, message)
        await asyncio.to_thread(self._store_one, plan, message)
        self._queued(plan)
        return plan.queue_id

    def _store_one(self, plan: _Plan, message: AcceptedMessage) -> None:
        try:
            self._write_tmp(plan, message)
            for directory in sorted(self._place(plan)):
                fsync_dir(directory)
        except OSError as exc:
            self._undo(plan)
            raise as_spool_error(exc) from exc
        finally:
            if message.tail is not None:
                message.tail.close()


def make_spool(spool_dir: Path, mailbox_dir: Path, mode: Mode) -> Spool:
    """The spool of commit design *mode*."""
    if mode == "per-message":
        return PerMessageSpool(spool_dir, mailbox_dir)
    return Spool(spool_dir, mailbox_dir, commit_mode=mode)


def _message(size: int, n: int) -> AcceptedMessage:
    body = (b"x" * 76 + b"\r\n") * (size // 78 + 1)
    data = f"Message-ID: <{n}@bench>\r\nSubject: bench\r\n\r\n".encode() + body[:size]
    return AcceptedMessage(
        mail_from="bench@example.com",
        relay_recipients=("to@example.net",),
        local_recipients=(),
        data=data,
        message_id=f"{n}@bench",
        auth_user=None,
        client_address="127.0.0.1",
        session_id="bench",
        received_at=time.time(),
    )


def _burn(microseconds: float) -> None:
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


async def _run(
    root: Path, mode: Mode, size: int, concurrency: int, seconds: float, cpu_us: float
) -> float:
    spool_dir = root / f"{mode}-{size}-{concurrency}"
    spool = make_spool(spool_dir / "spool", spool_dir / "mailbox", mode)
    await spool.open()
    stored = 0
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal stored
        n = 0
        while time.perf_counter() < deadline:
            message = _message(size, k * 1_000_000 + n)
            _burn(cpu_us)
            await spool.store(message)
            n += 1
            stored += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    await spool.close()
    shutil.rmtree(spool_dir)
    return stored / elapsed


async def _main(seconds: float, root: Path, cpu_us: float) -> None:
    modes: tuple[Mode, ...] = ("per-message", "batch-fsync", "batch")
    print(
        f"spool on {root}, {seconds:g} s per cell, {cpu_us:g} us loop CPU per message, "
        "msgs/s stored durably"
    )
    print(f"{'size':>7} {'conc':>5} " + " ".join(f"{m:>12}" for m in modes) + "    ratio")
    for size in (1024, 100 * 1024):
        for concurrency in (1, 20):
            rates = [await _run(root, m, size, concurrency, seconds, cpu_us) for m in modes]
            ratio = rates[-1] / rates[0] if rates[0] else float("nan")
            cells = " ".join(f"{r:12.0f}" for r in rates)
            print(f"{size // 1024:>5}KB {concurrency:>5} {cells}    {ratio:.2f}x")


def main() -> None:
    """Parse the arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--cpu-us",
        type=float,
        default=0.0,
        help="CPU time the event loop spends per message before store(), like SMTP parsing",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or Path.cwd(), prefix="spool-bench-") as tmp:
        asyncio.run(_main(args.seconds, Path(tmp), args.cpu_us))


if __name__ == "__main__":
    main()
