"""One batching thread: the spool's commit thread and the engine's file thread.

Work submitted while the thread is busy queues up; the thread takes all of it at
once, does it, and hands the outcome back to the event loop with one
``call_soon_threadsafe``, instead of a thread-pool hop and a loop wake-up per item:
the thread takes the interpreter lock a few times per batch, whatever its size.

The thread runs under Linux's ``SCHED_BATCH`` policy: woken by a submit, it does not
preempt what runs on a busy core, so on a saturated machine the loop stores a few
more messages before the thread's turn comes and one flush covers them all; on a core
with time to spare it runs at once, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["BatchThread", "CallThread"]

T = TypeVar("T")
R = TypeVar("R")


class BatchThread(Generic[T, R]):
    """A thread running *work* over every item submitted since its last turn.

    *work*'s result goes to *settle* on the event loop *loop*; when the loop is closed
    (nobody waits any more) it goes to *lost* instead, on the thread.
    """

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        work: Callable[[list[T]], R],
        settle: Callable[[R], None],
        lost: Callable[[R], None] | None = None,
    ) -> None:
        self._loop = loop
        self._work = work
        self._settle = settle
        self._lost = lost
        self._cond = threading.Condition()
        self._pending: list[T] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def submit(self, items: Iterable[T]) -> None:
        """Queue *items* for the thread's next turn (thread-safe)."""
        with self._cond:
            self._pending.extend(items)
            self._cond.notify()

    def close(self) -> None:
        """Finish what was submitted, then stop the thread (blocking: call in a thread)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _take(self) -> list[T] | None:
        """The next batch; None once closing and nothing is left."""
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            if not self._pending:
                return None
            batch, self._pending = self._pending, []
            return batch

    def _run(self) -> None:
        _yield_on_wake_up()
        while (batch := self._take()) is not None:
            outcome = self._work(batch)
            try:
                self._loop.call_soon_threadsafe(self._settle, outcome)
            except RuntimeError:  # the loop is closed: nobody waits any more
                if self._lost is not None:
                    self._lost(outcome)


def _yield_on_wake_up() -> None:
    """Put the calling thread under ``SCHED_BATCH`` (Linux; elsewhere nothing changes).

    The thread gets the same share of the CPU, but its wake-up does not preempt the
    task running on a busy core: the event loop goes on with the sessions, and the
    thread's turn, when it comes, carries more work (docs/performance.md, tenth round).
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        with contextlib.suppress(OSError):  # a sandbox may forbid it: keep the default
            os.sched_setscheduler(0, policy, os.sched_param(0))


_Call = tuple[Callable[[], Any], "asyncio.Future[Any]"]
#: each call's future with its result or its exception
_Results = list[tuple["asyncio.Future[Any]", Any, BaseException | None]]


class CallThread:
    """Calls run on one :class:`BatchThread`, each answered through a future.

    A result whose caller has gone (cancelled, or the loop closed) is passed to
    *discard*, so nothing it holds (a descriptor) leaks. The thread starts at once.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, name: str, discard: Callable[[Any], None]
    ) -> None:
        self._loop = loop
        self._discard = discard
        self._thread: BatchThread[_Call, _Results] = BatchThread(
            name, loop, _run_calls, self._answer, self._drop
        )
        self._thread.start()

    def submit(self, run: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run *run* on the thread; its result or exception arrives in the future."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._thread.submit([(run, future)])
        return future

    def close(self) -> None:
        """Finish what was submitted, then stop the thread (blocking: call in a thread)."""
        self._thread.close()

    def _answer(self, results: _Results) -> None:
        for future, result, error in results:
            if future.cancelled():
                if error is None:
                    self._discard(result)
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _drop(self, results: _Results) -> None:
        for _, result, error in results:
            if error is None:
                self._discard(result)


def _run_calls(batch: list[_Call]) -> _Results:
    results: _Results = []
    for run, future in batch:
        try:
            results.append((future, run(), None))
        except Exception as exc:  # handed to the awaiting caller
            results.append((future, None, exc))
    return results
