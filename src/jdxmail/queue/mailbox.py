"""Local mailboxes: ``<mailbox root>/<recipient>/<message-id>.eml``, the guide's layout.

Addresses and Message-IDs come from the network, so they are never used as paths
as they are: every character outside letters, digits and ``._+-=@`` becomes ``_``,
a leading dot is replaced, names are kept under 200 bytes, and a recipient whose
name had to change gets a short hash of the real address appended (so two different
odd addresses never share a mailbox). A second message with the same Message-ID in
the same mailbox gets ``-1``, ``-2``… before ``.eml``; nothing is overwritten.

Each copy starts with ``Return-Path: <envelope sender>`` and ``Delivered-To:
<recipient>`` (RFC 5321 4.4: the final delivery records the envelope in the
message), so the dev inbox can show the SMTP envelope without a second file per
message; the two lines are written with the data in the same ``writev``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from jdxmail.queue.durable import move_no_replace

__all__ = [
    "MailboxDelivery",
    "delivery_head",
    "mailbox_dir_for",
    "mailbox_name",
    "message_file_name",
    "safe_name",
]

_ALLOWED_PUNCTUATION = frozenset("._+-=@")
#: a name safe_name keeps as it is: ASCII letters, digits and that punctuation, no leading dot
_PLAIN_NAME = re.compile(r"(?:[A-Za-z0-9_+=@-][A-Za-z0-9._+=@-]*)?")
_MAX_NAME_BYTES = 200
_MAX_COLLISIONS = 10_000


def safe_name(text: str, max_bytes: int = _MAX_NAME_BYTES) -> str:
    """*text* with every character unsafe in a file name replaced by ``_``.

    Letters and digits (any script) and ``._+-=@`` are kept; a leading ``.`` becomes
    ``_`` (no hidden files, no ``.``/``..``); the UTF-8 form is cut to *max_bytes*.
    """
    if len(text) <= max_bytes and _PLAIN_NAME.fullmatch(text):
        return text  # (the common case, ASCII and safe already: same result, one match)
    chars = [c if (c.isalnum() or c in _ALLOWED_PUNCTUATION) else "_" for c in text]
    name = "".join(chars)
    if name.startswith("."):
        name = "_" + name[1:]
    encoded = name.encode("utf-8")
    if len(encoded) > max_bytes:
        name = encoded[:max_bytes].decode("utf-8", errors="ignore")
    return name


def mailbox_name(recipient: str) -> str:
    """The folder name of *recipient*'s mailbox: the address in lower case, made safe."""
    address = recipient.strip().strip("<>").lower()
    name = safe_name(address, _MAX_NAME_BYTES - 9)
    if name != address or not name:
        digest = hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name}~{digest}"
    return name


def mailbox_dir_for(mailbox_root: Path, recipient: str) -> Path:
    """The mailbox folder of *recipient* under *mailbox_root* (always a direct child)."""
    return mailbox_root / mailbox_name(recipient)


def message_file_name(message_id: str, fallback: str) -> str:
    """``<message-id>`` made safe, without ``.eml``; *fallback* when nothing is left."""
    name = safe_name(message_id.strip().strip("<>"))
    return name if name.strip("_") else fallback


@functools.lru_cache(maxsize=1024)
def delivery_head(mail_from: str, recipient: str) -> bytes:
    """The ``Return-Path`` and ``Delivered-To`` lines put before a mailbox copy.

    Kept for the last senders and recipients seen: the same few pairs come again and
    again in a dev inbox, and the lines are made per local recipient of every message.
    """
    sender = _LINE_BREAKS.sub("", mail_from)
    rcpt = _LINE_BREAKS.sub("", recipient)
    text = f"Return-Path: <{sender}>\r\nDelivered-To: <{rcpt}>\r\n"
    return text.encode("utf-8", "surrogateescape")


_LINE_BREAKS = re.compile(r"[\r\n\0]")


@dataclass(slots=True)
class MailboxDelivery:
    """One message file for one local mailbox: written to a tmp file, then moved into place."""

    recipient: str
    directory: Path
    name: str

    def ensure_directory(self) -> set[Path]:
        """Create the mailbox folder if needed; return the folders whose entries changed."""
        try:
            self.directory.mkdir()
        except FileExistsError:
            return set()
        except FileNotFoundError:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            self.directory.mkdir(exist_ok=True)
        return {self.directory.parent}

    def place(self, tmp: str) -> tuple[str, set[Path]]:
        """Move *tmp* into the mailbox, making its folder first if it has none (a new
        recipient, or a folder removed by hand): the path it took, and the folders
        whose entries changed (for a caller that syncs them one by one)."""
        try:
            return self.move_into_place(tmp), set()
        except FileNotFoundError:
            if not os.path.exists(tmp):
                raise
        made = self.ensure_directory()
        return self.move_into_place(tmp), made

    def move_into_place(self, tmp: str | Path) -> str:
        """Move the file *tmp* to a free name (suffix on collision).

        The move never replaces an existing message, even one another process
        delivers with the same Message-ID at the same moment.
        """
        source = os.fspath(tmp)
        prefix = os.path.join(self.directory, self.name)
        for attempt in range(_MAX_COLLISIONS):
            final = f"{prefix}-{attempt}.eml" if attempt else f"{prefix}.eml"
            try:
                move_no_replace(source, final)
            except FileExistsError:
                continue
            return final
        raise FileExistsError(f"{self.directory}: too many messages named {self.name}")
