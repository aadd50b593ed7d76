"""Every use of aiosmtplib's private members, and the check that they are there.

jdxmail relays through aiosmtplib's protocol below its public API in three ways:
DATA without aiosmtplib's regular-expression passes (:func:`command_lock`,
:func:`expect_reply`, :func:`drain`), replies to pipelined commands kept as they
arrive (:class:`PipeliningProtocol`), and reads into one shared buffer. Those private
members may change in any aiosmtplib release, so they are used only here, and
:func:`check_aiosmtplib` (run when the delivery engine starts) refuses to start with
an aiosmtplib that lacks one, naming it, rather than failing in the middle of a
delivery.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

import aiosmtplib
from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.typing import SMTPStatus

from jdxmail.read_buffer import SharedReadBuffer
from jdxmail.sizes import RELAY_RECV_BUFFER_SIZE

__all__ = [
    "NEEDED_VERSION",
    "PRIVATE_MEMBERS",
    "AiosmtplibMismatch",
    "PipeliningProtocol",
    "check_aiosmtplib",
    "command_lock",
    "drain",
    "expect_reply",
    "pipelining_protocol",
    "take_replies",
]

#: the first aiosmtplib release with every member in PRIVATE_MEMBERS
#: (5.1.2 lacks ``_response_pending`` and ``_set_response_exception``)
NEEDED_VERSION = "5.1.3"

#: the private members of aiosmtplib's SMTPProtocol that jdxmail uses
PRIVATE_MEMBERS = (
    "_buffer",
    "_command_lock",
    "_drain_helper",
    "_loop",
    "_read_response_from_buffer",
    "_response_pending",
    "_response_waiter",
    "_set_response_exception",
)


class AiosmtplibMismatch(RuntimeError):
    """The installed aiosmtplib lacks a private member that jdxmail's relay uses."""


def check_aiosmtplib(protocol_class: type[SMTPProtocol] = SMTPProtocol) -> None:
    """Raise AiosmtplibMismatch unless *protocol_class* has every member jdxmail uses.

    Instance attributes are looked for on a fresh, unconnected instance.
    """
    loop = asyncio.new_event_loop()
    try:
        sample = protocol_class(loop=loop)
        missing = [name for name in PRIVATE_MEMBERS if not hasattr(sample, name)]
    finally:
        loop.close()
    if missing:
        raise AiosmtplibMismatch(
            f"aiosmtplib {_installed()} lacks {', '.join(missing)} "
            f"(used by jdxmail's relay); install aiosmtplib>={NEEDED_VERSION}"
        )


def _installed() -> str:
    try:
        return version("aiosmtplib")
    except PackageNotFoundError:  # pragma: no cover - it is imported above
        return "(unknown version)"


def command_lock(protocol: SMTPProtocol) -> asyncio.Lock | None:
    """The lock that serialises *protocol*'s commands; None once the connection is lost."""
    return protocol._command_lock


def expect_reply(protocol: SMTPProtocol) -> None:
    """Mark a reply as expected before writing a command (aiosmtplib drops others)."""
    protocol._response_pending = True


async def drain(protocol: SMTPProtocol) -> None:
    """Wait until the transport has room for more writes."""
    await protocol._drain_helper()


class PipeliningProtocol(SMTPProtocol, SharedReadBuffer):
    """aiosmtplib's protocol, able to read the replies to pipelined commands.

    aiosmtplib (5.1) drops data that arrives while a parsed reply waits to be taken,
    so several replies to pipelined commands (RFC 2920) could be lost. This keeps
    everything in the buffer and parses the next reply from it first. Replies are
    read into one buffer shared by every relay session (:class:`SharedReadBuffer`;
    see pipelining_protocol).
    """

    read_buffer = memoryview(bytearray(RELAY_RECV_BUFFER_SIZE))

    #: set while read_replies waits for more data (a class default: instances are
    #: switched to this class after aiosmtplib made them, so __init__ never runs)
    _more: asyncio.Future[None] | None = None
    #: when the wait for data in progress expires (loop time), and its patience
    _expiry: tuple[float, float] | None = None
    #: the one timer that looks at _expiry (see _wait_for_data)
    _expiry_timer: asyncio.TimerHandle | None = None

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
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
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
        buffer = self._buffer
        if buffer:
            take_replies(buffer, count, replies)
        if len(replies) >= count:  # (often: they came with the previous message's)
            return replies
        deadline = None if patience is None else loop.time() + patience
        while True:
            if self.transport is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            more = self._more = loop.create_future()
            if deadline is not None:
                assert patience is not None
                self._set_expiry(deadline, patience)
            try:
                await more
            finally:
                self._more = self._expiry = None
            if buffer:
                take_replies(buffer, count, replies)
            if len(replies) >= count:
                return replies

    def _set_expiry(self, deadline: float, patience: float) -> None:
        """Fail the wait for data in progress at *deadline* (loop time).

        One timer serves every wait: it is set again only when it would go off too
        late, and when it goes off early (the deadline moved on with each reply)
        it sets itself for the deadline then, so a busy session makes one timer per
        *patience* seconds rather than one per reply read (a handle made, pushed on
        the loop's heap, cancelled and popped again).
        """
        self._expiry = (deadline, patience)
        timer = self._expiry_timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._expiry_timer = self._loop.call_at(deadline, self._expiry_due, deadline)

    def _expiry_due(self, when: float) -> None:
        self._expiry_timer = None
        expiry, more = self._expiry, self._more
        if expiry is None or more is None or more.done():
            return  # nothing waits: the timer lapses until the next wait
        deadline, patience = expiry
        if deadline > when:
            self._expiry_timer = self._loop.call_at(deadline, self._expiry_due, deadline)
        else:
            _expire(more, patience)

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


