"""Ctrl-C for commands that wait on the network: stop at once, keep what was learnt."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Interrupted", "run_interruptible"]

T = TypeVar("T")


class Interrupted(Exception):
    """The user pressed Ctrl-C (SIGINT) while the command waited."""


def run_interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """Run *coro* in a new event loop; on SIGINT cancel it at once and raise Interrupted.

    asyncio's own SIGINT handling cancels the task too, but then lets cleanup code
    (a polite QUIT) wait out its full timeout before the KeyboardInterrupt surfaces.
    Here the task is cancelled and the caller gets control back to print what was
    learnt so far, within a fraction of a second.
    """
    import asyncio  # noqa: PLC0415 - not needed for --help

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(coro)
        interrupted = False

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        handled = True
        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        except (ValueError, RuntimeError, NotImplementedError):
            handled = False  # not the main thread: Ctrl-C stays KeyboardInterrupt
        try:
            return await task
        except asyncio.CancelledError:
            if interrupted:
                raise Interrupted from None
            raise
        finally:
            if handled:
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(signal.SIGINT)

    return asyncio.run(main())
