"""Bounces: RFC 3464 delivery status notifications to the envelope sender.

A bounce is a ``multipart/report; report-type=delivery-status`` message with three
parts: a plain-text explanation, the ``message/delivery-status`` fields (one block
per failed recipient, with the upstream's reply as ``Diagnostic-Code``) and the
original message's header (``text/rfc822-headers``). It is sent with the null
sender ``<>`` so that it can never bounce back (RFC 5321 §6.1); a message whose
sender is ``<>`` gets no bounce at all.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from jdxmail.queue.spool import AcceptedMessage, QueuedMessage, Spool
from jdxmail.queue.state import DeliveryState, RecipientState, write_json_atomic

__all__ = [
    "EXPIRED_STATUS",
    "FailedRecipient",
    "build_dsn",
    "human_duration",
    "move_to_failed",
    "store_bounce",
]

logger = logging.getLogger("jdxmail.queue")

#: the status of a recipient given up on because the message outlived its lifetime
EXPIRED_STATUS = "4.4.7"


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """A recipient given up on: its status (``5.1.1``), the reply, the relay that said it."""

    recipient: str
    status: str
    reply: str
    relay: str
    last_attempt: float
    #: the host name of the relay that gave the reply (``Remote-MTA``)
    remote_mta: str = ""


def human_duration(seconds: float) -> str:
    """``5 days``, ``2 hours 30 minutes``, ``2 minutes``, ``45 seconds``: for people."""
    total = max(0, round(seconds))
    parts = []
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
    return " ".join(parts[:2]) or "0 seconds"


def _header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def _original_header(data: bytes, name: bytes) -> str:
    for line in _header_block(data).split(b"\r\n"):
        if line[: len(name) + 1].lower() == name.lower() + b":":
            return line[len(name) + 1 :].strip().decode("utf-8", "replace")
    return ""


def _clean(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def _explanation(
    queue_id: str, refused: Sequence[FailedRecipient], expired: Sequence[FailedRecipient]
) -> list[str]:
    """The plain-text lines telling the sender which recipients failed and why."""
    lines: list[str] = []
    for group, reason in (
        (refused, "could not be delivered to these recipients"),
        (expired, "could not be delivered in time (the relays kept failing) to these recipients"),
    ):
        if not group:
            continue
        lines += [f"Your message (queue id {queue_id}) {reason}:", ""]
        for item in group:
            lines.append(f"  <{item.recipient}>: {_clean(item.reply)}")
            if item.relay:
                lines.append(f"    (reported by relay {item.relay})")
        lines.append("")
    return lines


def _status_fields(item: FailedRecipient) -> list[str]:
    """One failed recipient's block of ``message/delivery-status`` fields (RFC 3464 §2.3)."""
    lines = [
        "",
        f"Final-Recipient: rfc822; {item.recipient}",
        "Action: failed",
        f"Status: {item.status}",
    ]
    if item.remote_mta:
        lines.append(f"Remote-MTA: dns; {_clean(item.remote_mta)}")
    lines.append(f"Diagnostic-Code: smtp; {_clean(item.reply)}")
    if item.last_attempt:
        lines.append(
            f"Last-Attempt-Date: {email.utils.formatdate(item.last_attempt, localtime=False)}"
        )
    return lines


def build_dsn(
    *,
    reporting_host: str,
    original_sender: str,
    original_data: bytes,
    queue_id: str,
    received_at: float,
    failed: Sequence[FailedRecipient],
    now: float | None = None,
) -> tuple[bytes, str]:
    """The bytes (CRLF) and Message-ID of a DSN telling *original_sender* of *failed*."""
    now = time.time() if now is None else now
    boundary = f"=_jdxmail_{secrets.token_hex(12)}"
    message_id = f"{queue_id}.{secrets.token_hex(4)}.dsn@{reporting_host}"
    subject = _original_header(original_data, b"Subject")
    # a refusal (5.x.x) and an expiry (4.4.7) are told apart: one needs a new address,
    # the other only a working relay
    refused = [f for f in failed if f.status != EXPIRED_STATUS]
    expired = [f for f in failed if f.status == EXPIRED_STATUS]
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_host}>",
        f"To: <{original_sender}>",
        f"Subject: Undelivered Mail Returned to Sender{': ' + _clean(subject) if subject else ''}",
        f"Date: {email.utils.formatdate(now, localtime=False)}",
        f"Message-ID: <{message_id}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at {reporting_host}.",
        "",
    ]
    lines += _explanation(queue_id, refused, expired)
    lines += [
        "The delivery status and the header of your message follow.",
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_host}",
        f"X-Jdxmail-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(received_at, localtime=False)}",
    ]
    for item in failed:
        lines += _status_fields(item)
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    original = _header_block(original_data)
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return head + original + tail, message_id


async def store_bounce(
    spool: Spool,
    message: QueuedMessage,
    recipients: Mapping[str, RecipientState],
    *,
    reporting_host: str,
    local_domains: Collection[str],
    relay_hosts: Mapping[str, str],
    clock: Callable[[], float],
) -> None:
    """Store a bounce of *message* for the failed *recipients* in *spool*, to its sender
    (a local mailbox when the sender's domain is one of *local_domains*).

    Raises SpoolError when the bounce could not be stored.
    """
    failed = [
        FailedRecipient(r, s.code or "5.0.0", s.reply, s.relay, s.at, relay_hosts.get(s.relay, ""))
        for r, s in recipients.items()
    ]
    data, message_id = build_dsn(
        reporting_host=reporting_host,
        original_sender=message.mail_from,
        original_data=message.data,
        queue_id=message.queue_id,
        received_at=message.received_at,
        failed=failed,
        now=clock(),
    )
    sender = message.mail_from
    local = sender.rsplit("@", 1)[-1].lower() in local_domains
    bounce = AcceptedMessage(
        mail_from="",
        relay_recipients=() if local else (sender,),
        local_recipients=(sender,) if local else (),
        data=data,
        message_id=message_id,
        auth_user=None,
        client_address="",
        session_id=f"bounce-{message.queue_id}",
        received_at=clock(),
    )
    bounce_id = await spool.store(bounce)
    logger.info(
        "%s: bounce %s to <%s> for %d recipient(s)",
        message.queue_id,
        bounce_id,
        sender,
        len(failed),
        extra={"session": message.session_id},
    )


def move_to_failed(spool: Spool, message: QueuedMessage, state: DeliveryState, now: float) -> None:
    """Keep *message* in failed/ with a record of its recipients' outcomes (blocking:
    call in a thread, under the queue file's lock)."""
    record = {
        "queue_id": message.queue_id,
        "mail_from": message.mail_from,
        "message_id": message.message_id,
        "received_at": message.received_at,
        "failed_at": now,
        "state": state.to_json(),
    }
    failed_dir = spool.failed_dir
    write_json_atomic(failed_dir / f"{message.queue_id}.json", record, sync=True)
    os.replace(spool.queue_path(message.queue_id), failed_dir / f"{message.queue_id}.msg")
    with contextlib.suppress(FileNotFoundError):
        spool.state_path(message.queue_id).unlink()
