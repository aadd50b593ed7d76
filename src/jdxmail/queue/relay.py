"""Sessions to upstream relays with aiosmtplib, and what each upstream error means.

``UseTls`` on port 465 is TLS from the first byte; on any other port STARTTLS is
*required* (``start_tls=True``: if the relay does not offer it, the attempt fails
rather than sending in plaintext). Certificates are verified unless a relay says
``VerifyCertificate: false``. AUTH uses a mechanism the relay offers (PLAIN, else
LOGIN), since some providers (Outlook) do not offer PLAIN.

Every upstream failure becomes a :class:`Verdict` through :data:`OUTCOME_TABLE`,
the one place that decides retry / bounce / fail over / count against the relay.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol

from jdxmail.queue.spool import SpooledBody
from jdxmail.settings.model import RelaySettings

__all__ = [
    "OUTCOME_TABLE",
    "AttemptResult",
    "EightBitUnsupported",
    "Outcome",
    "Payload",
    "RecipientResult",
    "RelayPool",
    "RelayUnusable",
    "Scope",
    "Stage",
    "StageError",
    "Transaction",
    "Verdict",
    "classify",
    "dot_stuffed",
    "enhanced_status",
    "payload_size",
    "rewrite_from_header",
    "send_data",
    "stuffed_pieces",
]

logger = logging.getLogger("jdxmail.relay")


class Stage(enum.Enum):
    """Where in the relay session something happened."""

    CONNECT = "connect"
    TLS = "tls"
    EHLO = "ehlo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


class Outcome(enum.Enum):
    """What becomes of a recipient after an attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    BOUNCE = "bounce"


