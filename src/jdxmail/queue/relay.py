"""One session to an upstream relay with aiosmtplib: MAIL, RCPT and DATA, pipelined.

``UseTls`` on port 465 is TLS from the first byte; on any other port STARTTLS is
*required* (``start_tls=True``: if the relay does not offer it, the attempt fails
rather than sending in plaintext). Certificates are verified unless a relay says
``VerifyCertificate: false``. AUTH uses a mechanism the relay offers (PLAIN, else
LOGIN), since some providers (Outlook) do not offer PLAIN.

Every upstream failure becomes a :class:`Verdict` through the outcome table in
:mod:`jdxmail.queue.outcomes`; data is encoded by :mod:`jdxmail.data_encoding`. The
sessions are pooled, and handed from one message to the next, by
:mod:`jdxmail.queue.pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard, cast

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol

from jdxmail.data_encoding import CHUNK, dot_stuffed, stuffed_body, stuffed_pieces
from jdxmail.queue._aiosmtplib_compat import (
    PipeliningProtocol,
    command_lock,
    drain,
    expect_reply,
    pipelining_protocol,
)
from jdxmail.queue.outcomes import (
    EightBitUnsupported,
    Outcome,
    Scope,
    Stage,
    Verdict,
    classify,
    enhanced_status,
)
from jdxmail.queue.spool import SpooledBody
from jdxmail.settings.model import RelaySettings

__all__ = [
    "AttemptResult",
    "Payload",
    "RecipientResult",
    "RelayConnection",
    "StageError",
    "Transaction",
    "WaitingLine",
    "payload_size",
    "rewrite_from_header",
    "send_data",
]

logger = logging.getLogger("jdxmail.relay")


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


def _mail_options(
    options: Sequence[str], eight_bit_mime: bool, size_offered: bool, size: int
) -> tuple[list[str], bool]:
    """The MAIL FROM parameters to pass on, and whether SMTPUTF8 is needed (with what
    the relay offers: 8BITMIME, SIZE)."""
    passed: list[str] = []
    utf8 = False
    for option in options:
        upper = option.upper()
        if upper == "SMTPUTF8":
            utf8 = True
        elif upper.startswith("BODY=") and eight_bit_mime:
            passed.append(upper)
    if size_offered:
        passed.insert(0, f"SIZE={size}")
    return passed, utf8


#: what is sent as a message's data: bytes, or a big message left in its spool file;
#: either way CRLF line endings only (as spooled, or a 7-bit copy made with them)
Payload = bytes | SpooledBody


def payload_size(data: Payload) -> int:
    """The size of *data* in bytes (for SIZE=)."""
    return data.size if isinstance(data, SpooledBody) else len(data)


#: from this size on, a message in memory is handed to the transport beside its final
#: ``.`` line (and the next commands) instead of copied with them into one bytes:
#: uvloop writes the pieces with one writev; asyncio's own loop joins them itself
_GATHER_FROM = 16 * 1024


def _write_data(
    protocol: SMTPProtocol, data: bytes, ahead: bytes = b"", *, dot_lines: bool = True
) -> None:
    """Write the DATA payload of *data* (at most CHUNK bytes), then *ahead*
    (*dot_lines* as for :func:`dot_stuffed`)."""
    if len(data) < _GATHER_FROM:
        protocol.write(dot_stuffed(data, crlf=True, dot_lines=dot_lines) + ahead)
        return
    transport = protocol.transport
    if transport is None or transport.is_closing():  # (as protocol.write checks)
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    cast(asyncio.WriteTransport, transport).writelines(
        (stuffed_body(data, crlf=True, dot_lines=dot_lines), b".\r\n" + ahead)
    )


async def _write_payload(protocol: SMTPProtocol, data: Payload, *, dot_lines: bool = True) -> None:
    """Write the DATA payload of *data*; in pieces when it is big."""
    if _is_small(data):
        _write_data(protocol, data, dot_lines=dot_lines)
        return
    pieces: Iterable[bytes | memoryview]
    if isinstance(data, SpooledBody):
        pieces = stuffed_pieces(data.pieces(CHUNK))
    else:
        view = memoryview(stuffed_body(data, crlf=True, dot_lines=dot_lines))
        pieces = (view[start : start + CHUNK] for start in range(0, len(view), CHUNK))
    for piece in pieces:
        protocol.write(piece)  # type: ignore[arg-type]
        await drain(protocol)
    protocol.write(b".\r\n")


def _is_small(data: Payload) -> TypeGuard[bytes]:
    """True when *data* is in memory and goes out in one write."""
    return not isinstance(data, SpooledBody) and len(data) <= CHUNK


async def send_data(
    client: aiosmtplib.SMTP, data: Payload, *, dot_lines: bool = True
) -> aiosmtplib.SMTPResponse:
    """DATA with *data* on *client*, like ``client.data()`` but without its regex passes.

    Uses the same protocol steps as aiosmtplib's own DATA command (through
    _aiosmtplib_compat); falls back to ``client.data()`` when the connection is gone.
    """
    protocol = client.protocol
    lock = None if protocol is None else command_lock(protocol)
    if protocol is None or lock is None:
        return await client.data(data.read() if isinstance(data, SpooledBody) else data)
    timeout = client.timeout
    try:
        async with lock:
            expect_reply(protocol)
            protocol.write(b"DATA\r\n")
            start = await protocol.read_response(timeout=timeout)
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            expect_reply(protocol)
            await _write_payload(protocol, data, dot_lines=dot_lines)
            reply = await protocol.read_response(timeout=timeout)
            if reply.code != 250:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    return reply


#: a plain dot-atom address, which aiosmtplib's quote_address returns unchanged in <>
_DOT_ATOM_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


def _quoted(address: str) -> str:
    """``<address>`` for MAIL/RCPT, as aiosmtplib's ``quote_address`` makes it.

    The common plain address skips its parse with ``email.utils`` (costly for every
    recipient of every message); anything else, and every check on it (CR, LF,
    spaces, brackets), goes through ``quote_address``.
    """
    quoted = _QUOTED.get(address)
    if quoted is not None:
        return quoted
    if not _DOT_ATOM_ADDRESS.fullmatch(address):
        return quote_address(address)
    if len(_QUOTED) >= _QUOTED_KEPT:
        _QUOTED.clear()
    quoted = _QUOTED[address] = f"<{address}>"
    return quoted


#: plain addresses quoted lately (the same senders and recipients come again and
#: again), and how many are kept before it starts over
_QUOTED: dict[str, str] = {}
_QUOTED_KEPT = 256


def _reply_error(reply: aiosmtplib.SMTPResponse) -> aiosmtplib.SMTPResponseException:
    return aiosmtplib.SMTPResponseException(reply.code, reply.message)


def _rcpt_verdicts(
    sent: Sequence[str], replies: Sequence[aiosmtplib.SMTPResponse]
) -> tuple[list[str], list[tuple[str, Verdict]]]:
    """The recipients the RCPT replies accepted, and the refused ones with their verdict."""
    accepted: list[str] = []
    refusals: list[tuple[str, Verdict]] = []
    for recipient, reply in zip(sent, replies, strict=True):
        if reply.code in (250, 251):
            accepted.append(recipient)
        else:
            refusals.append((recipient, classify(Stage.RCPT, _reply_error(reply))))
    return accepted, refusals


def _refused_whole(refusals: list[tuple[str, Verdict]]) -> Verdict | None:
    """The first RCPT refusal that fails the whole attempt (a 421, an unexpected
    reply), not only its recipient; None if every refusal is a recipient's own."""
    for _, verdict in refusals:
        if verdict.scope is not Scope.RECIPIENT:
            return verdict
    return None


