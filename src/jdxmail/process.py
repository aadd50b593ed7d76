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

from jdxmail.sizes import MIB

__all__ = [
    "end_with_parent",
    "keep_freed_memory",
    "libc",
    "process_alive",
    "read_report",
    "send_report",
    "settle_heap",
    "tmp_writer_alive",
    "uses_glibc",
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


#: mallopt() parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap (not mmap), so they are reused when freed
HEAP_BLOCK_LIMIT = 4 * MIB
#: free memory at the top of the heap kept for the next blocks instead of given back
HEAP_KEEP = 32 * MIB


def settle_heap() -> None:
    """Set a long-running process's heap up for its steady state, once it has started.

    Called by serve, each worker and the delivery process. What start-up allocated
    (modules, settings, classes) lives as long as the process, so it is exempted
    from the cyclic garbage collector's full passes (``gc.freeze``). And glibc is
    told to keep freed memory for reuse (:func:`keep_freed_memory`).
    """
    gc.collect()
    gc.freeze()
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next blocks; False elsewhere.

    Each message of ~100 KB makes a few blocks of its size in each process (the
    data as read, its checked copy, the queue file read back). By default glibc gives
    the top of its heap back to the kernel once 128 KiB of it is free, and serves
    blocks from 128 KiB up with mmap, so the next message's blocks fault their pages
    in again: a page fault costs microseconds on a virtual machine, and a 100 KB
    message then costs a few dozen of them per process. Blocks up to
    HEAP_BLOCK_LIMIT now come from the heap and up to HEAP_KEEP of free heap is kept.
    Larger blocks are still mapped and unmapped (a big message is held in pieces of
    at most a MiB: sizes.py), so the memory kept is bounded by the busiest moment.
    """
    c = libc()
    mallopt = getattr(c, "mallopt", None) if c is not None else None
    if mallopt is None or not uses_glibc():
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT)) and bool(
        mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP)
    )


def uses_glibc() -> bool:
    """True when this process runs on glibc (musl and others take mallopt's numbers
    differently, or ignore them)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


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
