"""The console's live figures: one task that feeds the event stream every second.

While at least one page listens (an open event stream), it publishes

- ``stats``: the dashboard's figures (:func:`jdxmail.server.status.server_status`),
  when they changed — they include the other processes' stats files, which is why
  they are polled rather than pushed;
- ``queue``: ``{"queued": n, "failed": n}`` when the queue folders changed (the queue
  page then asks ``GET /api/v1/queue``: reading every message's envelope is left to
  a page that shows them);
- ``log``: ``{"file": inode, "lines": [...]}``, the lines appended to today's log file
  by any process, each with ``at`` (its offset in the file: a page skips those before
  the ``end`` of what it read itself).

With no page open it only keeps its place at the end of the log file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from jdxmail.logview import LogFollower
from jdxmail.web.context import ConsoleContext

__all__ = ["INTERVAL", "background"]

logger = logging.getLogger("jdxmail.web")

#: seconds between two looks
INTERVAL = 1.0
#: the most log lines one event carries
_MAX_LINES = 200


def _queue_signature(spool: os.PathLike[str]) -> tuple[Any, ...]:
    """Changes when a message is queued, retried, delivered, failed or deleted."""
    marks: list[Any] = []
    for name in ("queue", "state", "failed"):
        try:
            stat = os.stat(os.path.join(spool, name))
        except OSError:
            marks.append(None)
            continue
        # (a state file is replaced by a rename: its folder's time changes too)
        marks.append((stat.st_mtime_ns, stat.st_nlink))
    return tuple(marks)


async def background(ctx: ConsoleContext) -> None:
    """Publish ``stats``, ``queue`` and ``log`` events until cancelled."""
    from jdxmail.web.dashboard import status_json  # noqa: PLC0415
    from jdxmail.web.queue import queue_counts  # noqa: PLC0415

    follower = LogFollower(ctx.server.settings.paths.logs)
    await asyncio.to_thread(follower.start_at_end)
    last_stats: dict[str, Any] | None = None
    last_queue: tuple[Any, ...] | None = None
    last_error = ""
    while True:
        await asyncio.sleep(INTERVAL)
        try:
            lines = await asyncio.to_thread(follower.read_new)
            if not ctx.events.listeners:
                last_stats = last_queue = None
                continue
            if lines:
                for start in range(0, len(lines), _MAX_LINES):
                    chunk = lines[start : start + _MAX_LINES]
                    ctx.events.publish(
                        "log",
                        {"file": follower.inode, "lines": [line.to_json() for line in chunk]},
                    )
            stats = await status_json(ctx)
            compare = {k: v for k, v in stats.items() if k not in ("now", "processes")}
            if compare != last_stats:
                last_stats = compare
                ctx.events.publish("stats", stats)
            spool = ctx.server.settings.paths.spool
            signature = await asyncio.to_thread(_queue_signature, spool)
            if signature != last_queue:
                last_queue = signature
                ctx.events.publish("queue", await queue_counts(ctx))
            last_error = ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad moment (a file renamed under us): try again
            # Logged once per kind of failure: each line would be followed and published.
            if str(exc) != last_error:
                last_error = str(exc)
                logger.warning("live console figures failed: %s", exc)