def take_replies(buffer: bytearray, count: int, into: list[aiosmtplib.SMTPResponse]) -> None:
    """Move the complete replies at the start of *buffer* into *into* until it holds
    *count*; the rest (and a reply not complete yet) stays in *buffer*.

    Each reply is what aiosmtplib's own parser (``_read_response_from_buffer``)
    makes of the same bytes: lines end at LF; the code is the ``int()`` of a line's
    first three bytes (the last line's, in a multi-line reply); the text is each
    line's rest after the fourth byte stripped of " \t\r\n", joined with "\n"
    once the text so far is not empty; a line whose fourth byte is "-" goes on to
    the next. A line longer than aiosmtplib's limit, or whose code is not a number,
    raises the SMTPResponseException aiosmtplib raises, the replies before it taken
    from *buffer*. One pass over the buffer for every reply in it, where
    aiosmtplib's parser copies each line and builds a bytearray per reply; a
    one-line reply seen lately is not parsed again.
    """
    data = bytes(buffer)
    taken = 0  # where the first reply not taken yet begins
    seen = _SEEN
    try:
        while len(into) < count:
            end = data.find(b"\n", taken)
            if end < 0:
                break
            line = data[taken : end + 1]
            reply = seen.get(line)
            if reply is None:
                code = _line_code(data, taken, end)
                if end - taken >= 3 and data[taken + 3] == _HYPHEN:  # the reply goes on
                    multi_line = _multi_line_reply(data, taken, end)
                    if multi_line is None:
                        break
                    into.append(multi_line[0])
                    taken = multi_line[1]
                    continue
                text = line[4:].strip(_BLANKS).decode("utf-8", "surrogateescape")
                reply = aiosmtplib.SMTPResponse(code, text)
                if len(line) <= _SEEN_LINE_LENGTH:
                    if len(seen) >= _SEEN_LINES:
                        seen.clear()
                    seen[line] = reply
            into.append(reply)
            taken = end + 1
    finally:
        if taken:
            del buffer[:taken]


#: one-line replies read lately, by their line: the same few lines come again and
#: again (a relay's "250 2.1.0 Ok"), and a reply is an immutable value
_SEEN: dict[bytes, aiosmtplib.SMTPResponse] = {}
#: the most lines kept in _SEEN (it starts over when full), and the longest
_SEEN_LINES = 64
_SEEN_LINE_LENGTH = 200
#: what a reply line's text is stripped of, and the byte that continues a reply
_BLANKS = b" \t\r\n"
_HYPHEN = ord("-")


def _line_code(data: bytes, start: int, end: int) -> int:
    """The code of the line from *start* to its LF at *end*, as aiosmtplib reads it;
    raises its SMTPResponseException for a line too long or without a number."""
    if end - start >= MAX_LINE_LENGTH:
        raise aiosmtplib.SMTPResponseException(
            SMTPStatus.invalid_response.value, "Response too long"
        )
    try:
        return int(data[start : min(start + 3, end + 1)])
    except ValueError:
        line = data[start : end + 1].decode("utf-8", errors="ignore")
        raise aiosmtplib.SMTPResponseException(
            SMTPStatus.invalid_response.value, f"Malformed SMTP response line: {line}"
        ) from None


def _multi_line_reply(
    data: bytes, start: int, end: int
) -> tuple[aiosmtplib.SMTPResponse, int] | None:
    """The reply whose first line runs from *start* to its LF at *end*, and where the
    next reply begins; None while its last line has not come."""
    message = bytearray()
    while True:
        code = _line_code(data, start, end)
        if message:
            message += b"\n"
        message += data[start + 4 : end + 1].strip(_BLANKS)
        last = end - start < 3 or data[start + 3] != _HYPHEN
        start = end + 1
        if last:
            text = bytes(message).decode("utf-8", "surrogateescape")
            return aiosmtplib.SMTPResponse(code, text), start
        end = data.find(b"\n", start)
        if end < 0:
            return None


def _expire(waiter: asyncio.Future[None], patience: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no reply within {patience:g} s"))


def pipelining_protocol(client: aiosmtplib.SMTP) -> PipeliningProtocol | None:
    """*client*'s protocol, switched to a PipeliningProtocol; None if that is unsafe."""
    protocol = client.protocol
    if isinstance(protocol, PipeliningProtocol):
        return protocol
    if type(protocol) is not SMTPProtocol or not hasattr(protocol, "_response_waiter"):
        return None
    protocol.__class__ = PipeliningProtocol
    transport = protocol.transport
    if transport is not None:
        transport.set_protocol(protocol)  # so the transport reads with get_buffer now
    return protocol  # type: ignore[return-value]
