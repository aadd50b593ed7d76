"""The delivery engine in a process of its own: ``python -m jdxmail.queue.deliverer``.

``jdxmail serve`` starts this process when relays are configured (``--delivery
process``, the default), so that taking mail in and relaying it each get an
interpreter, and so a core, of their own. It gets the config's text as serve read
it (on stdin; a later edit of the file does not split the two), opens the same
spool and runs the :class:`~jdxmail.queue.worker.DeliveryEngine` on it. It learns
about new messages from the kernel (inotify on ``queue/``), whichever server
process stored them; without inotify it looks every second. It ends when its parent
ends (Linux ``PR_SET_PDEATHSIG``), and on SIGTERM or SIGINT it lets deliveries in
progress finish within ``--grace`` seconds. On SIGHUP (which serve passes on when it
reloads) it reads the config file again and relays the next attempts with its relays
and ``Delivery`` settings. It runs the event loop serve runs (``--loop``).

Its start is reported to the parent as one JSON object on ``--report-fd``:
``{"ok": true}`` once the engine runs, or ``{"ok": false, "message": ..., "fix": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jdxmail.eventloop import LoopChoice, run
from jdxmail.process import end_with_parent, send_report, settle_heap

if TYPE_CHECKING:
    from jdxmail.queue.worker import DeliveryEngine
    from jdxmail.settings.model import Settings

__all__ = ["main"]

logger = logging.getLogger("jdxmail.queue")

#: seconds between scans of queue/ when inotify cannot be used
_POLL_WITHOUT_INOTIFY = 1.0


class _Reporter:
    """Writes the one start-up answer to the parent, once."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def send(self, answer: dict[str, Any]) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            send_report(fd, answer)

    def fail(self, message: str, fix: str) -> int:
        self.send({"ok": False, "message": message, "fix": fix})
        return 1


def main(argv: list[str] | None = None) -> int:
    """Run the delivery process; the exit code is 0 after a clean stop."""
    parser = argparse.ArgumentParser(prog="python -m jdxmail.queue.deliverer")
    parser.add_argument("--config", type=Path, required=True, help="the config file")
    parser.add_argument(
        "--config-on-stdin",
        action="store_true",
        help="read the config's text from stdin (as serve read it), not from the file",
    )
    parser.add_argument("--report-fd", type=int, required=True, help="fd for the start answer")
    parser.add_argument("--parent-pid", type=int, default=0, help="end when this process ends")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to finish on stop")
    parser.add_argument("--log-level", type=int, default=logging.INFO, help="logging level")
    parser.add_argument(
        "--loop",
        type=LoopChoice,
        choices=[LoopChoice.ASYNCIO, LoopChoice.UVLOOP],
        default=LoopChoice.ASYNCIO,
        help="the event loop (serve passes its own)",
    )
    args = parser.parse_args(argv)
    report = _Reporter(args.report_fd)
    if not end_with_parent(args.parent_pid):
        return report.fail("the server ended before its delivery process started", "")

    from jdxmail.logs import LogSetupError, configure_logging  # noqa: PLC0415
    from jdxmail.settings.files import (  # noqa: PLC0415
        ConfigError,
        load_settings,
        settings_from_source,
        source_from_text,
    )

    try:
        if args.config_on_stdin:
            text = sys.stdin.buffer.read().decode("utf-8")
            settings = settings_from_source(source_from_text(args.config, text)).settings
        else:
            settings = load_settings(args.config).settings
    except (ConfigError, UnicodeDecodeError) as exc:
        return report.fail(
            f"the delivery process cannot read {args.config}: {exc}",
            f"run `jdxmail validate-config --config {args.config}`",
        )
    try:
        configure_logging(
            settings.paths.logs, level=args.log_level, log_format=settings.logging.format
        )
    except LogSetupError as exc:
        return report.fail(str(exc), "make the folder writable or set Paths.Logs")
    try:
        return run(_run(settings, report, args.grace, args.config), args.loop)
    except Exception as exc:  # reported to the parent, which prints it once
        logger.exception("the delivery process failed")
        return report.fail(f"the delivery process failed: {exc}", "see the log for details")


async def _reload(engine: DeliveryEngine, config: Path) -> None:
    """Read *config* again (SIGHUP from serve) and give the engine its relays."""
    from jdxmail.logs import register_secret  # noqa: PLC0415
    from jdxmail.settings.files import ConfigError, load_settings  # noqa: PLC0415

    try:
        settings = (await asyncio.to_thread(load_settings, config)).settings
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        logger.error("delivery process: reload failed, keeping the current relays: %s", exc)
        return
    for relay in settings.relays:
        if relay.password is not None:
            register_secret(relay.password.get_secret_value())
    try:
        engine.reload(settings)
    except Exception:  # the engine keeps what it had; the log says why
        logger.exception("delivery process: reload failed, keeping the current relays")


async def _run(settings: Settings, report: _Reporter, grace: float, config: Path) -> int:
    from jdxmail.logs import register_secret  # noqa: PLC0415
    from jdxmail.queue.spool import QUEUE_SUFFIX, Spool, SpoolError  # noqa: PLC0415
    from jdxmail.queue.watch import QueueWatcher  # noqa: PLC0415
    from jdxmail.queue.worker import DeliveryEngine  # noqa: PLC0415
    from jdxmail.stats import StatsRecorder  # noqa: PLC0415

    for relay in settings.relays:
        if relay.password is not None:
            register_secret(relay.password.get_secret_value())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()
    spool = Spool(settings.paths.spool, settings.paths.mailbox)
    try:
        await spool.open(announce=False)  # serve has said what the spool holds
    except SpoolError as exc:
        return report.fail(
            str(exc),
            f"make {settings.paths.spool} writable for this user, or set Paths.Spool "
            "to a folder it may write",
        )
    engine = DeliveryEngine(settings, spool)
    await engine.start()

    def reload() -> None:
        task = loop.create_task(_reload(engine, config))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    recorder = StatsRecorder(
        settings.paths.spool, "delivery", engine.counters, relays=engine.relay_health
    )
    await recorder.start()
    watcher = QueueWatcher(spool.queue_dir, QUEUE_SUFFIX, engine.enqueue, engine.rescan)
    if not watcher.start():
        engine.rescan_interval = _POLL_WITHOUT_INOTIFY
        logger.info("delivery process: no inotify here; looking for new mail every second")
    engine.rescan()  # whatever was stored while the engine started
    report.send({"ok": True, "pid": os.getpid()})
    settle_heap()
    try:
        await stop.wait()
    finally:
        watcher.close()
        await engine.stop(grace)
        await recorder.stop()
        await spool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
