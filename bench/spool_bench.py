"""Micro-benchmark of the durable spool: msgs/s stored (fsync'ed) per commit design.

Usage: python bench/spool_bench.py [--seconds 2] [--dir PATH] [--cpu-us N] [--dirty MB]

Compares, on the disk holding --dir (default: a temp folder under the current one),
the group commit of ``Spool`` ("batch": writeback started per file and one
fdatasync each, renames and directory fsyncs in a second thread; "batch-syncfs": the
earlier design, one ``syncfs`` per batch; "batch-fsync": an fsync per file) against
"per-message" (every store its own write, fsync, rename and directory fsync, run
concurrently in the default thread pool), for 1 KB and 100 KB messages with 1 and 20
concurrent store() calls. ``--dirty MB`` runs a process beside it that keeps writing
that many MB/s to an unsynced file on the same file system (other programs' data,
which ``syncfs`` has to flush too). Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jdxmail.queue.spool import AcceptedMessage, CommitMode, Spool


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


#: the --dirty writer: rewrites four 32 MB files at the given MB/s, never syncing them
_DIRTY = """
import sys, time
path, rate = sys.argv[1], float(sys.argv[2])
block = b"z" * (1 << 20)
n = 0
while True:
    with open(f"{path}{n % 4}", "wb") as f:
        for _ in range(32):
            f.write(block)
            time.sleep(1 / rate)
    n += 1
"""


def _burn(microseconds: float) -> None:
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


async def _run(
    root: Path, mode: CommitMode, size: int, concurrency: int, seconds: float, cpu_us: float
) -> float:
    spool_dir = root / f"{mode}-{size}-{concurrency}"
    spool = Spool(spool_dir / "spool", spool_dir / "mailbox", commit_mode=mode)
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
    modes: tuple[CommitMode, ...] = ("per-message", "batch-fsync", "batch-syncfs", "batch")
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
    parser.add_argument(
        "--dirty",
        type=float,
        default=0.0,
        help="MB/s another process writes (never synced) to the same file system meanwhile",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or Path.cwd(), prefix="spool-bench-") as tmp:
        writer = None
        if args.dirty > 0:
            print(f"(another process writes {args.dirty:g} MB/s of unsynced data meanwhile)")
            argv = [sys.executable, "-c", _DIRTY, str(Path(tmp) / "dirty"), str(args.dirty)]
            writer = subprocess.Popen(argv)
        try:
            asyncio.run(_main(args.seconds, Path(tmp), args.cpu_us))
        finally:
            if writer is not None:
                writer.kill()
                writer.wait()


if __name__ == "__main__":
    main()
