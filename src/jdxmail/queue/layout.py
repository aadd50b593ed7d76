"""The spool's layout on disk, for readers without a :class:`~jdxmail.queue.spool.Spool`.

File names and suffixes, queue ids (sortable by time, unique across processes
sharing one spool) and the counts ``doctor``, ``queue`` and the metrics show.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jdxmail.queue.queuefile import QUEUE_SUFFIX

__all__ = [
    "FLUSH_FILE",
    "RETRY_DIR",
    "STATE_SUFFIX",
    "SpoolStats",
    "ids_in",
    "new_queue_id",
    "process_tag",
    "queue_id_tag",
    "queue_id_time",
    "spool_stats",
]

STATE_SUFFIX = ".json"

#: touched by ``jdxmail queue flush``: a running engine makes every message due at once
FLUSH_FILE = "flush"
#: ``jdxmail queue retry ID`` leaves an empty file named ID here: a running engine
#: makes that one message due at once and removes the file
RETRY_DIR = "retry"


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counts for ``doctor`` and ``queue``: what waits and what failed."""

    queued: int
    failed: int
    corrupt: int
    oldest_queued_age: float | None


class _Ids:
    """Queue ids: sortable by time, unique across processes sharing one spool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = 0
        self._last_us = 0
        self.tag = ""
        self.name_process()

    def next(self) -> str:
        with self._lock:
            now_us = time.time_ns() // 1000
            now_us = max(now_us, self._last_us)
            self._last_us = now_us
            self._counter = (self._counter + 1) & 0xFFFF
            counter = self._counter
        return f"{now_us:013x}{self.tag}{counter:04x}"

    def name_process(self) -> None:
        """Take this process's tag (again in a forked child: ``serve --workers``)."""
        self.tag = f"{os.getpid() & 0xFFFFF:05x}"


_IDS = _Ids()
os.register_at_fork(after_in_child=_IDS.name_process)


def new_queue_id() -> str:
    """A new queue id: sortable by time, unique across processes sharing one spool."""
    return _IDS.next()


def process_tag() -> str:
    """The part of this process's queue ids that names it: its pid's low 20 bits, hex."""
    return _IDS.tag


def queue_id_tag(queue_id: str) -> str:
    """The :func:`process_tag` of the process that made *queue_id* ("" if it has none)."""
    return queue_id[13:18] if len(queue_id) == 22 else ""


def queue_id_time(queue_id: str) -> float | None:
    """The epoch seconds encoded at the start of a queue id, or None if it has none."""
    try:
        return int(queue_id[:13], 16) / 1e6
    except ValueError:
        return None


def ids_in(directory: Path) -> Iterator[str]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(QUEUE_SUFFIX):
            yield entry.name.removesuffix(QUEUE_SUFFIX)


def spool_stats(spool_dir: Path) -> SpoolStats:
    """Count queued, failed and corrupt messages and the age of the oldest queued one."""
    spool_dir = Path(spool_dir)
    queued = sorted(ids_in(spool_dir / "queue"))
    failed = sum(1 for _ in ids_in(spool_dir / "failed"))
    try:
        corrupt = sum(1 for _ in os.scandir(spool_dir / "corrupt"))
    except FileNotFoundError:
        corrupt = 0
    oldest: float | None = None
    if queued:
        born = queue_id_time(queued[0])
        if born is None:
            with contextlib.suppress(OSError):
                born = (spool_dir / "queue" / f"{queued[0]}{QUEUE_SUFFIX}").stat().st_mtime
        if born is not None:
            oldest = max(0.0, time.time() - born)
    return SpoolStats(queued=len(queued), failed=failed, corrupt=corrupt, oldest_queued_age=oldest)
