"""Small process facts shared by the spool, the delivery process and serve's workers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

__all__ = ["end_with_parent", "process_alive"]

_PR_SET_PDEATHSIG = 1


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


def end_with_parent(parent: int) -> bool:
    """Have Linux send this process SIGTERM when its parent ends (``PR_SET_PDEATHSIG``).

    Returns False when the parent (pid *parent*) has ended already. Elsewhere nothing
    is set up and True is returned.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return parent <= 0 or os.getppid() == parent
