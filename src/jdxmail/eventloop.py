"""The event loop serve runs on: asyncio's own, or uvloop's (``serve --loop``).

``auto`` (the default) takes uvloop when it is installed (``pip install
'jdxmail[fast]'``) and asyncio's loop otherwise, as uvicorn's ``--loop auto`` does.
Every process of one serve runs the same loop: the worker processes of ``--workers``
and the delivery process, which is told with ``--loop`` (see
:func:`running_loop_choice`). docs/serve.md says what was checked under uvloop.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "LoopChoice",
    "LoopUnavailableError",
    "describe_running_loop",
    "kept_loop",
    "resolve",
    "run",
    "running_loop_choice",
]

T = TypeVar("T")


class LoopChoice(enum.StrEnum):
    """``serve --loop``: which event loop runs the server (uvicorn's vocabulary)."""

    AUTO = "auto"
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class LoopUnavailableError(RuntimeError):
    """The loop asked for cannot be used here (uvloop is not installed)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    return uvloop.new_event_loop


def resolve(choice: LoopChoice) -> LoopChoice:
    """The loop *choice* means here: ASYNCIO or UVLOOP, never AUTO.

    Raises LoopUnavailableError (with its fix) for UVLOOP when uvloop cannot be imported.
    """
    if choice is LoopChoice.ASYNCIO:
        return choice
    if _uvloop_factory() is not None:
        return LoopChoice.UVLOOP
    if choice is LoopChoice.AUTO:
        return LoopChoice.ASYNCIO
    raise LoopUnavailableError(
        "--loop uvloop: uvloop is not installed",
        "install it with `pip install 'jdxmail[fast]'` (or `pip install uvloop`), "
        "or use --loop auto / --loop asyncio",
    )


def run(main: Coroutine[Any, Any, T], choice: LoopChoice) -> T:
    """Run *main* to completion on a new loop of *choice*, as ``asyncio.run`` does.

    Raises LoopUnavailableError as :func:`resolve` does.
    """
    factory = _uvloop_factory() if resolve(choice) is LoopChoice.UVLOOP else None
    # no factory: asyncio.run's own loop (set as the thread's current loop, as before)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running_loop_choice() -> LoopChoice:
    """Which loop runs the calling coroutine: UVLOOP or ASYNCIO (for child processes)."""
    module = type(asyncio.get_running_loop()).__module__
    return LoopChoice.UVLOOP if module.partition(".")[0] == "uvloop" else LoopChoice.ASYNCIO


def describe_running_loop() -> str:
    """The running loop for the log: ``uvloop 0.23.0`` or ``asyncio (_UnixSelectorEventLoop)``."""
    if running_loop_choice() is LoopChoice.UVLOOP:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return f"uvloop {version('uvloop')}"
        except PackageNotFoundError:
            return "uvloop"
    return f"asyncio ({type(asyncio.get_running_loop()).__name__})"


def kept_loop(kept: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    """*kept* while it is open, else the running loop (to keep in its place).

    What a server's session or a relay pool does per message keeps its loop: CPython
    3.11's ``asyncio.get_running_loop()`` makes a ``getpid`` system call on every
    call (to notice a fork). Use as ``loop = self._loop = kept_loop(self._loop)``.
    """
    if kept is None or kept.is_closed():
        return asyncio.get_running_loop()
    return kept