class Transaction:
    """One message's MAIL, RCPT and DATA at one relay, and how far it got.

    Made before the attempt waits for a session, so that the session's current
    message can send this one's commands right after its own data (see
    :meth:`RelayConnection.prepare_ahead`).
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
        # set by RelayConnection.prepare for the session it is sent on
        self.result = AttemptResult(relay="")
        self.sent: list[str] = []
        self.encoding = "ascii"
        self.mail_parameters: list[str] = []
        #: the data has bytes above 127 (needs 8BITMIME, or a 7bit copy)
        self.eight_bit = False
        #: False: no line of the data starts with a dot (it is sent without a search)
        self.dot_lines = True


class WaitingLine(Protocol):
    """Where transactions wait for a session (the relay's pool, in queue/pool.py)."""

    def line_up(self, connection: RelayConnection, tx: Transaction) -> bytes:
        """The commands of a waiting transaction to send after *tx*'s data, or b""."""
        ...


class RelayConnection:
    """One connected, authenticated session to a relay, reused for several messages."""

    def __init__(self, relay: RelaySettings, client: aiosmtplib.SMTP) -> None:
        self.relay = relay
        self.client = client
        self.messages = 0
        #: the relay's display name (for results and the log)
        self.name = relay.display_name
        # What the relay's EHLO offered: fixed for the session's life (made after
        # the last EHLO), looked up once rather than for every message.
        self._size_offered = client.supports_extension("size")
        self._8bitmime = client.supports_extension("8bitmime")
        self._smtputf8 = client.supports_extension("smtputf8")
        self._pipelining_offered = client.supports_extension("pipelining")
        #: the protocol switched to a PipeliningProtocol (see pipelining)
        self._pipelined: PipeliningProtocol | None = None
        #: a transaction is open (MAIL went out; not yet ended with DATA or RSET)
        self._transaction_open = False
        #: the transaction whose commands went out after the current message's data:
        #: this session is already in it once the current message is done
        self._sent_ahead: Transaction | None = None

    async def close(self) -> None:
        """QUIT politely; drop the connection if that fails."""
        with contextlib.suppress(Exception):
            if self.client.is_connected:
                await asyncio.wait_for(self.client.quit(), timeout=5)
        with contextlib.suppress(Exception):
            self.client.close()

    def pipelining(self) -> PipeliningProtocol | None:
        """The protocol to pipeline commands on (RFC 2920), if the relay offers it."""
        pipelined = self._pipelined
        if pipelined is not None and pipelined is self.client.protocol:
            return pipelined
        if not self._pipelining_offered:
            return None
        pipelined = self._pipelined = pipelining_protocol(self.client)
        return pipelined

    def prepare_ahead(self, tx: Transaction) -> bytes:
        """Like :meth:`prepare`, for *tx* to follow the current message on this session.

        The commands go out right after the current message's data; :meth:`send`
        then sends *tx* without them. Returns b"" when none can be written.
        """
        commands = self.prepare(tx)
        if commands:
            self._sent_ahead = tx
        return commands

    def prepare(self, tx: Transaction) -> bytes:
        """Make *tx* ready for this session; return its MAIL, RCPT and DATA commands.

        Recipients that cannot be written (bad characters) are judged at once in
        ``tx.result``; the commands are empty when none is left. Raises
        SMTPNotSupported when the message needs SMTPUTF8 and the relay lacks it,
        EightBitUnsupported when it has 8-bit content and the relay lacks 8BITMIME.
        """
        result = tx.result = AttemptResult(relay=self.name)
        passed, utf8 = _mail_options(
            tx.options, self._8bitmime, self._size_offered, payload_size(tx.data)
        )
        encoding = "ascii"
        if utf8:
            if not self._smtputf8:
                raise aiosmtplib.SMTPNotSupported(
                    "the message needs SMTPUTF8 and the relay does not offer it"
                )
            passed.append("SMTPUTF8")
            encoding = "utf-8"
        elif tx.eight_bit:
            if not self._8bitmime:
                raise EightBitUnsupported(
                    f"the message has 8-bit content and {self.name} does not offer 8BITMIME"
                )
            if not any(o.startswith("BODY=") for o in passed):
                passed.append("BODY=8BITMIME")  # (RFC 6152: 8-bit data is declared)
        tx.encoding, tx.mail_parameters = encoding, passed
        sender = b"MAIL FROM:" + _quoted(tx.mail_from).encode(encoding)
        if passed:
            sender = b" ".join([sender, *(o.encode("ascii") for o in passed)])
        commands = [sender, b"\r\n"]
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

    async def send(self, tx: Transaction, line: WaitingLine | None = None) -> AttemptResult:
        """Send one message; per-recipient results, or ``failure`` for the whole attempt.

        With *line* (the relay's pool), a transaction waiting there may have its
        commands sent right after this one's data. Raises (aiosmtplib/OS errors) only
        when the session broke; the caller classifies those with ``tx.stage``.
        """
        client = self.client
        tx.stage = Stage.MAIL
        self.messages += 1
        if self._sent_ahead is tx:  # its commands went out after the message before
            self._sent_ahead = None
            protocol = self.pipelining()
            assert protocol is not None
            self._transaction_open = True
            return await self._send_pipelined(protocol, tx, line)
        if self._transaction_open:
            await client.rset()
            self._transaction_open = False
        protocol = self.pipelining()
        commands = self.prepare(tx)
        self._transaction_open = True
        if protocol is not None:
            if not commands:
                self._transaction_open = False
                return tx.result
            return await self._send_pipelined(protocol, tx, line, commands)
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
            reply = await send_data(client, tx.data, dot_lines=tx.dot_lines)
        except aiosmtplib.SMTPResponseException as exc:
            return await self._refused_data(tx, accepted, exc)
        return self._delivered(tx, accepted, reply)

    async def _refused_data(
        self, tx: Transaction, accepted: list[str], refusal: aiosmtplib.SMTPResponseException
    ) -> AttemptResult:
        """The accepted recipients' outcome from the refusal of DATA or of the data.

        A refusal that concerns the relay itself is raised for the caller.
        """
        result = tx.result
        verdict = classify(Stage.DATA, refusal)
        if verdict.scope is Scope.RELAY:
            raise refusal
        if self._sent_ahead is None:  # (else the session is already in the next one)
            await self._reset()
        result.recipients.extend(RecipientResult.judged(r, verdict) for r in accepted)
        return result

    def _delivered(
        self, tx: Transaction, accepted: list[str], reply: aiosmtplib.SMTPResponse
    ) -> AttemptResult:
        """The accepted recipients' outcome from the relay's 250 to the data."""
        result = tx.result
        if self._sent_ahead is None:
            self._transaction_open = False
        text = " ".join(f"{reply.code} {reply.message}".split())
        result.final_reply = text
        status = enhanced_status(reply.code, reply.message, "2.0.0")
        result.recipients += [RecipientResult(r, Outcome.DELIVERED, status, text) for r in accepted]
        return result

    async def _send_pipelined(
        self,
        protocol: PipeliningProtocol,
        tx: Transaction,
        line: WaitingLine | None,
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
        result = tx.result
        lock = command_lock(protocol)
        if lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        if lock.locked():  # (never so far: the pool gives a session to one message at a time)
            async with lock:
                exchange = await self._exchange(protocol, tx, line, commands)
        else:
            # Nothing else can send on this session meanwhile: aiosmtplib's commands
            # take the lock, and the attempt holding the session runs them itself.
            exchange = await self._exchange(protocol, tx, line, commands)
        mail_reply, data_reply, final, accepted, refusals = exchange
        if mail_reply.code != 250:
            await self._reset()
            result.failure = classify(Stage.MAIL, _reply_error(mail_reply))
            return result
        if refusals:
            whole = _refused_whole(refusals)
            if whole is not None:
                await self._reset()
                result.failure = whole
                return result
            result.recipients.extend(RecipientResult.judged(r, v) for r, v in refusals)
        if not accepted:
            await self._reset()
            return result
        if data_reply.code != 354:
            return await self._refused_data(tx, accepted, _reply_error(data_reply))
        assert final is not None
        if final.code != 250:
            return await self._refused_data(tx, accepted, _reply_error(final))
        return self._delivered(tx, accepted, final)

    async def _exchange(
        self,
        protocol: PipeliningProtocol,
        tx: Transaction,
        line: WaitingLine | None,
        commands: bytes,
    ) -> tuple[
        aiosmtplib.SMTPResponse,
        aiosmtplib.SMTPResponse,
        aiosmtplib.SMTPResponse | None,
        list[str],
        list[tuple[str, Verdict]],
    ]:
        """Write *commands*, read their replies, then the data (if DATA got its 354)
        and its reply: the replies to MAIL, DATA and the data (None if not sent),
        the recipients accepted and the refusals."""
        timeout = self.client.timeout
        final = None
        if commands:
            protocol.write(commands)
        # A session the relay dropped while idle fails here, still at stage MAIL:
        # nothing was accepted, so the attempt is repeated on a new session.
        replies = await protocol.read_replies(len(tx.sent) + 2, timeout)
        mail_reply, data_reply = replies[0], replies[-1]
        accepted, refusals = _rcpt_verdicts(tx.sent, replies[1:-1])
        tx.stage = Stage.DATA
        if data_reply.code == 354:
            data = tx.data
            if mail_reply.code != 250 or not accepted:
                protocol.write(b".\r\n")  # an empty content: nobody to send to
            elif refusals and _refused_whole(refusals) is not None:
                # A recipient refused for the whole attempt (a 421, an unexpected
                # reply) while DATA was let go: the data would reach the others though
                # the message is retried for all. The 354 cannot be taken back, so the
                # session goes; nothing was lined up behind on it.
                if protocol.transport is not None:
                    cast(asyncio.WriteTransport, protocol.transport).abort()
                return mail_reply, data_reply, final, accepted, refusals
            elif _is_small(data):
                # with the next waiting message's commands, when one can go ahead
                ahead = b"" if line is None else line.line_up(self, tx)
                _write_data(protocol, data, ahead, dot_lines=tx.dot_lines)
            else:
                await _write_payload(protocol, data, dot_lines=tx.dot_lines)
            final = (await protocol.read_replies(1, timeout))[0]
        return mail_reply, data_reply, final, accepted, refusals

    async def _reset(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.rset()
            self._transaction_open = False


class StageError(Exception):
    """A relay session failed at *stage*; the cause is the upstream error."""

    def __init__(self, stage: Stage, cause: BaseException) -> None:
        super().__init__(f"{stage.value}: {cause}")
        self.stage = stage
        self.cause = cause
