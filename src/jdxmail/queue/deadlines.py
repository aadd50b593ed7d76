"""Deadlines of the relay attempts in progress, watched by one timer.

An attempt at a relay must end within its deadline, whatever it waits for (a new
session, room to write, a reply). :class:`DeadlineWatch` gives each attempt a
:class:`Deadline`, used like ``asyncio.timeout()`` (the task is cancelled when the
deadline passes, and ``TimeoutError`` raised where the ``with`` block ends), but
every deadline of a relay is watched by one timer: an ``asyncio.timeout()`` per
attempt makes, pushes on the loop's heap and cancels a timer handle for every
relayed message (about 4 µs of CPU each).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from jdxmail.eventloop import kept_loop

__all__ = ["Deadline", "DeadlineWatch"]


class Deadline:
    """The deadline of one task's block (see :meth:`DeadlineWatch.deadline`)."""

    __slots__ = ("_cancelling", "_task", "_watch", "expired", "when")

    def __init__(self, watch: DeadlineWatch, task: asyncio.Task[Any], when: float) -> None:
        self._watch = watch
        self._task = task
        self._cancelling = task.cancelling()
        #: when it passes (loop time)
        self.when = when
        #: it passed and the task was cancelled for it
        self.expired = False

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._watch.forget(self)
        # as asyncio.timeout(): the cancellation it made becomes a TimeoutError
        if (
            self.expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc


class DeadlineWatch:
    """Cancels the tasks whose :class:`Deadline` passed; one timer for all of them."""

    def __init__(self) -> None:
        #: the deadlines not over yet (few: one per attempt in progress)
        self._deadlines: dict[Deadline, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        #: the loop the attempts run in (see deadline)
        self._loop: asyncio.AbstractEventLoop | None = None

    def deadline(self, seconds: float) -> Deadline:
        """A deadline *seconds* from now for the current task, for a ``with`` block."""
        loop = self._loop = kept_loop(self._loop)
        # (with its loop given, current_task does not look the running loop up)
        task = asyncio.current_task(loop)
        assert task is not None
        deadline = Deadline(self, task, loop.time() + seconds)
        self._deadlines[deadline] = None
        timer = self._timer
        if timer is None or timer.when() > deadline.when:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline.when, self._due, loop, deadline.when)
        return deadline

    def forget(self, deadline: Deadline) -> None:
        """*deadline*'s block is over (its timer goes on, and lapses when it finds
        nothing to watch)."""
        self._deadlines.pop(deadline, None)

    def _due(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """The timer set for *when*: cancel the tasks whose deadline passed, set it
        again for the next deadline."""
        self._timer = None
        passed = [d for d in self._deadlines if d.when <= when]
        for deadline in passed:
            del self._deadlines[deadline]
            deadline.expired = True
            deadline._task.cancel()
        if self._deadlines:
            upcoming = min(d.when for d in self._deadlines)
            self._timer = loop.call_at(upcoming, self._due, loop, upcoming)
