"""Release: send a caught message on through the configured relay (Mailpit's release).

The message is put on the spool for the addresses the user typed, like any message
a client sent for relaying: the delivery engine relays it durably, with retries,
bounces and the relay's quota, and ``jdxmail queue`` shows it. The mailbox copy's
envelope lines (``Return-Path``, ``Delivered-To``) are taken off first; the rest,
including jdxmail's ``Received:`` header, goes as it was received.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Protocol

from jdxmail.inbox.message import header_section, parse_summary, strip_envelope
from jdxmail.queue.spool import AcceptedMessage

__all__ = ["MAX_RELEASE_RECIPIENTS", "ReleaseError", "parse_recipients", "release"]

logger = logging.getLogger("jdxmail.queue")

#: at most this many addresses per release
MAX_RELEASE_RECIPIENTS = 50
_ADDRESS = re.compile(r"[^\s<>()\[\],;:\"@\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


class ReleaseError(ValueError):
    """The release cannot be done as asked (no relay, a bad address); says why."""


class _Store(Protocol):
    async def store(self, message: AcceptedMessage) -> str: ...


def parse_recipients(value: object) -> list[str]:
    """Addresses from a list or a comma/space separated text; ReleaseError if any is bad."""
    if isinstance(value, str):
        items = [v for v in re.split(r"[,;\s]+", value) if v]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value if v.strip()]
    else:
        raise ReleaseError("to must be a list of addresses or a text of addresses")
    if not items:
        raise ReleaseError("give at least one address to send the message to")
    if len(items) > MAX_RELEASE_RECIPIENTS:
        raise ReleaseError(f"at most {MAX_RELEASE_RECIPIENTS} addresses per release")
    out: list[str] = []
    for item in items:
        address = item.strip().strip("<>")
        if not _ADDRESS.fullmatch(address) or len(address) > 254:
            raise ReleaseError(f"not an address: {item[:80]!r}")
        if address.casefold() not in (a.casefold() for a in out):
            out.append(address)
    return out


async def release(
    store: _Store, raw: bytes, recipients: list[str], *, mail_from: str | None = None
) -> str:
    """Queue mailbox file bytes *raw* for relaying to *recipients*; the queue id.

    The envelope sender is *mail_from*, else the copy's own envelope sender, else the
    From address. Raises SpoolError when the spool cannot store it.
    """
    data = strip_envelope(raw)
    summary = parse_summary(header_section(raw))
    sender = mail_from
    if sender is None:
        sender = summary.envelope.mail_from
    if sender is None:
        found = _ADDRESS.search(summary.sender)
        sender = found.group(0) if found else ""
    message = AcceptedMessage(
        mail_from=sender,
        relay_recipients=tuple(recipients),
        local_recipients=(),
        data=data,
        message_id=summary.message_id or f"released.{time.time_ns()}@jdxmail",
        auth_user=None,
        client_address="console",
        session_id="release",
        received_at=time.time(),
    )
    queue_id = await store.store(message)
    logger.info(
        "released <%s> from the inbox to %s (queue id %s)",
        message.message_id,
        ",".join(recipients),
        queue_id,
    )
    return queue_id
