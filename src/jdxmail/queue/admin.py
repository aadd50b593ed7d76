"""What ``jdxmail queue`` does to the spool, safely while ``serve`` runs.

The spool is the interface: every change takes the same exclusive ``flock`` on the
queue file that the delivery engine holds while it delivers, so a message is never
deleted or rescheduled in the middle of a hand-off. ``flush`` also touches
``<spool>/flush`` and ``retry ID`` leaves ``<spool>/retry/ID``, which a running engine
notices within a second (a retry makes that one message due, not the whole queue).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jdxmail.queue.durable import claim
from jdxmail.queue.layout import FLUSH_FILE, RETRY_DIR, STATE_SUFFIX, queue_id_time
from jdxmail.queue.queuefile import MAGIC, QUEUE_SUFFIX
from jdxmail.queue.state import (
    FAILED,
    PENDING,
    DeliveryState,
    RecipientState,
    StateError,
    read_json,
    write_json_atomic,
)

__all__ = [
    "MessageBusy",
    "MessageNotFound",
    "QueueAdminError",
    "QueueEntry",
    "delete_message",
    "failed_entries",
    "flush_queue",
    "list_queue",
    "retry_message",
    "show_message",
]


class QueueAdminError(Exception):
    """A queue command could not do what was asked."""


class MessageNotFound(QueueAdminError):
    """No queued (or failed) message has that id."""


class MessageBusy(QueueAdminError):
    """The message is being delivered right now; try again in a moment."""


@dataclass(slots=True)
class QueueEntry:
    """One message as ``queue list`` / ``show`` / ``failed`` present it."""

    queue_id: str
    mail_from: str
    recipients: list[str]
    size: int
    received_at: float
    message_id: str
    attempts: int = 0
    next_try: float = 0.0
    last_reply: str = ""
    relay: str = ""
    waiting_for: str = ""
    pending: list[str] = field(default_factory=list)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    corrupt: str = ""

    def age(self, now: float | None = None) -> float:
        """Seconds since the message was accepted."""
        return max(0.0, (time.time() if now is None else now) - self.received_at)

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """A JSON-ready dict (times as epoch seconds, plus the age)."""
        return {
            "id": self.queue_id,
            "from": self.mail_from,
            "recipients": self.recipients,
            "size": self.size,
            "received_at": self.received_at,
            "age_seconds": round(self.age(now), 1),
            "message_id": self.message_id,
            "attempts": self.attempts,
            "next_try": self.next_try or None,
            "last_reply": self.last_reply,
            "relay": self.relay,
            "waiting_for": self.waiting_for,
            "pending": self.pending,
            "outcomes": self.outcomes,
            **({"corrupt": self.corrupt} if self.corrupt else {}),
        }


def _envelope(path: Path) -> dict[str, Any]:
    """The JSON envelope line of a queue file, without reading the message data."""
    with open(path, "rb") as handle:
        first = handle.readline()
        line = handle.readline()
    if first != MAGIC:
        raise ValueError("not a jdxmail spool file")
    header = json.loads(line)
    if not isinstance(header, dict):
        raise ValueError("bad envelope")
    return header


def _entry(path: Path, state_data: Any) -> QueueEntry:
    queue_id = path.name.removesuffix(QUEUE_SUFFIX)
    try:
        header = _envelope(path)
        recipients = [str(r) for r in header["recipients"]]
        entry = QueueEntry(
            queue_id=queue_id,
            mail_from=str(header["mail_from"]),
            recipients=recipients,
            size=int(header["size"]),
            received_at=float(header["received_at"]),
            message_id=str(header["message_id"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        born = queue_id_time(queue_id) or 0.0
        return QueueEntry(queue_id, "", [], 0, born, "", corrupt=str(exc))
    state = None
    if state_data is not None:
        with contextlib.suppress(StateError):
            state = DeliveryState.from_json(state_data, tuple(recipients))
    if state is None:
        state = DeliveryState.fresh(tuple(recipients))
    entry.attempts = state.attempts
    entry.next_try = state.next_try
    entry.last_reply = state.last_reply
    entry.relay = state.last_relay
    entry.waiting_for = state.waiting_for
    entry.pending = state.pending()
    entry.outcomes = {
        r: {"status": s.status, "code": s.code, "reply": s.reply, "relay": s.relay}
        for r, s in state.recipients.items()
    }
    return entry


def _state_path(spool_dir: Path | str, queue_id: str) -> Path:
    """``state/ID.json`` of a queued message (what Spool.state_path gives a Spool)."""
    return Path(spool_dir) / "state" / f"{queue_id}{STATE_SUFFIX}"


def _state_data(path: Path) -> Any:
    try:
        return read_json(path)
    except (StateError, OSError):
        return None


def list_queue(spool_dir: Path) -> list[QueueEntry]:
    """Every queued message, oldest first."""
    queue_dir = Path(spool_dir) / "queue"
    if not queue_dir.is_dir():
        return []
    entries = []
    for path in sorted(queue_dir.glob(f"*{QUEUE_SUFFIX}")):
        queue_id = path.name.removesuffix(QUEUE_SUFFIX)
        state = _state_data(_state_path(spool_dir, queue_id))
        if path.exists():
            entries.append(_entry(path, state))
    return entries


def failed_entries(spool_dir: Path) -> list[QueueEntry]:
    """Every message in ``failed/``, with the reason recorded when it was given up on."""
    failed_dir = Path(spool_dir) / "failed"
    if not failed_dir.is_dir():
        return []
    entries = []
    for path in sorted(failed_dir.glob(f"*{QUEUE_SUFFIX}")):
        record = _state_data(path.with_suffix(".json"))
        state = record.get("state") if isinstance(record, dict) else None
        entries.append(_entry(path, state))
    return entries


def _find(spool_dir: Path, queue_id: str) -> tuple[Path, bool]:
    """The file of *queue_id* and whether it is in failed/. Raises MessageNotFound."""
    if not queue_id or "/" in queue_id or queue_id.startswith("."):
        raise MessageNotFound(f"no message with id {queue_id!r}")
    queued = Path(spool_dir) / "queue" / f"{queue_id}{QUEUE_SUFFIX}"
    if queued.exists():
        return queued, False
    failed = Path(spool_dir) / "failed" / f"{queue_id}{QUEUE_SUFFIX}"
    if failed.exists():
        return failed, True
    raise MessageNotFound(
        f"no queued or failed message with id {queue_id} (delivered, deleted, or a typo)"
    )


def show_message(spool_dir: Path, queue_id: str) -> tuple[QueueEntry, str, bool]:
    """The entry of *queue_id*, the message header text, and whether it failed."""
    path, failed = _find(spool_dir, queue_id)
    if failed:
        record = _state_data(path.with_suffix(".json"))
        state = record.get("state") if isinstance(record, dict) else None
    else:
        state = _state_data(_state_path(spool_dir, queue_id))
    entry = _entry(path, state)
    raw = path.read_bytes()
    start = raw.find(b"\n", len(MAGIC)) + 1
    end = raw.find(b"\r\n\r\n", start)
    header = raw[start : end if end >= 0 else len(raw)].decode("utf-8", "replace")
    return entry, header.replace("\r\n", "\n"), failed


def _ask_retry(spool_dir: Path, queue_id: str) -> None:
    """Ask a running engine to deliver *queue_id* now (and nothing else)."""
    requests = Path(spool_dir) / RETRY_DIR
    requests.mkdir(exist_ok=True)
    (requests / queue_id).touch()


def _touch_flush(spool_dir: Path) -> None:
    flag = Path(spool_dir) / FLUSH_FILE
    flag.touch()
    now = time.time()
    os.utime(flag, (now, now))


def _due_now(spool_dir: Path, queue_id: str, recipients: list[str]) -> None:
    state_path = _state_path(spool_dir, queue_id)
    data = _state_data(state_path)
    if data is None:
        return
    try:
        state = DeliveryState.from_json(data, tuple(recipients))
    except StateError:
        return
    state.next_try = 0.0
    state.waiting_for = ""
    write_json_atomic(state_path, state.to_json())


def flush_queue(spool_dir: Path) -> tuple[int, int]:
    """Make every queued message due now; return (rescheduled, busy being delivered)."""
    done = busy = 0
    for entry in list_queue(spool_dir):
        path = Path(spool_dir) / "queue" / f"{entry.queue_id}{QUEUE_SUFFIX}"
        fd = claim(path)
        if fd is None:
            busy += path.exists()
            continue
        try:
            _due_now(spool_dir, entry.queue_id, entry.recipients)
            done += 1
        finally:
            os.close(fd)
    _touch_flush(spool_dir)
    return done, busy


def retry_message(spool_dir: Path, queue_id: str) -> bool:
    """Retry *queue_id* now; a failed message goes back into the queue.

    Returns True when a failed message was re-queued (its failed recipients pending
    again). Raises MessageNotFound or MessageBusy.
    """
    path, failed = _find(spool_dir, queue_id)
    fd = claim(path)
    if fd is None:
        raise MessageBusy(f"{queue_id} is being delivered right now; try again in a moment")
    try:
        entry = _entry(path, None)
        if failed:
            record = _state_data(path.with_suffix(".json"))
            data = record.get("state") if isinstance(record, dict) else None
            try:
                state = DeliveryState.from_json(data, tuple(entry.recipients))
            except StateError:
                state = DeliveryState.fresh(tuple(entry.recipients))
            for recipient, item in state.recipients.items():
                if item.status == FAILED:
                    state.recipients[recipient] = RecipientState(status=PENDING)
            state.next_try = 0.0
            state.waiting_for = ""
            state_path = _state_path(spool_dir, queue_id)
            write_json_atomic(state_path, state.to_json(), sync=True)
            os.replace(path, Path(spool_dir) / "queue" / path.name)
            with contextlib.suppress(FileNotFoundError):
                path.with_suffix(".json").unlink()
        else:
            _due_now(spool_dir, queue_id, entry.recipients)
    finally:
        os.close(fd)
    _ask_retry(spool_dir, queue_id)
    return failed


def delete_message(spool_dir: Path, queue_id: str) -> bool:
    """Delete *queue_id* (queued or failed); True if it was a failed one.

    Raises MessageNotFound or MessageBusy (never deletes a message mid-delivery).
    """
    path, failed = _find(spool_dir, queue_id)
    fd = claim(path)
    if fd is None:
        if not path.exists():
            raise MessageNotFound(f"{queue_id} was delivered or deleted meanwhile")
        raise MessageBusy(f"{queue_id} is being delivered right now; try again in a moment")
    try:
        path.unlink()
        side = path.with_suffix(".json") if failed else _state_path(spool_dir, queue_id)
        with contextlib.suppress(FileNotFoundError):
            side.unlink()
    finally:
        os.close(fd)
    return failed
