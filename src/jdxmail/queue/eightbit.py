"""8-bit content for a relay that does not offer 8BITMIME (RFC 6152): a 7bit copy.

A message with bytes above 127 may only be sent to a server that offers 8BITMIME.
For one that does not, ``Delivery.EightBitDowngrade: "Convert"`` (the default) sends
a copy in which only what needs it is re-encoded, as a mail server must (RFC 6152
§3, RFC 2045):

- each leaf part whose body holds 8-bit bytes: ``text/*`` as quoted-printable,
  anything else as base64, with ``Content-Transfer-Encoding`` set to match;
- a multipart or ``message/rfc822`` part that said ``8bit``/``binary`` then says
  ``7bit`` (all it holds is 7bit now);
- a header with 8-bit bytes: its text (UTF-8 where it decodes, else as Latin-1) as
  RFC 2047 encoded words;
- a message without MIME headers gets ``MIME-Version: 1.0`` and a text/plain
  content type naming ``utf-8`` (or ``unknown-8bit`` when the body is not UTF-8).

Parts without 8-bit bytes are left as they were. Calls are CPU work proportional to
the message: run them in a thread.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import email.utils
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from io import BytesIO

__all__ = ["has_8bit", "to_7bit"]


def has_8bit(data: bytes) -> bool:
    """Whether *data* holds any byte above 127 (it then needs 8BITMIME or a 7bit copy)."""
    return not data.isascii()


def _header_text(value: str) -> str:
    """A header value parsed from bytes (surrogate escapes for 8-bit bytes) as text."""
    raw = value.encode("ascii", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_ADDRESS_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc"}
)


def _encoded(name: str, value: str) -> str:
    """*value* (a header with 8-bit bytes) with its text as RFC 2047 encoded words;
    in address headers only the display names, so the addresses stay readable."""
    text = " ".join(_header_text(value).split())
    if name.lower() in _ADDRESS_HEADERS:
        pairs = email.utils.getaddresses([text])
        if pairs and all(address.isascii() for _, address in pairs):
            return ", ".join(
                email.utils.formataddr((display, address), charset="utf-8")
                for display, address in pairs
            )
    return Header(text, "utf-8", header_name=name).encode(linesep="\r\n")


def _fix_headers(part: Message) -> None:
    items = list(part.raw_items())
    if all(value.isascii() for _, value in items):
        return
    for name in {name for name, _ in items}:
        del part[name]
    for name, value in items:
        part[name] = value if value.isascii() else _encoded(name, value)


def _body_bytes(part: Message) -> bytes:
    """The part's body as bytes: as sent for 7bit/8bit/binary, decoded for qp/base64."""
    body = part.get_payload(decode=True)
    assert isinstance(body, bytes)
    return body


def _recode_leaf(part: Message) -> None:
    encoding = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    # (without decode, 8-bit bytes come back as non-ASCII text)
    if str(part.get_payload()).isascii():
        if encoding in ("8bit", "binary"):  # declared so, holds only 7-bit text
            part.replace_header("Content-Transfer-Encoding", "7bit")
        return
    body = _body_bytes(part)
    if part.get_content_maintype() == "text":
        text = body.replace(b"\r\n", b"\n")
        coded = binascii.b2a_qp(text, istext=True).decode("ascii")
        name = "quoted-printable"
    else:
        coded = base64.encodebytes(body).decode("ascii")
        name = "base64"
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", name)
    else:
        part["Content-Transfer-Encoding"] = name
    part.set_payload(coded)


def to_7bit(data: bytes) -> bytes:
    """A copy of the message *data* (CRLF lines) with nothing but 7-bit bytes."""
    if not has_8bit(data):
        return data
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    if "MIME-Version" not in message and "Content-Type" not in message:
        body = _body_bytes(message)
        try:
            body.decode("utf-8")
            charset = "utf-8"
        except UnicodeDecodeError:
            charset = "unknown-8bit"
        message["MIME-Version"] = "1.0"
        message["Content-Type"] = f"text/plain; charset={charset}"
    for part in message.walk():
        _fix_headers(part)
        if part.is_multipart():
            declared = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
            if declared in ("8bit", "binary"):
                part.replace_header("Content-Transfer-Encoding", "7bit")
        else:
            _recode_leaf(part)
    out = BytesIO()
    generator = BytesGenerator(
        out, mangle_from_=False, maxheaderlen=0, policy=email.policy.compat32
    )
    generator.flatten(message, linesep="\r\n")
    return out.getvalue()