class Scope(enum.Enum):
    """Whom a failure concerns: the relay (try another), the message, or one recipient."""

    RELAY = "relay"
    MESSAGE = "message"
    RECIPIENT = "recipient"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one failure: outcome, scope, fail over, count against the relay."""

    outcome: Outcome
    scope: Scope
    failover: bool
    trips_breaker: bool
    status: str
    code: int
    reply: str
    row: str

    @property
    def text(self) -> str:
        """The reply as a user sees it: ``550 5.1.1 no such user``."""
        return f"{self.code} {self.reply}" if self.code else self.reply


class RelayUnusable(Exception):
    """The relay session cannot be used for this attempt (STARTTLS missing, no AUTH...)."""

    def __init__(self, message: str, *, stage: Stage, status: str = "4.7.0") -> None:
        super().__init__(message)
        self.stage = stage
        self.status = status


ErrorTest = Callable[[Stage, BaseException], bool]


class EightBitUnsupported(aiosmtplib.SMTPNotSupported):
    """The message has 8-bit content and the relay does not offer 8BITMIME (RFC 6152)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the outcome table."""

    name: str
    test: ErrorTest
    outcome: Outcome
    scope: Scope
    failover: bool
    trips_breaker: bool
    status: str


def _code(exc: BaseException) -> int:
    return exc.code if isinstance(exc, aiosmtplib.SMTPResponseException) else 0


def _is_4xx(exc: BaseException) -> bool:
    return 400 <= _code(exc) < 500


def _is_5xx(exc: BaseException) -> bool:
    return 500 <= _code(exc) < 600


def _network(exc: BaseException) -> bool:
    return isinstance(exc, OSError | TimeoutError | aiosmtplib.SMTPServerDisconnected) or (
        isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPTimeoutError)
        and not isinstance(exc, aiosmtplib.SMTPResponseException)
    )


#: The one table from an upstream failure to what happens to the mail. First match
#: wins; each row is tested in tests/queue/test_outcomes.py.
OUTCOME_TABLE: tuple[Row, ...] = (
    Row(
        "certificate not trusted",
        lambda s, e: isinstance(e, ssl.SSLCertVerificationError),
        Outcome.RETRY, Scope.RELAY, True, True, "4.7.5",
    ),
    Row(
        "TLS handshake failed",
        lambda s, e: isinstance(e, ssl.SSLError),
        Outcome.RETRY, Scope.RELAY, True, True, "4.7.0",
    ),
    Row(
        "relay unusable (no STARTTLS, no usable AUTH)",
        lambda s, e: isinstance(e, RelayUnusable),
        Outcome.RETRY, Scope.RELAY, True, True, "4.7.0",
    ),
    Row(
        "service closing (421)",
        lambda s, e: _code(e) == 421,
        Outcome.RETRY, Scope.RELAY, True, True, "4.3.2",
    ),
    Row(
        "greeting or EHLO refused",
        lambda s, e: s in (Stage.CONNECT, Stage.EHLO, Stage.TLS) and _code(e) > 0,
        Outcome.RETRY, Scope.RELAY, True, True, "4.4.2",
    ),
    Row(
        "authentication refused (our configuration, never the sender's fault)",
        lambda s, e: s is Stage.AUTH,
        Outcome.RETRY, Scope.RELAY, True, True, "4.7.8",
    ),
    Row(
        "connection failed, dropped or timed out",
        lambda s, e: _network(e),
        Outcome.RETRY, Scope.RELAY, True, True, "4.4.1",
    ),
    Row(
        "relay lacks 8BITMIME for 8-bit content",
        lambda s, e: isinstance(e, EightBitUnsupported),
        Outcome.RETRY, Scope.MESSAGE, True, False, "4.6.3",
    ),
    Row(
        "relay lacks a needed extension (SMTPUTF8)",
        lambda s, e: isinstance(e, aiosmtplib.SMTPNotSupported),
        Outcome.RETRY, Scope.MESSAGE, True, False, "4.6.7",
    ),
    Row(
        "address the relay cannot take (bad syntax)",
        lambda s, e: isinstance(e, ValueError),
        Outcome.BOUNCE, Scope.RECIPIENT, False, False, "5.1.3",
    ),
    Row(
        "sender refused for now (MAIL 4xx)",
        lambda s, e: s is Stage.MAIL and _is_4xx(e),
        Outcome.RETRY, Scope.MESSAGE, True, False, "4.0.0",
    ),
    Row(
        "sender refused (MAIL 5xx)",
        lambda s, e: s is Stage.MAIL and _is_5xx(e),
        Outcome.BOUNCE, Scope.MESSAGE, False, False, "5.0.0",
    ),
    Row(
        "recipient refused for now (RCPT 4xx)",
        lambda s, e: s is Stage.RCPT and _is_4xx(e),
        Outcome.RETRY, Scope.RECIPIENT, False, False, "4.0.0",
    ),
    Row(
        "recipient refused (RCPT 5xx)",
        lambda s, e: s is Stage.RCPT and _is_5xx(e),
        Outcome.BOUNCE, Scope.RECIPIENT, False, False, "5.0.0",
    ),
    Row(
        "message refused for now (DATA 4xx)",
        lambda s, e: s is Stage.DATA and _is_4xx(e),
        Outcome.RETRY, Scope.MESSAGE, True, False, "4.0.0",
    ),
    Row(
        "message refused (DATA 5xx)",
        lambda s, e: s is Stage.DATA and _is_5xx(e),
        Outcome.BOUNCE, Scope.MESSAGE, False, False, "5.0.0",
    ),
    Row(
        "anything else (unexpected reply or error)",
        lambda s, e: True,
        Outcome.RETRY, Scope.RELAY, True, True, "4.0.0",
    ),
)  # fmt: skip

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


def enhanced_status(code: int, text: str, default: str) -> str:
    """The RFC 3463 status in *text* (``5.1.1``), else *default* with the code's class."""
    match = _ENHANCED.match(text.strip())
    if match:
        return ".".join(match.groups())
    if code >= 200:
        return f"{code // 100}{default[1:]}"
    return default


def classify(stage: Stage, exc: BaseException) -> Verdict:
    """Decide what an upstream failure at *stage* means, by :data:`OUTCOME_TABLE`."""
    for row in OUTCOME_TABLE:
        if row.test(stage, exc):
            code = _code(exc)
            if isinstance(exc, aiosmtplib.SMTPResponseException):
                reply = exc.message
            else:
                reply = f"{stage.value}: {_describe(exc)}"
            status = enhanced_status(code, reply, row.status)
            if isinstance(exc, RelayUnusable):
                status = exc.status
            return Verdict(
                outcome=row.outcome,
                scope=row.scope,
                failover=row.failover,
                trips_breaker=row.trips_breaker,
                status=status,
                code=code,
                reply=" ".join(reply.split()),
                row=row.name,
            )
    raise AssertionError("the last row matches everything")  # pragma: no cover


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
        return f"certificate not trusted ({detail})"
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    cause = exc.__cause__
    if isinstance(exc, aiosmtplib.SMTPConnectError) and isinstance(cause, OSError):
        exc = cause
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def rewrite_from_header(data: bytes, address: str) -> bytes:
    """*data* with its From: header replaced by *address*.

    The original From (with its continuation lines) becomes Reply-To when the message
    has no Reply-To, so answers still reach the real author.
    """
    end = data.find(b"\r\n\r\n")
    head, body = (data, b"") if end < 0 else (data[: end + 2], data[end + 2 :])
    fields: list[list[bytes]] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])

    def name(lines: list[bytes]) -> bytes:
        return lines[0].split(b":", 1)[0].strip().lower()

    original = [f for f in fields if name(f) == b"from"]
    has_reply_to = any(name(f) == b"reply-to" for f in fields)
    out: list[bytes] = []
    for lines in fields:
        if name(lines) != b"from":
            out.extend(lines)
            continue
        out.append(b"From: <" + address.encode("utf-8") + b">")
        if not has_reply_to and original:
            first = original[0]
            out.append(b"Reply-To:" + first[0].split(b":", 1)[1])
            out.extend(first[1:])
            has_reply_to = True
    return b"\r\n".join(out) + b"\r\n" + body


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """What happened to one recipient in one attempt."""

    recipient: str
    outcome: Outcome
    status: str
    reply: str

    @classmethod
    def judged(cls, recipient: str, verdict: Verdict) -> RecipientResult:
        """*recipient*'s result as *verdict* decides it."""
        return cls(recipient, verdict.outcome, verdict.status, verdict.text)


