"""The mutable delivery state of a queued message (``state/ID.json``) and failed records.

The queue file never changes; what the delivery engine learns (attempts, next try,
last upstream reply, each recipient's outcome) lives beside it and is replaced
atomically (write a temporary file, rename over). Losing a state file (a power cut
right after a rename) costs at most a duplicate delivery, never a message: without
a state file every recipient counts as pending.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PENDING",
    "DeliveryState",
    "RecipientState",
    "StateError",
    "read_json",
    "write_json_atomic",
]

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


class StateError(ValueError):
    """A state file cannot be parsed."""


@dataclass(slots=True)
class RecipientState:
    """One recipient's outcome so far."""

    status: str = PENDING
    #: the enhanced status code of the last reply (``2.0.0``, ``4.2.1``, ``5.1.1``)
    code: str = ""
    reply: str = ""
    relay: str = ""
    at: float = 0.0


@dataclass(slots=True)
class DeliveryState:
    """What the engine knows about a queued message besides its envelope."""

    attempts: int = 0
    next_try: float = 0.0
    first_try: float = 0.0
    last_try: float = 0.0
    last_reply: str = ""
    last_relay: str = ""
    #: why the message waits without an attempt (quota spent, relays skipped)
    waiting_for: str = ""
    recipients: dict[str, RecipientState] = field(default_factory=dict)
    #: recipients the sender was already sent a bounce for (``queue retry`` of a failed
    #: message keeps this, so failing again does not bounce them a second time)
    bounced: list[str] = field(default_factory=list)

    @classmethod
    def fresh(cls, recipients: tuple[str, ...]) -> DeliveryState:
        """The state of a message never tried: every recipient pending, due now."""
        return cls(recipients={r: RecipientState() for r in recipients})

    def pending(self) -> list[str]:
        """Recipients still to be delivered."""
        return [r for r, s in self.recipients.items() if s.status == PENDING]

    def has_pending(self) -> bool:
        """Whether any recipient is still to be delivered."""
        return self._has(PENDING)

    def has_failed(self) -> bool:
        """Whether any recipient was given up on."""
        return self._has(FAILED)

    def _has(self, status: str) -> bool:
        for state in self.recipients.values():  # noqa: SIM110 (any() resumes a generator per item)
            if state.status == status:
                return True
        return False

    def failed(self) -> dict[str, RecipientState]:
        """Recipients given up on."""
        return {r: s for r, s in self.recipients.items() if s.status == FAILED}

    def unbounced(self) -> dict[str, RecipientState]:
        """Recipients given up on that the sender has not had a bounce for yet."""
        return {r: s for r, s in self.failed().items() if r not in self.bounced}

    def delivered(self) -> dict[str, RecipientState]:
        """Recipients the relay accepted."""
        return {r: s for r, s in self.recipients.items() if s.status == DELIVERED}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, recipients: tuple[str, ...]) -> DeliveryState:
        """Parse a state file's content; recipients missing from it count as pending."""
        try:
            state = cls(
                attempts=int(data["attempts"]),
                next_try=float(data["next_try"]),
                first_try=float(data.get("first_try", 0.0)),
                last_try=float(data.get("last_try", 0.0)),
                last_reply=str(data.get("last_reply", "")),
                last_relay=str(data.get("last_relay", "")),
                waiting_for=str(data.get("waiting_for", "")),
                bounced=[str(r) for r in data.get("bounced", [])],
                recipients={
                    str(r): RecipientState(**s) for r, s in dict(data["recipients"]).items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"unreadable delivery state: {exc}") from None
        for recipient in recipients:
            state.recipients.setdefault(recipient, RecipientState())
        return state


def write_json_atomic(path: Path, data: Any, *, sync: bool = False) -> None:
    """Replace *path* with *data* as JSON so a reader sees the old or the new file.

    A folder someone deleted is made again. Raises OSError (the disk is full…); the
    old file is then left as it was, and no temporary file.
    """
    text = json.dumps(data, ensure_ascii=False, indent=1)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        try:
            handle = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(tmp, "w", encoding="utf-8")  # noqa: SIM115
        with handle:
            handle.write(text)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json(path: Path) -> Any:
    """Parse *path*; None when it does not exist. Raises StateError when unparsable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StateError(f"{path.name}: not JSON ({exc})") from None
