"""When each queued message is due: the heap of due times, the hand-over to the
delivery workers, rescans of the spool, recovery at start and ``queue flush``.

The scheduler knows queue ids and times only; it never opens a queue file except to
read the next try a state file records. A message is *in flight* from the moment it is
handed to the workers until :meth:`Scheduler.done`; a message due again meanwhile (a
retry, or announced while in flight) waits in :attr:`Scheduler.due` and is scheduled
when its delivery is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
from collections.abc import Callable, Collection, Coroutine

from jdxmail.process import tmp_writer_alive
from jdxmail.queue.layout import RETRY_DIR
from jdxmail.queue.spool import FLUSH_FILE, Spool
from jdxmail.queue.state import StateError, read_json

__all__ = ["RESCAN_SECONDS", "Scheduler"]

logger = logging.getLogger("jdxmail.queue")

#: seconds between scans of queue/ for messages nobody announced
RESCAN_SECONDS = 30.0
#: seconds between looks at the flush file, and the longest sleep of the scheduler
_POLL_SECONDS = 1.0


class Scheduler:
    """Hands each queued message to the delivery workers when it is due."""

    def __init__(
        self,
        spool: Spool,
        clock: Callable[[], float],
        *,
        being_removed: Collection[str],
        on_flush: Callable[[], None],
        on_retry: Callable[[list[str]], None],
    ) -> None:
        self.spool = spool
        self.clock = clock
        #: delivered messages whose files are still being removed (not to pick up again)
        self._being_removed = being_removed
        #: called when the flush file says ``queue flush`` was run
        self._on_flush = on_flush
        #: called with the ids ``queue retry`` asked for
        self._on_retry = on_retry
        #: when each waiting message is next due (the heap may hold stale entries)
        self.due: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._in_flight: set[str] = set()
        self._work: asyncio.Queue[str] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._stopping = False
        self._flush_mtime = 0.0
        self._last_rescan = 0.0
        self._last_flush_check = 0.0
        #: seconds between scans of queue/ for messages nobody announced (other
        #: processes, the queue CLI); 1 s in a delivery process without inotify
        self.rescan_interval = RESCAN_SECONDS

    # -- asked by the engine -----------------------------------------------------------

    def enqueue(self, queue_id: str) -> None:
        """A new message is in the spool: hand it to the workers now.

        Announcing a message twice, or one being delivered, is harmless.
        """
        if queue_id in self._in_flight or queue_id in self._being_removed:
            return
        # Due now: straight to the workers, without a round through the scheduler
        # (its heap, and a wake-up of its task, for every new message). A later
        # entry of this id still in the heap no longer matches due and is skipped.
        self.due.pop(queue_id, None)
        self._in_flight.add(queue_id)
        self._work.put_nowait(queue_id)

    def schedule(self, queue_id: str, when: float) -> None:
        """Hand *queue_id* to the workers at *when* (replacing an earlier due time)."""
        self.due[queue_id] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, queue_id))

    def rescan_now(self) -> None:
        """Look for queued messages nobody announced, now."""
        self._last_rescan = 0.0
        self._wake.set()

    def all_due_now(self) -> None:
        """Make every waiting message due now, and look for unannounced ones."""
        for queue_id in list(self.due):
            self.schedule(queue_id, 0.0)
        self.rescan_now()

    async def wait_idle(self) -> None:
        """Return once nothing is being delivered and nothing is due now (for tests)."""
        while True:
            now = self.clock()
            due = any(when <= now for when in self.due.values())
            if not self._in_flight and not due and self._work.empty() and not self._being_removed:
                return
            self._idle.clear()
            await self._idle.wait()

    def stop(self) -> None:
        """Hand out nothing more; :meth:`run` returns."""
        self._stopping = True
        self._wake.set()

    async def drain(self, grace: float) -> int:
        """Wait up to *grace* seconds for the deliveries in flight; how many still run."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self._in_flight:
                    self._idle.clear()
                    await self._idle.wait()
        return len(self._in_flight)

    # -- asked by the workers ----------------------------------------------------------

    def next_message(self) -> Coroutine[None, None, str]:
        """The next message to deliver (to await: waits for one)."""
        return self._work.get()

    def done(self, queue_id: str) -> None:
        """The worker is done with *queue_id*: schedule it if it is due again."""
        self._in_flight.discard(queue_id)
        if queue_id in self.due:  # rescheduled, or announced while in flight
            self.schedule(queue_id, self.due[queue_id])
            self._wake.set()
        self._work.task_done()
        self.signal_idle()

    def signal_idle(self) -> None:
        """Something finished: let :meth:`wait_idle` and :meth:`drain` look again."""
        self._idle.set()

    # -- the scheduler's task ----------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """Startup scan, before :meth:`run`: every queued message is scheduled;
        leftovers are cleaned. Returns the counts for the log."""
        counts = await asyncio.to_thread(self._recover)
        self._last_rescan = self.clock()
        return counts

    def _recover(self) -> dict[str, int]:
        for leftover in self.spool.state_dir.glob(".*.tmp"):
            # another process (serve --workers, the queue CLI) may be writing it now
            if tmp_writer_alive(leftover.name):
                continue
            with contextlib.suppress(OSError):
                leftover.unlink()
        now = self.clock()
        retrying = due = 0
        ids = self.spool.queued_ids()
        for queue_id in ids:
            when = self._next_try_on_disk(queue_id)
            if when > 0:
                retrying += 1
            if when <= now:
                due += 1
            self.schedule(queue_id, when)
        failed = sum(1 for p in self.spool.failed_dir.glob("*.msg"))
        return {"queued": len(ids), "retrying": retrying, "due": due, "failed": failed}

    async def run(self) -> None:
        """Hand out due messages until :meth:`stop`; rescan and look for flushes."""
        while not self._stopping:
            now = await self._look_at_disk(self.clock())
            while self._heap and self._heap[0][0] <= now:
                when, _, queue_id = heapq.heappop(self._heap)
                if self.due.get(queue_id) != when or queue_id in self._in_flight:
                    continue
                del self.due[queue_id]
                self._in_flight.add(queue_id)
                self._work.put_nowait(queue_id)
            self.signal_idle()
            timeout = _POLL_SECONDS
            if self._heap:
                timeout = max(0.0, min(timeout, self._heap[0][0] - self.clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _look_at_disk(self, now: float) -> float:
        """Act on a ``queue flush`` and schedule unannounced messages, when their time
        has come; returns the time now."""
        if now - self._last_flush_check >= _POLL_SECONDS:
            self._last_flush_check = now
            flush, retries = await asyncio.to_thread(self._requests)
            if flush:
                self._on_flush()
                now = self.clock()
            if retries:
                self._on_retry(retries)
        if now - self._last_rescan >= self.rescan_interval:
            self._last_rescan = now
            known = frozenset((*self.due, *self._in_flight, *self._being_removed))
            for queue_id, when in await asyncio.to_thread(self._rescan, known):
                if queue_id not in self.due:
                    self.schedule(queue_id, when)
        return now

    def _next_try_on_disk(self, queue_id: str) -> float:
        try:
            data = read_json(self.spool.state_path(queue_id))
        except (StateError, OSError):
            return 0.0
        if isinstance(data, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                return float(data["next_try"])
        return 0.0

    def _rescan(self, known: frozenset[str]) -> list[tuple[str, float]]:
        """Messages on disk this engine does not know (other processes, the CLI)."""
        found = []
        for queue_id in self.spool.queued_ids():
            if queue_id not in known:
                found.append((queue_id, self._next_try_on_disk(queue_id)))
        return found

    def _requests(self) -> tuple[bool, list[str]]:
        """What ``queue flush`` and ``queue retry`` asked for since the last look (one
        trip to a thread for both)."""
        return self._flush_requested(), self._retries_requested()

    def _retries_requested(self) -> list[str]:
        """The ids ``queue retry`` left in retry/ since the last look (taken away),
        those still queued."""
        requests = self.spool.spool_dir / RETRY_DIR
        try:
            names = os.listdir(requests)
        except OSError:  # (no retry asked yet)
            return []
        taken = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(requests / name)
                if self.spool.queue_path(name).exists():
                    taken.append(name)
        return taken

    def _flush_requested(self) -> bool:
        try:
            mtime = (self.spool.spool_dir / FLUSH_FILE).stat().st_mtime
        except OSError:
            return False
        if mtime > self._flush_mtime:
            first = self._flush_mtime == 0.0
            self._flush_mtime = mtime
            return not first or mtime > self.clock() - RESCAN_SECONDS
        return False
