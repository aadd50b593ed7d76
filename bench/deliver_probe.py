"""CPU per delivered message of the delivery engine alone, steady enough to compare.

Usage::

    python bench/deliver_probe.py [--count 3000] [--size 1024] [--rounds 3] [--profile]
                                  [--loop asyncio|uvloop] [--text]

Fills a fresh spool with *count* messages (one recipient each) while no engine runs,
then starts a :class:`~jdxmail.queue.worker.DeliveryEngine` in this process, relaying
to ``smtp-sink`` on 127.0.0.1, and times it until the spool is empty. It prints
messages per second and, the steadier figure, CPU microseconds per message of this
process, user and system (the engine's event loop and its threads; the sink is
another process). ``--loop uvloop`` drains on uvloop, as the delivery process of a
serve with uvloop installed does (the default stays asyncio's loop, as before).
``--profile`` runs the last round under cProfile and prints the functions by own time
(``JDXMAIL_PROBE_CALLERS=name`` / ``JDXMAIL_PROBE_CALLEES=name`` also print who calls
the functions matching *name*, or whom they call).
The full benchmark (bench/run.py) measures the same path as its ``jdxmail drain`` row,
but with the start-up of a whole serve in each round and more noise.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_figures import CpuFigures
from peers import LOOPBACK, SmtpSink, Unavailable

from jdxmail.eventloop import LoopChoice
from jdxmail.eventloop import run as run_loop
from jdxmail.logs import configure_logging
from jdxmail.process import settle_heap
from jdxmail.queue.spool import AcceptedMessage, Spool
from jdxmail.queue.worker import DeliveryEngine
from jdxmail.settings.files import settings_from_source, source_from_text

#: ``--text``: lines of prose (dots inside lines, none starting one), as most mail has
_TEXT_LINE = b"Some words of a sentence. Then another one, and more. End of it.\r\n"
#: whether this tree's AcceptedMessage carries the server's dot_lines flag
_FLAGGED = "dot_lines" in getattr(AcceptedMessage, "__dataclass_fields__", {})


def _message(size: int, n: int, text: bool = False) -> AcceptedMessage:
    head = f"From: a@bench.invalid\r\nTo: b@bench.invalid\r\nSubject: {n}\r\n\r\n".encode()
    line = _TEXT_LINE if text else b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    # as the server sets it: no line of either body starts with a dot
    flags = {"dot_lines": False} if _FLAGGED else {}
    return AcceptedMessage(
        **flags,  # type: ignore[arg-type]
        mail_from="a@bench.invalid",
        relay_recipients=("b@bench.invalid",),
        local_recipients=(),
        data=head + body,
        message_id=f"<{n}@bench.invalid>",
        auth_user=None,
        client_address="127.0.0.1",
        session_id=f"s{n}",
        received_at=time.time(),
    )


async def _fill(spool_dir: Path, count: int, size: int, text: bool = False) -> None:
    spool = Spool(spool_dir / "spool", spool_dir / "mailbox")
    await spool.open(announce=False)
    try:
        for start in range(0, count, 200):
            batch = [_message(size, n, text) for n in range(start, min(count, start + 200))]
            await asyncio.gather(*(spool.store(m) for m in batch))
    finally:
        await spool.close()


async def _drain(
    root: Path, sink_port: int, count: int, connections: int
) -> tuple[float, float, float]:
    text = (
        '{"SmtpServer": {"HostName": "jdxmail.bench.invalid"},'
        f' "Delivery": {{"ConnectionsPerRelay": {connections}}},'
        f' "RelayServer": {{"Host": "{LOOPBACK}", "Port": {sink_port}, "UseTls": false}},'
        f' "Paths": {{"Spool": "{root / "spool"}", "Mailbox": "{root / "mailbox"}",'
        f' "Logs": "{root / "logs"}"}}}}'
    )
    settings = settings_from_source(source_from_text(root / "c.json", text)).settings
    configure_logging(settings.paths.logs, console=None)  # as serve does: one line per delivery
    spool = Spool(settings.paths.spool, settings.paths.mailbox)
    await spool.open(announce=False)
    engine = DeliveryEngine(settings, spool)
    settle_heap()  # as the delivery process does once started
    wall0, times0 = time.perf_counter(), os.times()
    await engine.start()
    try:
        queue_dir = spool.queue_dir
        deadline = time.monotonic() + 600
        while any(e.name.endswith(".msg") for e in os.scandir(queue_dir)):
            if time.monotonic() > deadline:
                raise SystemExit(f"messages still queued after 600 s: see {root / 'logs'}")
            await asyncio.sleep(0.01)
        wall, times = time.perf_counter() - wall0, os.times()
        user, system = times.user - times0.user, times.system - times0.system
    finally:
        await engine.stop(5)
        await spool.close()
    return count / wall, user / count * 1e6, system / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--connections", type=int, default=4, help="Delivery.ConnectionsPerRelay (default 4)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the last round")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--text", action="store_true", help="prose lines (dots inside lines)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jdx-deliver-") as tmp:
        work = Path(tmp)
        sink = SmtpSink(work)
        try:
            sink.start()
        except Unavailable as exc:
            print(exc, file=sys.stderr)
            return 2
        try:
            figures = CpuFigures()
            for rnd in range(args.rounds):
                root = work / f"r{rnd}"
                asyncio.run(_fill(root, args.count, args.size, args.text))
                profile = cProfile.Profile() if args.profile and rnd == args.rounds - 1 else None
                if profile is not None:
                    profile.enable()
                rate, user, system = run_loop(
                    _drain(root, sink.port, args.count, args.connections), LoopChoice(args.loop)
                )
                if profile is not None:
                    profile.disable()
                    stats = pstats.Stats(profile).sort_stats("tottime")
                    stats.print_stats(45)
                    if os.environ.get("JDXMAIL_PROBE_CALLERS"):
                        stats.print_callers(os.environ["JDXMAIL_PROBE_CALLERS"])
                    if os.environ.get("JDXMAIL_PROBE_CALLEES"):
                        stats.print_callees(os.environ["JDXMAIL_PROBE_CALLEES"])
                figures.add(rate, user, system)
            figures.print_median()
        finally:
            sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
