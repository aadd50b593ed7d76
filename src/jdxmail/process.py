"""Small process facts shared by the spool, the delivery process and serve's workers."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import json
import os
import signal
import sys
from typing import Any

__all__ = [
    "end_with_parent",
    "libc",
    "process_alive",
    "read_report",
    "send_report",
    "settle_heap",
    "tmp_writer_alive",
]

_PR_SET_PDEATHSIG = 1


def libc() -> ctypes.CDLL | None:
    """The C library (for syncfs, inotify and prctl), opened once; None if not Linux."""
    return _open_libc() if sys.platform == "linux" else None


@functools.cache
def _open_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def process_alive(pid: int) -> bool:
    """Whether process *pid* exists (and is not this process)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_writer_alive(name: str) -> bool:
    """Whether the process that named temporary file *name* still runs.

    Its pid is the third part from the end: ``ID.pPID.N.tmp`` for the spool's and
    mailboxes' files, ``.NAME.PID.NS.tmp`` for state files. A name of another form
    belongs to no live writer.
    """
    parts = name.split(".")
    if len(parts) < 4:
        return False
    try:
        return process_alive(int(parts[-3].removeprefix("p")))
    except ValueError:
        return False


def settle_heap() -> None:
    """Exempt what start-up allocated from the cyclic garbage collector's full passes.

    Called once a long-running process (serve, a worker, the delivery process) has
    started: its modules, settings and classes live as long as it does, and each
    full collection would otherwise walk all of them again (``gc.freeze``).
    """
    gc.collect()
    gc.freeze()


def end_with_parent(parent: int) -> bool:
    """Have Linux send this process SIGTERM when its parent ends (``PR_SET_PDEATHSIG``).

    Returns False when the parent (pid *parent*) has ended already. Elsewhere nothing
    is set up and True is returned.
    """
    c = libc()
    if c is not None:
        with contextlib.suppress(OSError, AttributeError):
            c.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return parent <= 0 or os.getppid() == parent


def send_report(fd: int, answer: dict[str, Any]) -> None:
    """Write a child's one start-up *answer* (JSON) to the pipe *fd* and close it.

    Errors are ignored: a parent that is gone reads nothing anyway.
    """
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(answer).encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def read_report(fd: int) -> dict[str, Any]:
    """Read a child's start-up answer from the pipe *fd* until EOF and close it.

    A child that ended without writing, or wrote something else, gives ``{}``.
    """
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        answer = {}
    return answer if isinstance(answer, dict) else {}