@dataclass(slots=True)
class AttemptResult:
    """One attempt at one relay: per-recipient results and the final reply."""

    relay: str
    recipients: list[RecipientResult] = field(default_factory=list)
    #: the upstream's reply to DATA (it holds the provider's queue id), when delivered
    final_reply: str = ""
    #: set when the attempt failed as a whole (not per recipient)
    failure: Verdict | None = None


def _tls_context(relay: RelaySettings) -> ssl.SSLContext:
    if relay.ca_file is not None:
        context = ssl.create_default_context(cafile=str(relay.ca_file))
    else:
        context = ssl.create_default_context()
    if not relay.verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _mail_options(
    options: Sequence[str], client: aiosmtplib.SMTP, size: int
) -> tuple[list[str], bool]:
    """The MAIL FROM parameters to pass on, and whether SMTPUTF8 is needed."""
    passed: list[str] = []
    utf8 = False
    for option in options:
        upper = option.upper()
        if upper == "SMTPUTF8":
            utf8 = True
        elif upper.startswith("BODY=") and client.supports_extension("8bitmime"):
            passed.append(upper)
    if client.supports_extension("size"):
        passed.insert(0, f"SIZE={size}")
    return passed, utf8


def dot_stuffed(data: bytes) -> bytes:
    """The DATA payload for *data*: CRLF line endings, leading dots doubled, ``.`` line.

    Spooled mail already has CRLF line endings only (the server normalises or refuses
    bare CR/LF), so this is a single ``replace``; aiosmtplib's general path runs two
    regular expressions over the message (about 2 ms per 100 KB here).
    """
    return _stuffed_body(data) + b".\r\n"


def _stuffed_body(data: bytes) -> bytes:
    """*data* dot-stuffed and ending in CRLF; *data* itself when nothing changes."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _stuffed(data, line_start=True)


#: messages larger than this are written in pieces of this size, each after the
#: socket took the one before, so they are not copied whole into a write buffer
_CHUNK = 1 << 20


#: what is sent as a message's data: bytes, or a big message left in its spool file
Payload = bytes | SpooledBody


def payload_size(data: Payload) -> int:
    """The size of *data* in bytes (for SIZE=)."""
    return data.size if isinstance(data, SpooledBody) else len(data)


def stuffed_pieces(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Dot-stuffed DATA payload (without the final ``.`` line) of data read in pieces.

    Each piece sent ends at a line end, so a dot that begins a line is seen whole
    even when the reads split ``CRLF.``; the last line gets a CRLF if it lacks one.
    """
    carry = b""
    line_start = True
    sent = False
    for piece in pieces:
        text = carry + piece if carry else piece
        cut = text.rfind(b"\r\n") + 2
        if cut < 2 and len(text) <= 4 * _CHUNK:
            carry = text  # no line end yet: wait for the rest of the line
            continue
        if cut < 2:
            cut = len(text)  # a run without line ends (not from jdxmail's spool)
        out, carry = text[:cut], text[cut:]
        yield _stuffed(out, line_start)
        line_start, sent = out.endswith(b"\r\n"), True
    if carry or not line_start or not sent:  # (no data at all is one empty line)
        yield _stuffed(carry, line_start) + b"\r\n"


def _stuffed(text: bytes, line_start: bool) -> bytes:
    """*text* with a dot doubled at each line start (*text* itself when it has none)."""
    if b"\r\n." in text:
        text = text.replace(b"\r\n.", b"\r\n..")
    if line_start and text.startswith(b"."):
        text = b"." + text
    return text


