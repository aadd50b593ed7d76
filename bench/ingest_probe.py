"""CPU per received message of jdxmail's server alone, steady enough to compare.

Usage::

    python bench/ingest_probe.py [--count 6000] [--size 1024] [--sessions 20] [--rounds 3]
                                 [--loop asyncio|uvloop] [--spare] [--console] [--inbox]

Runs the server (``SmtpServerApp``, durable spool, delivery left to another process
that is not started) in this process on 127.0.0.1 and sends it *count* messages
with ``smtp-source`` (*sessions* persistent sessions). It prints messages per
second and CPU microseconds per message of this process, user and system (the
session loop, the spool's sync thread; the client is another process). Profile it
with ``py-spy record -f raw -o out.txt -- python bench/ingest_probe.py``. The full
benchmark measures the same path in its ``jdxmail held`` row, between its peers.

With ``--inbox`` it measures the dev inbox instead: no relay, every message for
``bob@localhost`` stored in a mailbox, the mailbox index running as ``serve`` runs
it (the benchmark's ``1k-s20-inbox`` workload).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_figures import CpuFigures

from jdxmail.eventloop import LoopChoice
from jdxmail.eventloop import run as run_loop
from jdxmail.logs import configure_logging
from jdxmail.process import settle_heap
from jdxmail.queue.layout import new_queue_id, process_tag
from jdxmail.queue.recycling import SPARE_DIR, home_dir
from jdxmail.server.app import SmtpServerApp
from jdxmail.settings.files import settings_from_source, source_from_text
from jdxmail.settings.model import Settings

_SENDER, _RECIPIENT, _HELO = "bench@example.com", "rcpt@example.net", "bench.example.com"
_LOCAL = "bob@localhost"


def probe_settings(root: Path, *, inbox: bool = False) -> Settings:
    """The settings of a probe's server, its spool, mailboxes and logs under *root*:
    relaying everything, or with *inbox* the dev inbox (no relay, local recipients)."""
    config: dict[str, object] = {
        "SmtpServer": {
            "BindAddress": "127.0.0.1",
            "HostName": "jdxmail.bench.invalid",
            "TrustedNetworks": ["127.0.0.0/8"],
            "MaxConnections": 1100,
        },
        # never contacted: delivery is another process's job here (none runs)
        "RelayServer": {"Host": "127.0.0.1", "Port": 9, "UseTls": False},
        "Paths": {
            "Spool": str(root / "spool"),
            "Mailbox": str(root / "mailbox"),
            "Logs": str(root / "logs"),
        },
    }
    if inbox:
        del config["RelayServer"]
    return settings_from_source(source_from_text(root / "c.json", json.dumps(config))).settings


async def _round(root: Path, args: argparse.Namespace) -> tuple[float, float, float]:
    # (the dev inbox with --inbox: its index as serve runs it)
    settings = probe_settings(root, inbox=args.inbox)
    if args.spare:
        _fill_spare(root / "spool" / SPARE_DIR, args.count, args.size)
    echo = open(root / "console.log", "w", encoding="utf-8") if args.console else None  # noqa: ASYNC230, SIM115
    configure_logging(settings.paths.logs, console=echo)  # as serve does
    # (without relays "inline" starts no delivery engine, only the mailbox index)
    app = SmtpServerApp(settings, port=0, delivery="inline" if args.inbox else "none")
    (address,) = await app.start()
    settle_heap()  # as serve does once started
    argv = ["smtp-source", "-s", str(args.sessions), "-m", str(args.count), "-d"]
    recipient = _LOCAL if args.inbox else _RECIPIENT
    argv += ["-l", str(args.size), "-f", _SENDER, "-t", recipient, "-M", _HELO]
    try:
        wall0, times0 = time.perf_counter(), os.times()
        client = await asyncio.create_subprocess_exec(*argv, f"127.0.0.1:{address.port}")
        if await client.wait() != 0:
            raise SystemExit(f"smtp-source failed with status {client.returncode}")
        wall, times = time.perf_counter() - wall0, os.times()
    finally:
        await app.stop(5)
        if echo is not None:
            configure_logging(None, console=None)
            echo.close()
    if args.inbox:
        where = root / "mailbox" / _LOCAL
        queued = sum(1 for e in os.scandir(where) if e.name.endswith(".eml"))
    else:
        where = root / "spool" / "queue"
        queued = sum(1 for e in os.scandir(where) if e.name.endswith(".msg"))
    if queued != args.count:
        raise SystemExit(f"{queued} of {args.count} messages in {where}: see {root / 'logs'}")
    user, system = times.user - times0.user, times.system - times0.system
    return args.count / wall, user / args.count * 1e6, system / args.count * 1e6


def _fill_spare(spare_dir: Path, count: int, size: int) -> None:
    """Put *count* files of *size* bytes where the delivery process gives back the
    queue files of this server (its folder in *spare_dir*), named as it names them
    (``ID.N``, N blocks), and flush them."""
    spare_dir = home_dir(spare_dir, process_tag())
    spare_dir.mkdir(parents=True)
    blocks = max(1, -(-size // 4096))
    data = b"x" * size
    for _ in range(count):
        (spare_dir / f"{new_queue_id()}.{blocks}").write_bytes(data)
    os.sync()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--spare", action="store_true", help="start with spare/ filled")
    parser.add_argument("--console", action="store_true", help="echo the log to a file")
    parser.add_argument("--inbox", action="store_true", help="the dev inbox: local mail")
    args = parser.parse_args()
    if shutil.which("smtp-source") is None:
        print("smtp-source not found: apt-get install postfix", file=sys.stderr)
        return 2
    figures = CpuFigures()
    with tempfile.TemporaryDirectory(prefix="jdx-ingest-") as tmp:
        for rnd in range(args.rounds):
            loop = LoopChoice(args.loop)
            figures.add(*run_loop(_round(Path(tmp) / f"r{rnd}", args), loop))
    figures.print_median()
    return 0


if __name__ == "__main__":
    sys.exit(main())
