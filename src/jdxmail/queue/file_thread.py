"""The delivery engine's thread for slow file work (big messages: read, remove).

Moved verbatim from the delivery engine; the file-recycling object replaces it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["_FileThread"]

_Settled = list[tuple["asyncio.Future[Any]", Any, BaseException | None]]


def _settle(results: _Settled, discard: Callable[[Any], None]) -> None:
    for future, result, error in results:
        if future.cancelled():
            if error is None:
                discard(result)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class _FileThread:
    """One thread for the engine's slow file work (big messages: check, remove), in batches.

    Requests queue up while the thread is busy; it takes all of them at once and
    hands every result back to the event loop with one ``call_soon_threadsafe``,
    instead of a thread-pool hop and a loop wake-up per request. A result whose
    caller has gone (cancelled) is passed to *discard* so no descriptor leaks.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, discard: Callable[[Any], None]) -> None:
        self._loop = loop
        self._discard = discard
        self._cond = threading.Condition()
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name="jdxmail-delivery-files", daemon=True
        )
        self._thread.start()

    def submit(self, run: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run *run* on the thread; its result or exception arrives in the future."""
        future: asyncio.Future[Any] = self._loop.create_future()
        with self._cond:
            self._pending.append((run, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        """Finish what was submitted, then stop the thread (blocking: call in a thread)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            results: _Settled = []
            for run, future in batch:
                try:
                    results.append((future, run(), None))
                except Exception as exc:  # handed to the awaiting caller
                    results.append((future, None, exc))
            try:
                self._loop.call_soon_threadsafe(_settle, results, self._discard)
            except RuntimeError:  # the loop is closed: nobody waits any more
                for _, result, error in results:
                    if error is None:
                        self._discard(result)
