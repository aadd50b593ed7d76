"""A due message claimed for delivery: its queue file locked (an exclusive ``flock``,
so several processes and the ``queue`` CLI can share the spool) and read with its
delivery state; a corrupt one moved to corrupt/.

The functions here block on the file system: small files are claimed and read in the
event loop (a few short system calls), big ones finished off it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

from jdxmail.queue.spool import (
    CorruptSpoolFile,
    QueuedMessage,
    Spool,
    claim,
    claim_sized,
    read_queued_fd,
)
from jdxmail.queue.state import DeliveryState, StateError, read_json
from jdxmail.sizes import KEEP_IN_FILE_OVER

__all__ = [
    "KEEP_IN_FILE_OVER",
    "ClaimedMessage",
    "claim_message",
    "move_corrupt",
    "quarantine",
    "read_claimed",
]

logger = logging.getLogger("jdxmail.queue")


@dataclass(slots=True)
class ClaimedMessage:
    """A claimed message with its state, or the reason it could not be read."""

    fd: int
    message: QueuedMessage | None = None
    state: DeliveryState | None = None
    corrupt: str = ""
    notes: list[str] = field(default_factory=list)
    had_state: bool = False
    #: the queue file's size
    size: int = 0


def claim_message(spool: Spool, queue_id: str) -> ClaimedMessage | None:
    """Claim *queue_id* and read it with its state; None if gone or taken.

    A file over the in-memory limit is only claimed (its ``message`` stays None)
    for :func:`read_claimed` to finish off the event loop.
    """
    claimed = claim_sized(spool.queue_file(queue_id))
    if claimed is None:
        return None
    fd, size = claimed
    loaded = ClaimedMessage(fd, size=size)
    if size > KEEP_IN_FILE_OVER:
        return loaded
    read_claimed(spool, loaded, queue_id)
    return loaded


def read_claimed(spool: Spool, loaded: ClaimedMessage, queue_id: str) -> None:
    """Read the claimed queue file and its state into *loaded*."""
    fd = loaded.fd
    try:
        loaded.message = read_queued_fd(
            fd, queue_id, keep_over=KEEP_IN_FILE_OVER, file_size=loaded.size
        )
    except CorruptSpoolFile as exc:
        loaded.corrupt = str(exc)
        return
    except BaseException:
        os.close(fd)
        loaded.fd = -1
        raise
    state_file = spool.state_file(queue_id)
    if not os.access(state_file, os.F_OK):
        # the usual case: a state file is only written after a try that failed
        # (under the lock this engine now holds, so none can appear meanwhile)
        loaded.state = DeliveryState.fresh(loaded.message.recipients)
        return
    state_path = spool.state_path(queue_id)
    try:
        data = read_json(state_path)
        loaded.had_state = data is not None
        if data is not None:
            loaded.state = DeliveryState.from_json(data, loaded.message.recipients)
    except StateError as exc:
        loaded.notes.append(f"state file unreadable ({exc}); starting over")
        with contextlib.suppress(OSError):
            os.replace(state_path, spool.corrupt_dir / f"{queue_id}.json")
    if loaded.state is None:
        loaded.state = DeliveryState.fresh(loaded.message.recipients)


def quarantine(spool: Spool, queue_id: str) -> None:
    """Move a message that keeps crashing the worker aside (under its lock)."""
    fd = claim(spool.queue_path(queue_id))
    if fd is None:
        return
    try:
        move_corrupt(spool, queue_id)
    except OSError as exc:
        logger.error("%s: could not move it aside: %s", queue_id, exc)
    finally:
        os.close(fd)


def move_corrupt(spool: Spool, queue_id: str) -> None:
    """Move a queue file and its state to corrupt/ (blocking: call in a thread)."""
    os.replace(spool.queue_path(queue_id), spool.corrupt_dir / f"{queue_id}.msg")
    state = spool.state_path(queue_id)
    with contextlib.suppress(FileNotFoundError):
        os.replace(state, spool.corrupt_dir / f"{queue_id}.json")
