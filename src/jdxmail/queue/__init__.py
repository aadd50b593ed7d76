"""The queue subsystem: the durable spool, local mailboxes and the delivery engine."""

from __future__ import annotations

from jdxmail.queue.spool import (
    AcceptedMessage,
    CorruptSpoolFile,
    QueuedMessage,
    Spool,
    SpoolError,
    SpoolStats,
    spool_stats,
)

__all__ = [
    "AcceptedMessage",
    "CorruptSpoolFile",
    "QueuedMessage",
    "Spool",
    "SpoolError",
    "SpoolStats",
    "spool_stats",
]