async def _write_payload(protocol: SMTPProtocol, data: Payload) -> None:
    """Write the DATA payload of *data*; in pieces when it is big."""
    if _is_small(data):
        protocol.write(dot_stuffed(data))
        return
    pieces: Iterable[bytes | memoryview]
    if isinstance(data, SpooledBody):
        pieces = stuffed_pieces(data.pieces(_CHUNK))
    else:
        view = memoryview(_stuffed_body(data))
        pieces = (view[start : start + _CHUNK] for start in range(0, len(view), _CHUNK))
    for piece in pieces:
        protocol.write(piece)  # type: ignore[arg-type]
        await protocol._drain_helper()
    protocol.write(b".\r\n")


def _is_small(data: Payload) -> TypeGuard[bytes]:
    """True when *data* is in memory and goes out in one write."""
    return not isinstance(data, SpooledBody) and len(data) <= _CHUNK


_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


async def send_data(client: aiosmtplib.SMTP, data: Payload) -> aiosmtplib.SMTPResponse:
    """DATA with *data* on *client*, like ``client.data()`` but without its regex passes.

    Uses the same protocol steps as aiosmtplib's own DATA command; if a future
    aiosmtplib no longer has them, falls back to ``client.data()``.
    """
    protocol = client.protocol
    lock = getattr(protocol, "_command_lock", None)
    if protocol is None or lock is None or not hasattr(protocol, "_response_pending"):
        return await client.data(data.read() if isinstance(data, SpooledBody) else data)
    timeout = client.timeout
    try:
        async with lock:
            protocol._response_pending = True
            protocol.write(b"DATA\r\n")
            start = await protocol.read_response(timeout=timeout)
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol._response_pending = True
            await _write_payload(protocol, data)
            reply = await protocol.read_response(timeout=timeout)
            if reply.code != 250:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    return reply


#: where the event loop reads relay replies into (recv_into); shared by all sessions,
#: as each read is handed over (buffer_updated) before the next one begins
_RECV_BUFFER = memoryview(bytearray(16 * 1024))


class _KeepingProtocol(SMTPProtocol, asyncio.BufferedProtocol):
    """aiosmtplib's protocol, except that replies arriving early are kept.

    aiosmtplib (5.1) drops data that arrives while a parsed reply waits to be taken,
    so several replies to pipelined commands (RFC 2920) could be lost. This keeps
    everything in the buffer and parses the next reply from it first. It is also a
    buffered protocol (see _keeping_protocol): reads land in one shared buffer
    instead of a new 256 KiB bytes object each, which glibc maps and unmaps.
    """

    #: set while read_replies waits for more data (a class default: instances are
    #: switched to this class after aiosmtplib made them, so __init__ never runs)
    _more: asyncio.Future[None] | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECV_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_RECV_BUFFER[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        waiter = self._response_waiter
        if waiter is None:
            return
        self._buffer.extend(data)
        if len(self._buffer) > MAX_RESPONSE_LENGTH * 4:
            del self._buffer[:]
            if self.transport is not None:
                self.transport.close()
            return
        more = self._more
        if more is not None:
            if not more.done():
                more.set_result(None)
            return
        if waiter.done() or not getattr(self, "_response_pending", True):
            # Nobody reads yet (replies to commands sent ahead of their
            # transaction's turn): they wait in the buffer for read_replies.
            return
        try:
            response = self._read_response_from_buffer()
        except Exception as exc:  # handed to the reader, as aiosmtplib does
            self._set_response_exception(waiter, exc)
        else:
            if response is not None:
                waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        more = self._more
        super().connection_lost(exc)
        if more is not None and not more.done():
            more.set_exception(aiosmtplib.SMTPServerDisconnected("Connection lost"))
            more.exception()  # retrieved: the reader may be gone already

    async def read_replies(
        self, count: int, patience: float | None
    ) -> list[aiosmtplib.SMTPResponse]:
        """The next *count* replies in order, within *patience* seconds for all of them."""
        replies: list[aiosmtplib.SMTPResponse] = []
        loop = self._loop
        waiter = self._response_waiter
        if waiter is not None and waiter.done() and not waiter.cancelled():
            # a reply aiosmtplib's reader took from the buffer before this read: the
            # oldest (raises if it was malformed)
            replies.append(waiter.result())
            self._response_waiter = loop.create_future()
        deadline = None if patience is None else loop.time() + patience
        while len(replies) < count:
            response = self._read_response_from_buffer() if self._buffer else None
            if response is not None:
                replies.append(response)
                continue
            if self.transport is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            # One timer per wait for data rather than an asyncio.timeout() scope
            # (which costs several handles and a task uncancel per reply read).
            more = self._more = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, _expire, more, patience)
            try:
                await more
            finally:
                self._more = None
                if timer is not None:
                    timer.cancel()
        return replies

    async def read_response(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (the signature aiosmtplib calls)
    ) -> aiosmtplib.SMTPResponse:
        waiter = self._response_waiter
        if waiter is not None and not waiter.done() and self._buffer:
            response = self._read_response_from_buffer()
            if response is not None:
                return response
        return await super().read_response(timeout)


def _expire(waiter: asyncio.Future[None], patience: float | None) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no reply within {patience:g} s"))


def _keeping_protocol(client: aiosmtplib.SMTP) -> _KeepingProtocol | None:
    """*client*'s protocol, switched to keep early replies; None if that is unsafe."""
    protocol = client.protocol
    if isinstance(protocol, _KeepingProtocol):
        return protocol
    if type(protocol) is not SMTPProtocol or not hasattr(protocol, "_response_waiter"):
        return None
    protocol.__class__ = _KeepingProtocol
    transport = protocol.transport
    if transport is not None:
        transport.set_protocol(protocol)  # so the transport reads with get_buffer now
    return protocol  # type: ignore[return-value]


#: a plain dot-atom address, which aiosmtplib's quote_address returns unchanged in <>
_DOT_ATOM_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


def _quoted(address: str) -> str:
    """``<address>`` for MAIL/RCPT, as aiosmtplib's ``quote_address`` makes it.

    The common plain address skips its parse with ``email.utils`` (a sixth of the
    CPU of relaying a 1 KB message); anything else, and every check on it (CR, LF,
    spaces, brackets), goes through ``quote_address``.
    """
    if _DOT_ATOM_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return quote_address(address)


def _reply_error(reply: aiosmtplib.SMTPResponse) -> aiosmtplib.SMTPResponseException:
    return aiosmtplib.SMTPResponseException(reply.code, reply.message)


class Transaction:
    """One message's MAIL, RCPT and DATA at one relay, and how far it got.

    Made before the attempt waits for a session, so that the session's current
    message can send this one's commands right after its own data (see
    :meth:`RelayPool.line_up`).
    """

    def __init__(
        self,
        mail_from: str,
        recipients: Sequence[str],
        data: Payload,
        options: Sequence[str],
    ) -> None:
        self.mail_from = mail_from
        self.recipients = recipients
        self.data = data
        self.options = options
        #: where the session is in this transaction (what a broken session failed at)
        self.stage = Stage.MAIL
        #: MAIL, RCPT and DATA went out already, after the previous message's data
        self.ahead = False
        #: the waiting transaction whose commands went out after this one's data:
        #: the session is handed to it when this one is done
        self.successor: _Waiter | None = None
        # set by RelayConnection.prepare for the session it is sent on
        self.result = AttemptResult(relay="")
        self.sent: list[str] = []
        self.encoding = "ascii"
        self.mail_parameters: list[str] = []
        #: the data has bytes above 127 (needs 8BITMIME, or a 7bit copy)
        self.eight_bit = False


@dataclass(eq=False, slots=True)
class _Waiter:
    """A transaction waiting for a turn at a relay (see RelayPool.turn)."""

    transaction: Transaction
    #: resolves to a session handed on (commands sent ahead) or None (a free turn)
    future: asyncio.Future[RelayConnection | None]


class RelayConnection:
    """One connected, authenticated session to a relay, reused for several messages."""

    def __init__(self, relay: RelaySettings, client: aiosmtplib.SMTP) -> None:
        self.relay = relay
        self.client = client
        self.messages = 0
        #: no transaction is open (the last one ended with DATA or was reset)
        self.clean = True

    async def close(self) -> None:
        """QUIT politely; drop the connection if that fails."""
        with contextlib.suppress(Exception):
            if self.client.is_connected:
                await asyncio.wait_for(self.client.quit(), timeout=5)
        with contextlib.suppress(Exception):
            self.client.close()

    def pipelining(self) -> _KeepingProtocol | None:
        """The protocol to pipeline commands on (RFC 2920), if the relay offers it."""
        if not self.client.supports_extension("pipelining"):
            return None
        return _keeping_protocol(self.client)

    def prepare(self, tx: Transaction) -> bytes:
        """Make *tx* ready for this session; return its MAIL, RCPT and DATA commands.

        Recipients that cannot be written (bad characters) are judged at once in
        ``tx.result``; the commands are empty when none is left. Raises
        SMTPNotSupported when the message needs SMTPUTF8 and the relay lacks it,
        EightBitUnsupported when it has 8-bit content and the relay lacks 8BITMIME.
        """
        client = self.client
        result = tx.result = AttemptResult(relay=self.relay.display_name)
        passed, utf8 = _mail_options(tx.options, client, payload_size(tx.data))
        encoding = "ascii"
        if utf8:
            if not client.supports_extension("smtputf8"):
                raise aiosmtplib.SMTPNotSupported(
                    "the message needs SMTPUTF8 and the relay does not offer it"
                )
            passed.append("SMTPUTF8")
            encoding = "utf-8"
        elif tx.eight_bit:
            if not client.supports_extension("8bitmime"):
                raise EightBitUnsupported(
                    f"the message has 8-bit content and {self.relay.display_name} "
                    "does not offer 8BITMIME"
                )
            if not any(o.startswith("BODY=") for o in passed):
                passed.append("BODY=8BITMIME")  # (RFC 6152: 8-bit data is declared)
        tx.encoding, tx.mail_parameters = encoding, passed
        sender = b"MAIL FROM:" + _quoted(tx.mail_from).encode(encoding)
        commands = [b" ".join([sender, *(o.encode("ascii") for o in passed)]) + b"\r\n"]
        sent = tx.sent = []
        for recipient in tx.recipients:
            try:
                commands.append(b"RCPT TO:" + _quoted(recipient).encode(encoding) + b"\r\n")
            except (ValueError, UnicodeEncodeError) as exc:
                verdict = classify(Stage.RCPT, ValueError(str(exc)))
                result.recipients.append(RecipientResult.judged(recipient, verdict))
            else:
                sent.append(recipient)
        if not sent:
            return b""
        commands.append(b"DATA\r\n")
        return b"".join(commands)

    async def send(self, tx: Transaction, pool: RelayPool | None = None) -> AttemptResult:
        """Send one message; per-recipient results, or ``failure`` for the whole attempt.

        With *pool*, a transaction waiting there may have its commands sent right
        after this one's data (``tx.successor``). Raises (aiosmtplib/OS errors) only
        when the session broke; the caller classifies those with ``tx.stage``.
        """
        client = self.client
        tx.stage = Stage.MAIL
        self.messages += 1
        if tx.ahead:  # prepared and sent after the message before (RelayPool.line_up)
            protocol = self.pipelining()
            assert protocol is not None
            self.clean = False
            return await self._send_pipelined(protocol, tx, pool)
        if not self.clean:
            await client.rset()
            self.clean = True
        protocol = self.pipelining()
        commands = self.prepare(tx)
        self.clean = False
        if protocol is not None:
            if not commands:
                self.clean = True
                return tx.result
            return await self._send_pipelined(protocol, tx, pool, commands)
        return await self._send_serial(tx)

    async def _send_serial(self, tx: Transaction) -> AttemptResult:
        """One command at a time, for relays without PIPELINING."""
        client, result, encoding = self.client, tx.result, tx.encoding
        # (prepare judged unwritable recipients; RCPT gives the same verdict again)
        result.recipients.clear()
        try:
            await client.mail(tx.mail_from, options=tx.mail_parameters, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            result.failure = classify(Stage.MAIL, exc)
            return result
        accepted: list[str] = []
        tx.stage = Stage.RCPT
        for recipient in tx.recipients:
            try:
                await client.rcpt(recipient, encoding=encoding)
            except (aiosmtplib.SMTPResponseException, ValueError) as exc:
                verdict = classify(Stage.RCPT, exc)
                if verdict.scope is not Scope.RECIPIENT:
                    await self._reset()
                    result.failure = verdict
                    return result
                result.recipients.append(RecipientResult.judged(recipient, verdict))
            else:
                accepted.append(recipient)
        if not accepted:
            await self._reset()
            return result
        tx.stage = Stage.DATA
        try:
            reply = await send_data(client, tx.data)
        except aiosmtplib.SMTPResponseException as exc:
            return await self._after_data(tx, accepted, exc)
        return await self._after_data(tx, accepted, reply)

    async def _after_data(
        self,
        tx: Transaction,
        accepted: list[str],
        reply: aiosmtplib.SMTPResponse | aiosmtplib.SMTPResponseException,
    ) -> AttemptResult:
        """The accepted recipients' outcome from the final reply, or the refusal of DATA.

        A refusal that concerns the relay itself is raised for the caller.
        """
        result = tx.result
        if isinstance(reply, aiosmtplib.SMTPResponseException):
            verdict = classify(Stage.DATA, reply)
            if verdict.scope is Scope.RELAY:
                raise reply
            if tx.successor is None:  # (else the session is already in the next one)
                await self._reset()
            result.recipients.extend(RecipientResult.judged(r, verdict) for r in accepted)
            return result
        if tx.successor is None:
            self.clean = True
        text = " ".join(f"{reply.code} {reply.message}".split())
        result.final_reply = text
        status = enhanced_status(reply.code, reply.message, "2.0.0")
        result.recipients.extend(
            RecipientResult(r, Outcome.DELIVERED, status, text) for r in accepted
        )
        return result

    async def _send_pipelined(
        self,
        protocol: _KeepingProtocol,
        tx: Transaction,
        pool: RelayPool | None,
        commands: bytes = b"",
    ) -> AttemptResult:
        """MAIL, every RCPT and DATA in one write (RFC 2920), then the body.

        Two round trips per message instead of three plus one per recipient; and
        when another message waits for this relay, its MAIL, RCPT and DATA go out
        with this one's data (RFC 2920 §3.1 lets the message content begin a
        group), so a busy session needs one write and one round trip per message.
        *commands* are empty when they went out ahead. The replies are judged
        exactly as in the one-command-at-a-time path.
        """
        result, sent = tx.result, tx.sent
        timeout = self.client.timeout
        accepted: list[str] = []
        refusals: list[tuple[str, Verdict]] = []
        final: aiosmtplib.SMTPResponse | None = None
        lock = protocol._command_lock
        if lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        async with lock:
            if commands:
                protocol.write(commands)
            # A session the relay dropped while idle fails here, still at stage MAIL:
            # nothing was accepted, so the attempt is repeated on a new session.
            replies = await protocol.read_replies(len(sent) + 2, timeout)
            mail_reply, data_reply = replies[0], replies[-1]
            for recipient, reply in zip(sent, replies[1:-1], strict=True):
                if reply.code in (250, 251):
                    accepted.append(recipient)
                else:
                    refusals.append((recipient, classify(Stage.RCPT, _reply_error(reply))))
            tx.stage = Stage.DATA
            if data_reply.code == 354:
                if mail_reply.code == 250 and accepted:
                    data = tx.data
                    if pool is not None and _is_small(data):
                        protocol.write(dot_stuffed(data) + pool.line_up(self, tx))
                    else:
                        await _write_payload(protocol, data)
                else:  # nobody to send to: end the transaction with no content
                    protocol.write(b".\r\n")
                final = (await protocol.read_replies(1, timeout))[0]
        if mail_reply.code != 250:
            await self._reset()
            result.failure = classify(Stage.MAIL, _reply_error(mail_reply))
            return result
        for recipient, verdict in refusals:
            if verdict.scope is not Scope.RECIPIENT:
                await self._reset()
                result.failure = verdict
                return result
            result.recipients.append(RecipientResult.judged(recipient, verdict))
        if not accepted:
            await self._reset()
            return result
        if data_reply.code != 354:
            return await self._after_data(tx, accepted, _reply_error(data_reply))
        assert final is not None
        if final.code != 250:
            return await self._after_data(tx, accepted, _reply_error(final))
        return await self._after_data(tx, accepted, final)

    async def _reset(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.rset()
            self.clean = True


class RelayPool:
    """Reusable sessions to one relay, at most *size* at a time."""

    def __init__(
        self,
        relay: RelaySettings,
        *,
        local_hostname: str,
        step_timeout: float,
        size: int,
    ) -> None:
        self.relay = relay
        self.local_hostname = local_hostname
        self.step_timeout = step_timeout
        self.size = size
        #: turns not taken: at most *size* transactions use this relay at a time
        self._free = size
        self._waiting: collections.deque[_Waiter] = collections.deque()
        self._idle: list[RelayConnection] = []
        self._context = _tls_context(relay)
        #: whether the relay offered 8BITMIME in its last EHLO (None: not known yet)
        self.offers_8bitmime: bool | None = None
        #: set when a reload removed this relay: sessions are closed, not kept
        self._retired = False

    @property
    def name(self) -> str:
        """The relay's display name."""
        return self.relay.display_name

    async def connect(self) -> RelayConnection:
        """A new session: connect, TLS as configured, EHLO, AUTH. Raises StageError."""
        relay = self.relay
        implicit = relay.implicit_tls
        client = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            local_hostname=self.local_hostname,
            use_tls=implicit,
            start_tls=False,
            tls_context=self._context if relay.use_tls else None,
            timeout=self.step_timeout,
        )
        stage = Stage.TLS if implicit else Stage.CONNECT
        try:
            await client.connect()
            stage = Stage.EHLO
            await client.ehlo()
            if relay.use_tls and not implicit:
                stage = Stage.TLS
                if not client.supports_extension("starttls"):
                    raise RelayUnusable(
                        f"{relay.display_name} does not offer STARTTLS and UseTls is true; "
                        "not sending in plaintext",
                        stage=Stage.TLS,
                        status="4.7.10",
                    )
                await client.starttls(server_hostname=relay.host, tls_context=self._context)
                stage = Stage.EHLO
                await client.ehlo()
            self.offers_8bitmime = client.supports_extension("8bitmime")
            if relay.username:
                stage = Stage.AUTH
                await self._login(client)
        except Exception as exc:
            with contextlib.suppress(Exception):
                client.close()
            raise StageError(stage, exc) from exc
        except BaseException:
            with contextlib.suppress(Exception):
                client.close()
            raise
        return RelayConnection(relay, client)

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        relay = self.relay
        assert relay.username is not None
        password = relay.password.get_secret_value() if relay.password is not None else ""
        offered = client.server_auth_methods
        if not client.supports_extension("auth") or not offered:
            raise RelayUnusable(
                f"{relay.display_name} does not offer AUTH on this connection "
                f"({'TLS' if relay.use_tls else 'plaintext'}); check UseTls and Port",
                stage=Stage.AUTH,
                status="4.7.0",
            )
        if "plain" in offered:
            await client.auth_plain(relay.username, password)
        elif "login" in offered:
            await client.auth_login(relay.username, password)
        else:
            raise RelayUnusable(
                f"{relay.display_name} offers AUTH {' '.join(m.upper() for m in offered)}; "
                "jdxmail speaks PLAIN and LOGIN",
                stage=Stage.AUTH,
                status="4.7.0",
            )

    async def turn(self, tx: Transaction) -> RelayConnection | None:
        """Wait for *tx*'s turn at this relay (one of *size*); no time limit.

        Returns a session whose previous message sent *tx*'s commands after its data
        (``tx.ahead`` is then set), or None: take a session with :meth:`acquire`.
        The turn ends with :meth:`release` (or :meth:`end_turn` without a session).
        """
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return None
        waiter = _Waiter(tx, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                handed = waiter.future.result()  # the turn came as the task was cancelled
                if handed is not None:
                    handed.client.close()  # tx's commands were sent on it: unusable
                self.end_turn()
            # else: lined up behind a message still sending, which sees the
            # cancelled future when done and ends the turn itself (see release)
            raise

    def line_up(self, connection: RelayConnection, tx: Transaction) -> bytes:
        """The commands of the first waiting transaction, to send after *tx*'s data.

        That transaction becomes *tx*'s successor: when *tx* is done, :meth:`release`
        hands it the session. Returns b"" when none waits or it cannot go ahead
        (it then keeps its place for an ordinary turn).
        """
        if tx.successor is not None:
            return b""
        while self._waiting:
            waiter = self._waiting[0]
            if waiter.future.done():
                self._waiting.popleft()
                continue
            try:
                commands = connection.prepare(waiter.transaction)
            except (aiosmtplib.SMTPException, ValueError, UnicodeError):
                return b""  # (its own attempt meets the same error, and reports it)
            if not commands:
                return b""
            self._waiting.popleft()
            waiter.transaction.ahead = True
            tx.successor = waiter
            return commands
        return b""

    async def acquire(self) -> RelayConnection:
        """An idle session if one is still alive, else a new one. Raises StageError."""
        while self._idle:
            connection = self._idle.pop()
            if connection.client.is_connected:
                return connection
            await connection.close()
        return await self.connect()

    def release(
        self, connection: RelayConnection | None, *, healthy: bool, tx: Transaction
    ) -> None:
        """*tx* is done with *connection* (None: it got none): keep it (or drop it) and
        end the turn.

        A successor lined up by *tx* gets the session; if the session broke, it gets
        a plain turn instead and sends its commands again on another session.
        """
        if connection is None:  # (a successor is only lined up on a session)
            self.end_turn()
            return
        alive = healthy and connection.client.is_connected
        successor, tx.successor = tx.successor, None
        if successor is not None:
            if successor.future.done():  # its attempt was cancelled meanwhile
                connection.client.close()  # it has a transaction open there
                self.end_turn()
            elif alive:
                successor.future.set_result(connection)
            else:
                connection.client.close()
                successor.transaction.ahead = False
                successor.future.set_result(None)
            return
        if alive and not self._retired:
            self._idle.append(connection)
        else:
            connection.client.close()
        self.end_turn()

    def retire(self) -> None:
        """This relay is no longer used (a reload): sessions still in use are closed
        when their attempt is done instead of being kept."""
        self._retired = True

    def end_turn(self) -> None:
        """A turn is over: the next waiting transaction gets it, else it is free."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)
                return
        self._free += 1

    async def close(self) -> None:
        """QUIT every idle session."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.close() for c in idle))


class StageError(Exception):
    """A relay session failed at *stage*; the cause is the upstream error."""

    def __init__(self, stage: Stage, cause: BaseException) -> None:
        super().__init__(f"{stage.value}: {cause}")
        self.stage = stage
        self.cause = cause
