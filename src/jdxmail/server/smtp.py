"""One SMTP session: the ESMTP protocol with one client, from banner to QUIT.

This is an :class:`asyncio.Protocol` of our own rather than aiosmtpd's ``SMTP``
class: jdxmail needs enhanced status codes on every reply, DATA read in large chunks
with the size limit enforced while streaming, its own decision about AUTH on the
implicit-TLS listener, bare CR/LF handling before anything is stored, and STARTTLS
without reaching into aiosmtpd's private SSL plumbing. The wire behaviour follows
aiosmtpd ≥ 1.4.6 where it is right (only ``CRLF.CRLF`` ends DATA, the input buffer
is dropped after STARTTLS, the session is reset).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import errno
import functools
import ipaddress
import itertools
import logging
import os
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from jdxmail import replies
from jdxmail.data_encoding import find_dot_line, has_bare_line_ending, to_crlf, unstuffed
from jdxmail.eventloop import kept_loop
from jdxmail.logs import SessionLog
from jdxmail.queue.spool import AcceptedMessage, DataTail, SpoolError, SpoolFull
from jdxmail.read_buffer import SharedReadBuffer
from jdxmail.replies import Reply
from jdxmail.server import proxy as proxy_protocol
from jdxmail.server.auth import (
    SaslError,
    check_password,
    decode_response,
    decode_utf8,
    parse_plain,
)
from jdxmail.server.domaincheck import DomainCheck
from jdxmail.server.policy import ADDRESS_FACTOR, AuthThrottle, Policy, Route
from jdxmail.sizes import CLEAN_ON_LOOP_LIMIT as _INLINE_CLEAN_LIMIT
from jdxmail.sizes import READ_HIGH_WATER as _READ_HIGH_WATER
from jdxmail.sizes import RECV_BUFFER_SIZE, SPILL_THRESHOLD
from jdxmail.stats import COMMIT_BUCKETS, Counters

if TYPE_CHECKING:
    from jdxmail.server.chaos import Chaos
    from jdxmail.settings.model import SmtpServerSettings

__all__ = ["DataSpill", "MessageStore", "Runtime", "SessionHost", "SmtpSession"]

#: the rejection reason (for /metrics) of a message refused by clean_data or DataSpill
_REJECTION_REASONS: dict[Reply, str] = {
    replies.BARE_LINE_ENDING: "smuggling",
    replies.NUL_BYTE: "smuggling",
    replies.STORE_FAILED: "storage",
    replies.STORE_FULL: "storage",
}

logger = logging.getLogger("jdxmail.smtp")
auth_logger = logging.getLogger("jdxmail.auth")

COMMAND_LIMIT = 512  # RFC 5321 4.5.3.1.4, including CRLF
AUTH_LINE_LIMIT = 12288  # RFC 4954 4
TEXT_LINE_LIMIT = 1000  # RFC 5321 4.5.3.1.6, including CRLF (plus one for a stuffed dot)
BAD_COMMAND_LIMIT = 10
#: bytes per second DATA must average: its deadline is TimeOut plus size / this rate
DATA_MIN_RATE = 1024
_END_OF_DATA = b"\r\n.\r\n"
#: the start of the end of data, or of a line that was dot-stuffed
_DOT_LINE = b"\r\n."
_VERB = re.compile(r"[A-Za-z]{1,16}")
_DATE = re.compile(rb"(?im)^date[ \t]*:")
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")
_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?"
)
_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_PRINTABLE = re.compile(r"[^\x21-\x7e]")
#: the replies every message gets, encoded once (Reply.encode formats and encodes)
_SENDER_OK = replies.SENDER_OK.encode()
_RECIPIENT_OK = replies.RECIPIENT_OK.encode()
_START_DATA = replies.START_DATA.encode()
#: QUEUED encoded around its one field, the queue id (a Reply per message took ~1 µs)
_QUEUED_BEFORE, _, _QUEUED_AFTER = replies.QUEUED.encode().partition(b"{queue_id}")


# Ids need to be unique, not secret: a per-process random prefix and a counter cost
# nothing, where os.urandom per message showed up in profiles.
_PROCESS_TAG = secrets.token_hex(4)
_counter = itertools.count(1)


def _new_process_tag() -> None:
    # serve --workers forks: each worker needs its own session ids.
    global _PROCESS_TAG, _counter  # noqa: PLW0603
    _PROCESS_TAG = secrets.token_hex(4)
    _counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_process_tag)


def _session_id() -> str:
    """Eight hex digits, distinct for the sessions of one process."""
    return f"{(int(_PROCESS_TAG, 16) + next(_counter) * 0x9E3779B1) & 0xFFFFFFFF:08x}"


def _unique() -> str:
    """A string unique across processes and time (for Message-IDs)."""
    return f"{_PROCESS_TAG}{os.getpid():x}.{next(_counter)}"


class MessageStore(Protocol):
    """Durable storage for accepted messages (the spool)."""

    async def store(self, message: AcceptedMessage) -> str:
        """Store *message* on stable storage and return its queue id; raise SpoolError."""
        ...


@dataclass(frozen=True, slots=True)
class Runtime:
    """What sessions read from the current settings; replaced as a whole on reload."""

    server: SmtpServerSettings
    host_name: str
    policy: Policy
    #: asks DNS whether relayed recipients' domains take mail (CheckRecipientDomain)
    domain_check: DomainCheck | None = None
    #: injected failures for testing clients (docs/web.md); None or inactive: none
    chaos: Chaos | None = None


class SessionHost(Protocol):
    """What a session needs from the server that runs it."""

    runtime: Runtime
    throttle: AuthThrottle
    store: MessageStore
    #: what the sessions count (accepted, rejected, auth failures)
    counters: Counters
    tls_context: ssl.SSLContext | None
    auth_failure_delay: float

    @property
    def stopping(self) -> bool:
        """True once the server is shutting down."""
        ...

    def session_opened(self, session: SmtpSession) -> str | None:
        """Register *session*, or name the limit reached (MaxConnections[PerClient])."""
        ...

    def session_closed(self, session: SmtpSession) -> None:
        """Forget *session*."""
        ...


class _Closed(Exception):
    """The client went away."""


class _TooLong(Exception):
    """A line was longer than allowed; it has been read and dropped."""


class _Phase(enum.Enum):
    IDLE = "idle"
    READING = "reading"  # waiting for a command
    BUSY = "busy"  # handling a command, reading DATA, storing


@dataclass
class _Transaction:
    mail_from: str
    smtputf8: bool
    options: tuple[str, ...]
    local: list[str] = field(default_factory=list)
    relay: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.local) + len(self.relay)


class _Chunks:
    """The BDAT chunks of one message: in memory, or past SPILL_THRESHOLD in a DataSpill."""

    def __init__(self, limit: int, open_spill: Callable[[], DataSpill] | None) -> None:
        self.limit = limit
        self.size = 0
        self.too_big = False
        self._open_spill = open_spill
        self._data = bytearray()
        self._spill: DataSpill | None = None
        self._last = b""

    def add(self, piece: bytes) -> None:
        """Take the next bytes of a chunk."""
        self.size += len(piece)
        if self.too_big or not piece:
            return
        if self.size > self.limit:
            self.too_big = True
            self.discard()
            return
        self._last = piece[-1:]
        if self._spill is not None:
            self._spill.feed(piece)
            return
        self._data += piece
        if len(self._data) > SPILL_THRESHOLD and self._open_spill is not None:
            self._spill = self._open_spill()
            self._spill.feed(self._data)
            self._data = bytearray()

    def finish(self) -> bytearray | DataSpill:
        """The whole message, ending with CRLF (added when the client sent none)."""
        end = b"" if self._last == b"\n" or self.size == 0 else b"\r\n"
        if self._spill is None:
            self._data += end
            return self._data
        spill, self._spill = self._spill, None
        spill.feed(end)
        spill.finish()
        return spill

    def discard(self) -> None:
        """Drop what was received (and the spilled part's file)."""
        self._data = bytearray()
        if self._spill is not None:
            self._spill.discard()
            self._spill = None


class _SyntaxProblem(ValueError):
    """A MAIL/RCPT argument is malformed; carries the reply to send."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class SmtpSession(SharedReadBuffer):
    """The server side of one SMTP connection.

    Client input is read into one buffer shared by every session of the process
    (:class:`SharedReadBuffer`); only what arrived is copied into the session's own.
    """

    read_buffer = memoryview(bytearray(RECV_BUFFER_SIZE))

    def __init__(
        self, host: SessionHost, *, implicit_tls: bool = False, proxy: bool = False
    ) -> None:
        self.host = host
        self.id = _session_id()
        self.implicit_tls = implicit_tls
        #: the connection starts with a PROXY header naming the real client
        self.proxied = proxy
        self.tls_active = implicit_tls
        self.client_ip = "?"
        self.client_port = 0
        self.helo: str | None = None
        self.esmtp = False
        self.auth_user: str | None = None
        self.transaction: _Transaction | None = None
        self.phase = _Phase.IDLE
        self.task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        #: the loop the session runs on (see _event_loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._out = bytearray()
        #: the future a session waiting for input awaits (None while it is busy)
        self._waiter: asyncio.Future[None] | None = None
        #: one timer per session for TimeOut, moved on lazily (not one per command)
        self._idle_timer: asyncio.TimerHandle | None = None
        self._wait_since = 0.0
        #: when the line or DATA being read must be complete (None: TimeOut from the
        #: first wait for it), so that a client trickling bytes cannot hold a slot
        self._deadline: float | None = None
        self._reading_data = False
        self._timed_out = False
        self._closed = False
        self._eof = False
        self._paused = False
        #: the tail of a too-long line is still to be dropped (see _read_line)
        self._discarding = False
        self._messages = 0
        #: the BDAT chunks of the current transaction (RFC 3030), once one came
        self._chunks: _Chunks | None = None
        self._log = SessionLog(logger, self.id)
        self._auth_log = SessionLog(auth_logger, self.id)

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the session task for a new connection."""
        # a stream transport; uvloop's do not subclass asyncio.Transport, so no isinstance
        self._transport = cast("asyncio.Transport", transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client_ip, self.client_port = str(peer[0]), int(peer[1])
        self.task = self._event_loop().create_task(self._run())

    def data_received(self, data: memoryview) -> None:
        """Buffer client input; stop reading while the buffer is full (bounded memory)."""
        self._buffer += data
        self._wake()
        if len(self._buffer) > _READ_HIGH_WATER and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        """The client will send nothing more: answer what it sent, then close."""
        self._eof = True
        self._wake()
        # Keep the plain transport open for our replies (a half-closed client such as
        # `printf ... | nc -N` still reads them); TLS transports cannot half-close.
        return not self.tls_active

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: wake the session task so it ends."""
        self._closed = True
        self._wake()

    # -- I/O ------------------------------------------------------------------------

    def send(self, reply: Reply) -> None:
        """Queue one reply; it is written before the session next waits for input."""
        self._out += reply.encode()

    def _send_raw(self, data: bytes) -> None:
        self._out += data

    def _flush(self) -> None:
        # Replies to pipelined commands go out in one write (one syscall, one packet).
        if self._out:
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(bytes(self._out))
            self._out.clear()

    def close(self) -> None:
        """Close the connection (queued replies are sent first)."""
        self._flush()
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        self._wake()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._closed = True
        if self._transport is not None:
            self._transport.abort()
        self._wake()

    def wake(self) -> None:
        """Interrupt a wait for the next command (used on shutdown)."""
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _due(self) -> float:
        """When the current wait ends: TimeOut of silence, or the deadline if sooner."""
        due = self._wait_since + self.host.runtime.server.time_out
        deadline = self._deadline
        return due if deadline is None or deadline > due else deadline

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the session runs on (looked up once: several waits per message)."""
        loop = self._loop = kept_loop(self._loop)
        return loop

    def _check_idle(self) -> None:
        """The TimeOut timer: end a wait past its due time, else re-arm."""
        self._idle_timer = None
        if self._closed or self._waiter is None:
            return  # not waiting for the client: the next wait arms a new timer
        loop = self._event_loop()
        due = self._due()
        if loop.time() >= due:
            self._timed_out = True
            self._wake()
        else:
            self._idle_timer = loop.call_at(due, self._check_idle)

    def _take(self, n: int) -> bytes:
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        if self._paused and len(self._buffer) < _READ_HIGH_WATER // 2 and self._transport:
            self._paused = False
            self._transport.resume_reading()
        return out

    def _take_all(self) -> None:
        """Drop the whole input buffer (its bytes were used in place)."""
        self._buffer.clear()
        if self._paused and self._transport:
            self._paused = False
            self._transport.resume_reading()

    async def _fill(self) -> None:
        """Wait for more input; raise _Closed on EOF and TimeoutError when idle too long."""
        self._flush()
        if self._closed or self._eof:
            raise _Closed
        if self.host.stopping and self.phase is _Phase.READING and self.transaction is None:
            raise _Closed
        loop = self._event_loop()
        self._wait_since = loop.time()
        if self._deadline is None:
            self._deadline = self._wait_since + self.host.runtime.server.time_out
        timer = self._idle_timer
        due = self._due()
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._idle_timer = loop.call_at(due, self._check_idle)
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._timed_out:
            raise TimeoutError
        if self._closed and not self._buffer:
            raise _Closed

    async def _read_line(self, limit: int) -> bytes:
        """One line up to and including LF; raise _TooLong for a longer one.

        _TooLong comes as soon as *limit* is passed, so that the client is told while
        it is still sending (RFC 5321 4.5.3.1.4); the rest of that line is dropped as
        it arrives, by the next call, so memory stays bounded however long it is.
        """
        if self._discarding:
            await self._discard_line()
        scanned = 0
        while True:
            index = self._buffer.find(b"\n", scanned)
            if index >= 0:
                if index + 1 > limit:
                    self._take(index + 1)
                    raise _TooLong
                return self._take(index + 1)
            scanned = len(self._buffer)
            if scanned > limit:
                self._take_all()
                self._discarding = True
                raise _TooLong
            await self._fill()

    async def _discard_line(self) -> None:
        """Drop input up to and including the next LF (the tail of a too-long line)."""
        while True:
            index = self._buffer.find(b"\n")
            if index >= 0:
                self._take(index + 1)
                self._discarding = False
                return
            self._take_all()
            await self._fill()

    # -- the session ----------------------------------------------------------------

    async def _run(self) -> None:
        if self.proxied and not await self._read_proxy_header():
            self.close()
            return
        runtime = self.host.runtime
        if self.host.stopping:
            self.send(replies.SHUTTING_DOWN.format(host=runtime.host_name))
            self.close()
            return
        limit = self.host.session_opened(self)
        if limit is not None:
            per_client = limit == "MaxConnectionsPerClient"
            self._log.warning(
                "%s refused: %s (%d) reached",
                self.client_ip,
                limit,
                runtime.server.max_connections_per_client
                if per_client
                else runtime.server.max_connections,
            )
            refusal = replies.TOO_MANY_FROM_CLIENT if per_client else replies.TOO_MANY_CONNECTIONS
            self.send(refusal.format(host=runtime.host_name))
            self.close()
            return
        self._log.info(
            "%s:%d connected%s",
            self.client_ip,
            self.client_port,
            " (TLS)" if self.tls_active else "",
        )
        try:
            self.send(replies.BANNER.format(host=runtime.host_name))
            await self._command_loop()
        except _Closed:
            pass
        except TimeoutError:
            if self._reading_data:
                self._log.info(
                    "%s sent message data slower than %d bytes/s, closing",
                    self.client_ip,
                    DATA_MIN_RATE,
                )
                self.send(replies.DATA_TIMEOUT.format(host=self.host.runtime.host_name))
            else:
                self._log.info(
                    "%s sent no complete command within %ds, closing",
                    self.client_ip,
                    self.host.runtime.server.time_out,
                )
                self.send(replies.TIMEOUT.format(host=self.host.runtime.host_name))
        except Exception:
            self._log.exception("session failed")
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            self._reset_transaction()
            self.close()
            self.host.session_closed(self)
            self._log.info("%s disconnected", self.client_ip)

    async def _read_proxy_header(self) -> bool:
        """Read the PROXY header and take the client's address from it; False: close.

        Only TrustedProxies may connect; the whole header must come within
        ProxyTimeout. Nothing is sent before it (SMTP's server speaks first, so no
        client data can pass for a header).
        """
        server = self.host.runtime.server
        proxy_ip = self.client_ip
        try:
            trusted = any(ipaddress.ip_address(proxy_ip) in net for net in server.trusted_proxies)
        except ValueError:
            trusted = False
        if not trusted:
            self._log.warning(
                "%s is not in SmtpServer.TrustedProxies: PROXY port connection closed",
                proxy_ip,
            )
            return False
        self._deadline = asyncio.get_running_loop().time() + server.proxy_timeout
        try:
            while (header := proxy_protocol.parse(self._buffer)) is None:
                await self._fill()
        except proxy_protocol.ProxyHeaderError as exc:
            self._log.warning("%s: %s; connection closed", proxy_ip, exc)
            return False
        except (TimeoutError, _Closed):
            self._log.warning(
                "%s sent no complete PROXY header within %ds; connection closed",
                proxy_ip,
                server.proxy_timeout,
            )
            return False
        finally:
            self._deadline = None
            self._timed_out = False
        self._take(header.length)
        if not header.local:  # LOCAL: the proxy's own check; its address applies
            self.client_ip, self.client_port = header.client_ip, header.client_port
        self._log.debug("PROXY v%d from %s: client %s", header.version, proxy_ip, self.client_ip)
        return True

    async def _command_loop(self) -> None:
        bad_commands = 0
        while not self._closed:
            if self.host.stopping and self.transaction is None:
                self.send(replies.SHUTTING_DOWN.format(host=self.host.runtime.host_name))
                return
            self.phase = _Phase.READING
            self._deadline = None  # a command line gets TimeOut from the first wait for it
            try:
                raw = await self._read_line(COMMAND_LIMIT)
            except _TooLong:
                raw = None
            except _Closed:
                if self.host.stopping and not self._closed:
                    self.send(replies.SHUTTING_DOWN.format(host=self.host.runtime.host_name))
                raise
            self.phase = _Phase.BUSY
            reply = self._decode_command(raw)
            if isinstance(reply, Reply):
                bad_commands += 1
                self.send(reply)
            else:
                verb, arg = reply
                handler = getattr(self, f"_cmd_{verb}", None)
                if handler is None:
                    bad_commands += 1
                    self._log.debug("unknown command %r", verb[:16])
                    self.send(replies.UNKNOWN_COMMAND)
                else:
                    if self._log.isEnabledFor(logging.DEBUG):
                        shown = verb if verb == "AUTH" else f"{verb} {arg}".strip()
                        self._log.debug(">> %s", shown)
                    chaos = self.host.runtime.chaos
                    if chaos is not None and chaos.active and self._chaos(chaos, verb):
                        continue
                    await handler(arg)
            if bad_commands >= BAD_COMMAND_LIMIT:
                self._log.warning("%s sent too many bad commands, closing", self.client_ip)
                self.send(replies.TOO_MANY_ERRORS.format(host=self.host.runtime.host_name))
                return

    def _chaos(self, chaos: Chaos, verb: str) -> bool:
        """Answer an injected failure instead of *verb* when chaos says so (testing)."""
        reply = chaos.reply(verb)  # (other verbs have no rule: None)
        if reply is None:
            return False
        self._log.info("chaos: answered %s with %s", verb, reply.code)
        self.send(reply)
        if reply.code == 421:
            self.close()
        return True

    def _decode_command(self, raw: bytes | None) -> Reply | tuple[str, str]:
        if raw is None:
            return replies.LINE_TOO_LONG
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        if b"\r" in line:
            return replies.BARE_LINE_ENDING_COMMAND
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return replies.NOT_UTF8
        verb, _, arg = text.strip(" \t").partition(" ")
        if not _VERB.fullmatch(verb):
            return replies.UNKNOWN_COMMAND
        return verb.upper(), arg.strip(" \t")

    def _reset_transaction(self) -> None:
        self.transaction = None
        if self._chunks is not None:
            self._chunks.discard()
            self._chunks = None

    # -- simple commands -------------------------------------------------------------

    async def _cmd_EHLO(self, arg: str) -> None:
        await self._greet(arg, esmtp=True)

    async def _cmd_HELO(self, arg: str) -> None:
        await self._greet(arg, esmtp=False)

    async def _greet(self, arg: str, *, esmtp: bool) -> None:
        runtime = self.host.runtime
        name = arg.split(" ", 1)[0]
        verb = "EHLO" if esmtp else "HELO"
        if not name:
            self.send(replies.SYNTAX_HELO.format(verb=verb))
            return
        if _CONTROL.search(name):
            self.send(replies.BAD_HELO_NAME.format(verb=verb))
            return
        if not name.isascii():
            # RFC 6531 allows U-labels here; the Received: header gets the A-label form,
            # as a header of a message that may not be SMTPUTF8 must stay ASCII.
            try:
                name = name.encode("idna").decode("ascii")
            except UnicodeError:
                self.send(replies.BAD_HELO_NAME.format(verb=verb))
                return
        self._reset_transaction()
        self.helo, self.esmtp = name, esmtp
        if not esmtp:
            self.send(replies.HELO_OK.format(host=runtime.host_name))
            return
        keywords: list[str] = []
        availability = runtime.policy.auth_availability(
            client_ip=self.client_ip, tls_active=self.tls_active
        )
        if availability.offered and self.auth_user is None:
            keywords.append("AUTH PLAIN LOGIN")
        keywords += [
            f"SIZE {runtime.server.max_message_size}",
            "8BITMIME",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
        ]
        if self.host.tls_context is not None and not self.tls_active:
            keywords.append("STARTTLS")
        keywords.append("SMTPUTF8")
        self._send_raw(replies.ehlo_reply(runtime.host_name, keywords))

    async def _cmd_NOOP(self, arg: str) -> None:
        self.send(replies.OK)

    async def _cmd_RSET(self, arg: str) -> None:
        if arg:
            self.send(replies.SYNTAX_NO_ARGUMENT.format(verb="RSET"))
            return
        self._reset_transaction()
        self.send(replies.RESET_OK)

    async def _cmd_QUIT(self, arg: str) -> None:
        self.send(replies.BYE)
        self.close()

    async def _cmd_VRFY(self, arg: str) -> None:
        if not arg:
            self.send(replies.SYNTAX_NO_ARGUMENT.format(verb="VRFY"))
            return
        self.send(replies.VRFY_CANNOT)

    async def _cmd_HELP(self, arg: str) -> None:
        self.send(replies.HELP)

    async def _cmd_EXPN(self, arg: str) -> None:
        self.send(replies.NOT_IMPLEMENTED)

    _cmd_TURN = _cmd_EXPN
    _cmd_ETRN = _cmd_EXPN

    # -- STARTTLS (RFC 3207) ---------------------------------------------------------

    async def _cmd_STARTTLS(self, arg: str) -> None:
        context = self.host.tls_context
        if arg:
            self.send(replies.SYNTAX_NO_ARGUMENT.format(verb="STARTTLS"))
            return
        if self.tls_active:
            self.send(replies.TLS_ALREADY)
            return
        if context is None:
            self.send(replies.TLS_NOT_AVAILABLE)
            return
        transport = self._transport
        assert transport is not None
        self.send(replies.TLS_READY)
        self._flush()
        # RFC 3207 §4.2 / CVE-2021-33515 class: anything the client pipelined after
        # STARTTLS arrived in plaintext and must not be read as if it were encrypted.
        dropped = len(self._buffer)
        self._buffer.clear()
        self._paused = False  # start_tls resumes reading on the raw transport itself
        if dropped:
            self._log.warning("dropped %d bytes sent after STARTTLS before the handshake", dropped)
        loop = asyncio.get_running_loop()
        try:
            new_transport = await loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=float(self.host.runtime.server.time_out),
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self._log.info("TLS handshake with %s failed: %s", self.client_ip, exc)
            self.abort()
            raise _Closed from None
        if new_transport is None:
            raise _Closed
        self._transport = new_transport
        self.tls_active = True
        self.host.counters.tls_starttls += 1
        # RFC 3207 §4.2: forget everything learned before TLS, including any login.
        self.helo, self.esmtp, self.auth_user = None, False, None
        self._reset_transaction()
        self._log.info("TLS started (%s)", new_transport.get_extra_info("cipher", ("?",))[0])

    # -- AUTH (RFC 4954) -------------------------------------------------------------

    async def _cmd_AUTH(self, arg: str) -> None:
        runtime = self.host.runtime
        if self.helo is None:
            self.send(replies.NEED_HELO)
            return
        if not self.esmtp:
            self.send(replies.NEED_EHLO)
            return
        if self.auth_user is not None:
            self.send(replies.AUTH_ALREADY)
            return
        if self.transaction is not None:
            self.send(replies.AUTH_IN_TRANSACTION)
            return
        availability = runtime.policy.auth_availability(
            client_ip=self.client_ip, tls_active=self.tls_active
        )
        if not availability.offered:
            assert availability.refusal is not None
            self.send(availability.refusal)
            return
        if self.host.throttle.address_blocked(self.client_ip):
            self._auth_log.warning("%s is throttled after failed logins", self.client_ip)
            self.host.counters.reject("throttled")
            self.send(replies.AUTH_THROTTLED)
            self.close()
            return
        parts = arg.split()
        if not parts or len(parts) > 2:
            self.send(replies.AUTH_SYNTAX)
            return
        mechanism = parts[0].upper()
        initial = parts[1] if len(parts) == 2 else None
        try:
            if mechanism == "PLAIN":
                credentials = await self._sasl_plain(initial)
            elif mechanism == "LOGIN":
                credentials = await self._sasl_login(initial)
            else:
                self.send(replies.AUTH_UNKNOWN_MECHANISM)
                return
        except SaslError as exc:
            if exc.kind == "utf8":
                await self._auth_failed("?", reason="user name or password not UTF-8")
                return
            self._auth_log.warning(
                "%s sent malformed AUTH %s data (%s)",
                self.client_ip,
                mechanism,
                "not base64" if exc.kind == "base64" else "not authzid NUL user NUL password",
            )
            self.send(replies.AUTH_BAD_BASE64 if exc.kind == "base64" else replies.AUTH_BAD_PLAIN)
            return
        if credentials is None:
            return
        authzid, username, password = credentials
        if self.host.throttle.blocked(self.client_ip, username):
            # this name failed too often from here: no password check (guessing stops)
            self._auth_log.warning(
                "%s is throttled for user %s after failed logins",
                self.client_ip,
                _PRINTABLE.sub("?", username)[:64],
            )
            self.send(replies.AUTH_USER_THROTTLED)
            self.close()
            return
        user = runtime.policy.user(username)
        outcome = await check_password(user, password)
        if outcome.success and authzid in ("", username) and user is not None:
            self.host.counters.auth_successes += 1
            self.auth_user = user.user_name
            self._auth_log.info(
                "%s logged in as %s (%s)", self.client_ip, user.user_name, mechanism
            )
            self.send(replies.AUTH_OK)
            return
        await self._auth_failed(
            username,
            sent_hash=outcome.sent_stored_hash,
            broken_hash=outcome.broken_hash,
            reason="unknown user" if user is None else "wrong password",
        )

    async def _auth_failed(
        self,
        username: str,
        *,
        reason: str,
        sent_hash: bool = False,
        broken_hash: str | None = None,
    ) -> None:
        shown = _PRINTABLE.sub("?", username)[:64]
        self.host.counters.auth_failures += 1
        throttle = self.host.throttle
        failures = throttle.record_failure(self.client_ip, username)
        limit = throttle.limit
        if broken_hash:
            reason = "the stored password of this user is unusable"
            self._auth_log.error(
                "user %s: %s; run `jdxmail validate-config` (JDX-B2)", shown, broken_hash
            )
        self._auth_log.warning(
            "%s login failed for user %s: %s (%d of %d failures allowed)",
            self.client_ip,
            shown,
            reason,
            failures,
            limit,
        )
        if sent_hash:
            self._auth_log.warning(
                "user %s: the client sent the stored password hash instead of the password; "
                "log in with the plain password, e.g. server.login(user, 'password') (JDX-D2)",
                shown,
            )
        delay = self.host.auth_failure_delay * min(failures, 5)
        if delay > 0:
            await asyncio.sleep(delay)
        if throttle.address_blocked(self.client_ip):
            self._auth_log.warning(
                "%s reached %d failed logins over all user names (AuthFailureLimit x %d), "
                "disconnecting",
                self.client_ip,
                throttle.address_limit,
                ADDRESS_FACTOR,
            )
            self.send(replies.AUTH_THROTTLED)
            self.close()
            return
        if failures >= limit:
            self._auth_log.warning(
                "%s reached AuthFailureLimit (%d) for user %s, disconnecting",
                self.client_ip,
                limit,
                shown,
            )
            self.send(replies.AUTH_USER_THROTTLED)
            self.close()
            return
        self.send(replies.AUTH_FAILED)

    async def _challenge(self, prompt: Reply) -> bytes | None:
        """Send a 334 prompt and decode the answer; None when the client cancelled."""
        self.send(prompt)
        self._deadline = None
        try:
            raw = await self._read_line(AUTH_LINE_LIMIT)
        except _TooLong:
            raise SaslError("base64") from None
        text = raw.rstrip(b"\r\n").decode("ascii", "replace").strip()
        if text == "*":
            self.send(replies.AUTH_CANCELLED)
            return None
        return decode_response(text)

    async def _sasl_plain(self, initial: str | None) -> tuple[str, str, str] | None:
        if initial is None:
            blob = await self._challenge(replies.AUTH_PLAIN_CONTINUE)
            if blob is None:
                return None
        else:
            blob = decode_response(initial)
        return parse_plain(blob)

    async def _sasl_login(self, initial: str | None) -> tuple[str, str, str] | None:
        if initial is None:
            user_blob = await self._challenge(replies.AUTH_LOGIN_USERNAME)
            if user_blob is None:
                return None
        else:
            user_blob = decode_response(initial)
        password_blob = await self._challenge(replies.AUTH_LOGIN_PASSWORD)
        if password_blob is None:
            return None
        return "", decode_utf8(user_blob), decode_utf8(password_blob)

    # -- MAIL / RCPT ---------------------------------------------------------------------

    async def _cmd_MAIL(self, arg: str) -> None:
        runtime = self.host.runtime
        if self.helo is None:
            self.send(replies.NEED_HELO)
            return
        if self.transaction is not None:
            self.send(replies.NESTED_MAIL)
            return
        try:
            address, params = _parse_path(arg, "FROM:", replies.SYNTAX_MAIL, null_ok=True)
            options, smtputf8 = self._mail_params(params)
            _check_address(address, smtputf8)
        except _SyntaxProblem as problem:
            self.send(problem.reply)
            return
        if self.auth_user is not None:
            user = runtime.policy.user(self.auth_user)
            if user is not None and not runtime.policy.sender_allowed(user, address):
                self._log.warning(
                    "user %s may not send as <%s> (AllowedSenders)", self.auth_user, address
                )
                self.host.counters.reject("policy")
                self.send(replies.SENDER_NOT_ALLOWED.format(user=self.auth_user))
                return
        self.transaction = _Transaction(address, smtputf8, options)
        self._send_raw(_SENDER_OK)

    def _mail_params(self, params: list[str]) -> tuple[tuple[str, ...], bool]:
        limit = self.host.runtime.server.max_message_size
        options: list[str] = []
        smtputf8 = False
        for param in params:
            name, eq, value = param.partition("=")
            key = name.upper()
            if not _PARAM.fullmatch(name) or (eq and not value):
                raise _SyntaxProblem(replies.BAD_PARAMETER.format(name=name[:32] or "?"))
            if key == "SIZE":
                if not value.isdigit() or len(value) > 20:
                    raise _SyntaxProblem(replies.BAD_PARAMETER.format(name="SIZE"))
                if int(value) > limit:
                    self.host.counters.reject("size")
                    raise _SyntaxProblem(replies.TOO_BIG.format(limit=limit))
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    raise _SyntaxProblem(replies.BAD_PARAMETER.format(name="BODY"))
            elif key == "SMTPUTF8":
                if eq:
                    raise _SyntaxProblem(replies.BAD_PARAMETER.format(name="SMTPUTF8"))
                smtputf8 = True
            elif key == "AUTH":
                # RFC 4954 §5: the submitter's identity; we note our own login instead.
                continue
            else:
                raise _SyntaxProblem(replies.UNKNOWN_PARAMETER.format(name=key[:32]))
            options.append(f"{key}={value}" if eq else key)
        return tuple(options), smtputf8

    async def _cmd_RCPT(self, arg: str) -> None:
        runtime = self.host.runtime
        transaction = self.transaction
        if self.helo is None:
            self.send(replies.NEED_HELO)
            return
        if transaction is None:
            self.send(replies.NEED_MAIL)
            return
        try:
            address, params = _parse_path(arg, "TO:", replies.SYNTAX_RCPT, null_ok=False)
            if params:
                name = params[0].partition("=")[0].upper()
                raise _SyntaxProblem(replies.UNKNOWN_PARAMETER.format(name=name[:32]))
            _check_address(address, transaction.smtputf8)
        except _SyntaxProblem as problem:
            self.send(problem.reply)
            return
        policy = runtime.policy
        if transaction.count >= runtime.server.max_recipients:
            self.host.counters.reject("recipients")
            self.send(replies.TOO_MANY_RECIPIENTS.format(limit=runtime.server.max_recipients))
            return
        if not policy.may_send_to(
            address, client_ip=self.client_ip, authenticated=self.auth_user is not None
        ):
            self._log.warning(
                "%s may not relay to <%s> without logging in (from <%s>)",
                self.client_ip,
                address,
                transaction.mail_from,
            )
            self.host.counters.reject("policy")
            self.send(replies.RELAY_DENIED)
            return
        route = policy.route(address)
        if route is Route.RELAY and runtime.domain_check is not None:
            refusal = await runtime.domain_check.refusal(address)
            if refusal is not None:
                self._log.warning("refused <%s>: %s", address, refusal.text)
                self.host.counters.rejected += 1
                self.send(refusal)
                return
        target = transaction.local if route is Route.LOCAL else transaction.relay
        if address.casefold() not in (a.casefold() for a in target):
            target.append(address)
        self._send_raw(_RECIPIENT_OK)

    # -- DATA ----------------------------------------------------------------------------

    async def _cmd_DATA(self, arg: str) -> None:
        transaction = self.transaction
        if self.helo is None:
            self.send(replies.NEED_HELO)
            return
        if transaction is None:
            self.send(replies.NEED_MAIL)
            return
        if transaction.count == 0:
            self.send(replies.NEED_RCPT)
            return
        if arg:
            self.send(replies.SYNTAX_NO_ARGUMENT.format(verb="DATA"))
            return
        if self._chunks is not None:
            self.send(replies.DATA_AFTER_BDAT)
            return
        self._send_raw(_START_DATA)
        limit = self.host.runtime.server.max_message_size
        content, dot_lines = await self._read_data(limit)
        self.transaction = None
        if content is None:
            self._log.warning(
                "message from <%s> refused: larger than MaxMessageSize (%d bytes)",
                transaction.mail_from,
                limit,
            )
            self.host.counters.reject("size")
            self.send(replies.TOO_BIG.format(limit=limit))
            return
        await self._accept(transaction, content, unstuff=True, dot_lines=dot_lines)

    async def _accept(
        self,
        transaction: _Transaction,
        content: bytearray | DataSpill,
        *,
        unstuff: bool,
        dot_lines: bool = True,
    ) -> None:
        """Check, clean and store a complete message; send the reply.

        *dot_lines* False: the DATA reader found no line after the first that starts
        with a dot (see clean_data).
        """
        runtime = self.host.runtime
        normalize = runtime.server.bare_line_endings == "Normalize"
        strip_nul = runtime.server.nul_bytes == "Strip"
        tail: DataTail | None = None
        body: bytes | bytearray
        if isinstance(content, DataSpill):
            # Checked and cleaned as it arrived; its tail is already in the spool's tmp/.
            body = content.head if content.head is not None else bytearray()
            problem, tail = content.problem, content.tail
            if content.error is not None:
                self._log.error(
                    "could not store the message from <%s>: %s",
                    transaction.mail_from,
                    content.error,
                )
        elif len(content) > _INLINE_CLEAN_LIMIT:
            # Scanning megabytes takes milliseconds; keep other sessions responsive.
            body, problem = await asyncio.to_thread(
                clean_data,
                content,
                normalize=normalize,
                strip_nul=strip_nul,
                unstuff=unstuff,
                dot_lines=dot_lines,
            )
        else:
            body, problem = clean_data(
                content,
                normalize=normalize,
                strip_nul=strip_nul,
                unstuff=unstuff,
                dot_lines=dot_lines,
            )
        if problem is not None:
            self._log.warning("message from <%s> refused: %s", transaction.mail_from, problem)
            self.host.counters.reject(_REJECTION_REASONS.get(problem, "content"))
            self.send(problem)
            return
        self._messages += 1
        size = len(body) + (tail.size if tail is not None else 0)
        # A stored line may start with a dot when the reader saw a CRLF-dot or cleaning
        # changed the data (an un-stuffed first line, a normalised line end or a
        # stripped NUL can make one); else none does (the trace headers' never do).
        stored_dot_lines = dot_lines or body is not content
        received_at = time.time()
        data, message_id = add_trace_headers(
            body,
            helo=self.helo,
            client_ip=self.client_ip,
            host_name=runtime.host_name,
            protocol=self._protocol_name(transaction.smtputf8),
            transaction_id=f"{self.id}.{self._messages}",
            auth_user=self.auth_user,
            recipients=[*transaction.local, *transaction.relay],
            when=received_at,
        )
        # add_trace_headers put the headers into the received buffer itself (when
        # nothing had to be un-stuffed): a big message is held once, not twice.
        del content, body
        message = AcceptedMessage(
            mail_from=transaction.mail_from,
            relay_recipients=tuple(transaction.relay),
            local_recipients=tuple(transaction.local),
            data=data,
            message_id=message_id,
            auth_user=self.auth_user,
            client_address=self.client_ip,
            session_id=self.id,
            received_at=received_at,
            mail_options=transaction.options,
            dot_lines=stored_dot_lines,
            tail=tail,
        )
        started = time.perf_counter()
        try:
            queue_id = await self.host.store.store(message)
        except SpoolError as exc:
            self._log.error("could not store the message from <%s>: %s", transaction.mail_from, exc)
            self.host.counters.reject("storage")
            self.send(replies.STORE_FULL if isinstance(exc, SpoolFull) else replies.STORE_FAILED)
            return
        except Exception:
            self._log.exception("could not store the message from <%s>", transaction.mail_from)
            self.host.counters.reject("storage")
            self.send(replies.STORE_FAILED)
            return
        self._log.info(
            "accepted %s from <%s> size=%d local=%s relay=%s queue id %s",
            f"<{message_id}>",
            transaction.mail_from,
            message.size,
            ",".join(transaction.local) or "-",
            ",".join(transaction.relay) or "-",
            queue_id,
        )
        counters = self.host.counters
        counters.observe(
            "jdxmail_spool_commit_seconds", time.perf_counter() - started, COMMIT_BUCKETS
        )
        counters.accepted += 1
        counters.received_bytes += size
        self._send_raw(_QUEUED_BEFORE + queue_id.encode("utf-8", "replace") + _QUEUED_AFTER)

    # -- BDAT (RFC 3030) -----------------------------------------------------------------

    async def _cmd_BDAT(self, arg: str) -> None:
        parts = arg.split()
        if (
            not parts
            or len(parts) > 2
            or not parts[0].isdigit()
            or len(parts[0]) > 18
            or (len(parts) == 2 and parts[1].upper() != "LAST")
        ):
            # The size of the chunk that follows is unknown: its bytes cannot be told
            # from commands, so the session cannot go on.
            self.send(replies.SYNTAX_BDAT)
            self.close()
            return
        size, last = int(parts[0]), len(parts) == 2
        transaction = self.transaction
        refusal = None
        if self.helo is None:
            refusal = replies.NEED_HELO
        elif transaction is None:
            refusal = replies.NEED_MAIL
        elif transaction.count == 0:
            refusal = replies.NEED_RCPT
        if refusal is not None or transaction is None:
            await self._read_chunk(size, lambda piece: None)  # RFC 3030 §3: read, drop
            self.send(refusal or replies.NEED_MAIL)
            return
        limit = self.host.runtime.server.max_message_size
        if self._chunks is None:
            new_tail = getattr(self.host.store, "new_tail", None)
            self._chunks = _Chunks(
                limit,
                None if new_tail is None else lambda: self._open_spill(new_tail, unstuff=False),
            )
        chunks = self._chunks
        await self._read_chunk(size, chunks.add)
        if chunks.too_big:
            self._log.warning(
                "message from <%s> refused: larger than MaxMessageSize (%d bytes)",
                transaction.mail_from,
                limit,
            )
            self._reset_transaction()  # RFC 3030 §2: the transaction has failed
            self.send(replies.TOO_BIG.format(limit=limit))
            return
        if not last:
            self.send(replies.CHUNK_OK.format(size=size))
            return
        self._chunks = None
        self.transaction = None
        await self._accept(transaction, chunks.finish(), unstuff=False)

    async def _read_chunk(self, size: int, sink: Callable[[bytes], None]) -> None:
        """Read exactly *size* bytes of BDAT data, handing them to *sink* as they come."""
        start = self._event_loop().time() + self.host.runtime.server.time_out
        received = 0
        self._reading_data = True
        while received < size:
            if not self._buffer:
                self._deadline = start + received / DATA_MIN_RATE
                await self._fill()
            piece = self._take(min(size - received, len(self._buffer)))
            received += len(piece)
            sink(piece)
        self._reading_data = False

    def _protocol_name(self, smtputf8: bool) -> str:
        # RFC 3848 / RFC 6531 "with" protocol types.
        name = "ESMTP" if self.esmtp else "SMTP"
        if smtputf8:
            name = "UTF8SMTP"
        if self.tls_active:
            name += "S"
        if self.auth_user is not None:
            name += "A"
        return name

    async def _read_data(self, limit: int) -> tuple[bytearray | DataSpill | None, bool]:
        """Read message data up to CRLF.CRLF; None when it was larger than *limit*.

        Input is read in chunks; past the limit only the last four bytes are kept (to
        find the terminator), so memory stays bounded by the limit. The flag is False
        when no CRLF in the data is followed by a dot (nothing to un-stuff after the
        first line).
        """
        self._reading_data = True  # left set when it raises: _run picks the 421 by it
        data = await self._read_data_until_end(limit)
        self._reading_data = False
        return data

    async def _read_data_until_end(self, limit: int) -> tuple[bytearray | DataSpill | None, bool]:
        # The deadline grows with what arrived: TimeOut + received / DATA_MIN_RATE.
        start = self._event_loop().time() + self.host.runtime.server.time_out
        received = 0
        data = bytearray()
        # Past SPILL_THRESHOLD the data goes through a DataSpill to the spool as it
        # arrives (when the store has tails), and *data* keeps only what is unchecked.
        new_tail = getattr(self.host.store, "new_tail", None)
        spill: DataSpill | None = None
        fed = 0  # bytes handed to the spill
        scan_from = 0
        too_big = False
        dot_lines = False  # a CRLF followed by a dot was seen (not the end)
        try:
            while True:
                index = -1
                if fed == 0 and not too_big and data.startswith(_END_OF_DATA[2:]):
                    index = -2  # ".\r\n" right after the DATA line's CRLF: no content
                else:
                    # CRLF and a dot: the end when CRLF follows, else a line to un-stuff.
                    # One search finds both (clean_data then need not look for dots).
                    while (found := find_dot_line(data, scan_from)) >= 0:
                        if len(data) < found + len(_END_OF_DATA):
                            break  # undecided: searched again with what comes next
                        if data.startswith(b"\r\n", found + len(_DOT_LINE)):
                            index = found
                            break
                        dot_lines = True
                        scan_from = found + len(_DOT_LINE)
                if index != -1:
                    rest = data[index + len(_END_OF_DATA) :]
                    if rest:
                        self._buffer[0:0] = rest
                    if too_big or fed + index + 2 > limit:
                        return None, dot_lines
                    if spill is not None:
                        spill.feed(data[: index + 2])
                        spill.finish()
                        handed, spill = spill, None
                        return handed, True
                    # Trim the tail in place: no copy. (The head is never trimmed: a
                    # bytearray with a trimmed head is copied whole when it grows, as it
                    # does when the trace headers are put in front.)
                    del data[index + 2 :]
                    return data, dot_lines
                if not too_big and fed + len(data) > limit + 3:
                    too_big = True
                    if spill is not None:  # free its file now, not at the end of the data
                        spill.discard()
                        spill = None
                if too_big:
                    del data[:-4]
                elif new_tail is not None and (spill is not None or len(data) > SPILL_THRESHOLD):
                    if spill is None:
                        spill = self._open_spill(new_tail)
                    # The last four bytes may be the start of CRLF.CRLF: keep them.
                    if len(data) > 4:
                        spill.feed(data[:-4])
                        fed += len(data) - 4
                        del data[:-4]
                scan_from = max(0, len(data) - 4)
                if not self._buffer:
                    self._deadline = start + received / DATA_MIN_RATE
                    await self._fill()
                received += len(self._buffer)
                if data:
                    data += self._buffer
                else:
                    # The first input becomes the data as it is (no copy of it),
                    # and the empty data the input buffer.
                    data, self._buffer = self._buffer, data
                self._take_all()
        finally:
            if spill is not None:
                spill.discard()

    def _open_spill(self, new_tail: Callable[[], DataTail], *, unstuff: bool = True) -> DataSpill:
        server = self.host.runtime.server
        normalize = server.bare_line_endings == "Normalize"
        strip_nul = server.nul_bytes == "Strip"
        tail: DataTail | None = None
        refusal = replies.STORE_FAILED
        try:
            tail = new_tail()
        except SpoolError as exc:
            self._log.error("cannot take a big message into the spool: %s", exc)
            if isinstance(exc, SpoolFull):
                refusal = replies.STORE_FULL
        return DataSpill(
            tail, normalize=normalize, strip_nul=strip_nul, unstuff=unstuff, refusal=refusal
        )


def clean_data(
    content: bytes | bytearray,
    *,
    normalize: bool,
    strip_nul: bool = False,
    unstuff: bool = True,
    dot_lines: bool = True,
) -> tuple[bytes | bytearray, Reply | None]:
    """Check line endings, NUL bytes and line lengths and undo dot-stuffing (RFC 5321 4.5.2).

    *content* is the data as received, ending in CRLF (or empty). A bare CR or LF is
    refused (550) unless *normalize*, which turns every line ending into CRLF. A NUL
    byte (not allowed in mail: RFC 5321 2.3.8, RFC 2045 2.7) is refused unless
    *strip_nul*, which removes them. The result is *content* itself when there is
    nothing to change (no copy). BDAT data is not dot-stuffed: *unstuff* False.
    *dot_lines* False: the caller found no CRLF followed by a dot in *content*, so
    only its first line can start with one (unless bare line endings are normalised).
    """
    # A receiver that drops NUL bytes would see "\r\n\0.\r\n" as the end of data and
    # read the rest as a second message: never store or relay one.
    has_nul = content.find(b"\x00") >= 0
    if has_nul and not strip_nul:
        return b"", replies.NUL_BYTE
    content, problem = _unstuff(content, normalize=normalize, unstuff=unstuff, dot_lines=dot_lines)
    if has_nul and problem is None:
        # After un-stuffing: the line "\0." was not stuffed and stays the line "."
        # (which the relay client stuffs again on the way out).
        content = content.replace(b"\x00", b"")
    return content, problem


def _unstuff(
    content: bytes | bytearray, *, normalize: bool, unstuff: bool = True, dot_lines: bool = True
) -> tuple[bytes | bytearray, Reply | None]:
    if has_bare_line_ending(content):
        if not normalize:
            return b"", replies.BARE_LINE_ENDING
        content = to_crlf(content)
        dot_lines = True  # a bare LF or CR before a dot is a CRLF before it now
    if _has_long_line(content):
        return b"", replies.DATA_LINE_TOO_LONG
    if not unstuff:
        return content, None
    if not dot_lines:
        return (content[1:] if content.startswith(b".") else content), None
    return unstuffed(content), None


class DataSpill:
    """Message data too big to hold in memory, checked and cleaned as it arrives.

    Input is cut at line ends (a line never spans two pieces) and each piece goes
    through :func:`clean_data`, so the result is what clean_data would make of the
    whole. The first piece (about SPILL_THRESHOLD bytes, with the header section) is
    kept in memory for the trace headers; the rest is written to a :class:`DataTail`
    in the spool's tmp/. After a problem (bare line end, NUL, long line, a failed
    write) nothing more is kept and the tail is closed: *problem* is the reply.
    """

    def __init__(
        self,
        tail: DataTail | None,
        *,
        normalize: bool,
        strip_nul: bool,
        unstuff: bool = True,
        refusal: Reply = replies.STORE_FAILED,
    ) -> None:
        self.tail = tail
        self.normalize = normalize
        self.strip_nul = strip_nul
        self.unstuff = unstuff
        #: the first cleaned piece (None until one was made)
        self.head: bytearray | None = None
        #: *refusal* when there is no tail (the spool could not make one)
        self.problem: Reply | None = None if tail is not None else refusal
        #: the write error behind a STORE_FAILED problem
        self.error: OSError | None = None
        self._carry: bytes | bytearray = b""

    def feed(self, chunk: bytes | bytearray) -> None:
        """Take the next bytes of data (still dot-stuffed, as received)."""
        if self.problem is not None:
            return
        block = self._carry + chunk if self._carry else chunk
        # Cut after the last LF, or after a CR whose next byte is here and no LF (a
        # CR at the very end may be half of a CRLF).
        end = max(block.rfind(b"\n"), block.rfind(b"\r", 0, len(block) - 1)) + 1
        self._carry = block[end:]
        if len(self._carry) > TEXT_LINE_LIMIT + 1:
            self._fail(replies.DATA_LINE_TOO_LONG)
        elif end:
            self._emit(block if end == len(block) else block[:end])

    def finish(self) -> None:
        """The data is complete (it ended with CRLF)."""
        block, self._carry = self._carry, b""
        if block and self.problem is None:
            self._emit(block)

    def discard(self) -> None:
        """Drop the tail (the message is not stored after all)."""
        if self.tail is not None:
            self.tail.close()
            self.tail = None

    def _fail(self, problem: Reply) -> None:
        self.problem = problem
        self.head = None
        self.discard()

    def _emit(self, block: bytes | bytearray) -> None:
        cleaned, problem = clean_data(
            block, normalize=self.normalize, strip_nul=self.strip_nul, unstuff=self.unstuff
        )
        if problem is not None:
            self._fail(problem)
        elif self.head is None:
            # (*block* is a copy of ours, and so is what clean_data made of it)
            self.head = cleaned if isinstance(cleaned, bytearray) else bytearray(cleaned)
        elif self.tail is not None:
            try:
                self.tail.write(cleaned)
            except OSError as exc:
                self.error = exc
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                self._fail(replies.STORE_FULL if full else replies.STORE_FAILED)


def _has_long_line(content: bytes | bytearray) -> bool:
    """True when a line (without its CRLF) is TEXT_LINE_LIMIT bytes or longer.

    Jumps from line start to the last LF within the next TEXT_LINE_LIMIT + 1 bytes: a
    window without LF is a line that is too long. About 1000 bytes per step in C,
    where splitting into lines built a list of every line.
    """
    rfind = content.rfind  # (looked up once: ~100 steps per 100 KB)
    last = len(content) - TEXT_LINE_LIMIT
    start = 0
    while start <= last:
        newline = rfind(b"\n", start, start + _LONG_LINE_WINDOW)
        if newline < 0:
            return True
        start = newline + 1
    return False


#: _has_long_line's window: a line of TEXT_LINE_LIMIT bytes and its LF
_LONG_LINE_WINDOW = TEXT_LINE_LIMIT + 1


def add_trace_headers(
    body: bytes | bytearray,
    *,
    helo: str | None,
    client_ip: str,
    host_name: str,
    protocol: str,
    transaction_id: str,
    auth_user: str | None,
    recipients: list[str],
    when: float,
) -> tuple[bytes | bytearray, str]:
    """Prepend a Received: header (RFC 5321 4.4), and Date and Message-ID when missing.

    Returns the new data and the message id (without angle brackets). A bytearray
    *body* gets the headers inserted in place and is returned itself.
    """
    header_end = body.find(b"\r\n\r\n")
    # Search the header section in place (endpos) rather than a copy of it.
    headers_end = len(body) if header_end < 0 else header_end + 2
    found = _MESSAGE_ID.search(body, 0, headers_end)
    date = _date_header(when)
    lines = [
        f"Received: from {_clean(helo or 'unknown')} ([{client_ip}])",
        f"\tby {_clean(host_name)} (jdxmail) with {protocol} id {transaction_id}",
    ]
    if auth_user is not None:
        lines.append(f"\t(authenticated user {_clean(auth_user)})")
    if len(recipients) == 1:
        lines.append(f"\tfor <{_clean(recipients[0])}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    if _DATE.search(body, 0, headers_end) is None:
        # RFC 5322 3.6 requires one; a submission server adds it (RFC 6409 8.3).
        lines.append(f"Date: {date}")
    message_id = ""
    if found is not None:
        value = found.group(1).replace(b"\r\n", b"").decode("utf-8", "replace").strip()
        message_id = _clean(value).strip("<>").strip()[:250]
    if not message_id:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(when))
        message_id = f"{stamp}.{_unique()}@{_clean(host_name)}"
        if found is None:
            lines.append(f"Message-ID: <{message_id}>")
    prefix = ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")
    first_end = body.find(b"\r\n")
    if first_end < 0:
        first_end = len(body)
    # (the first line matched in place, not copied)
    if first_end and not _HEADER_LINE.match(body, 0, first_end):
        # The client sent no header section: keep its first line out of ours.
        prefix += b"\r\n"
    if isinstance(body, bytearray):
        body[0:0] = prefix  # in place: no second copy of a big message
        return body, message_id
    return prefix + body, message_id


_date_cache: tuple[int, str] = (-1, "")


def _date_header(when: float) -> str:
    """RFC 5322 date of *when* in local time; formatted once per second (profiles)."""
    global _date_cache  # noqa: PLW0603
    second = int(when)
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return _date_cache[1]


_UNCLEAN = re.compile(r"[\x00-\x1f\x7f()]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str) -> str:
    """Printable text for a header: no control characters, no folding."""
    return _UNCLEAN.sub("?", text)[:255]


def _parse_path(arg: str, keyword: str, syntax: Reply, *, null_ok: bool) -> tuple[str, list[str]]:
    """Split ``FROM:<address> params`` into the address and the parameter list."""
    if not arg[: len(keyword)].upper() == keyword:
        raise _SyntaxProblem(syntax)
    rest = arg[len(keyword) :].lstrip(" ")
    if rest.startswith("<"):
        end = _closing_bracket(rest)
        if end < 0:
            raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="missing >"))
        address, params_text = rest[1:end], rest[end + 1 :]
        if params_text and not params_text.startswith(" "):
            raise _SyntaxProblem(syntax)
        if address.startswith("@"):
            # A source route (RFC 5321 4.1.2: accept and ignore): @a,@b:user@c
            _, colon, address = address.partition(":")
            if not colon:
                raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="bad source route"))
    else:
        address, _, params_text = rest.partition(" ")
        if not address:
            raise _SyntaxProblem(syntax)
    if not address and not null_ok:
        raise _SyntaxProblem(syntax)
    return address, params_text.split()


def _closing_bracket(text: str) -> int:
    if '"' not in text and "\\" not in text:  # the usual <user@host>: nothing quoted
        return text.find(">", 1)
    quoted = escaped = False
    for index, char in enumerate(text[1:], start=1):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    return -1


def _check_new_address(address: str, smtputf8: bool) -> None:
    """Refuse addresses that could not be delivered or would corrupt a header."""
    if not address:
        return
    if _CONTROL.search(address):
        raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="control character"))
    if not address.isascii() and not smtputf8:
        raise _SyntaxProblem(replies.NON_ASCII_ADDRESS)
    if len(address) > 254:
        raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="too long"))
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
        if address.casefold() != "postmaster":
            raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="no domain"))
    if not local or len(local.encode("utf-8")) > 64:
        raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="bad local part"))
    quoted = len(local) >= 2 and local.startswith('"') and local.endswith('"')
    if not quoted:
        atoms_ok = _DOT_ATOM.fullmatch(local) is not None if local.isascii() else " " not in local
        if not atoms_ok or ".." in local or local.startswith(".") or local.endswith("."):
            raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="bad local part"))
    if at and not domain:
        raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="no domain"))
    if domain:
        if domain.startswith("[") and domain.endswith("]"):
            if not _address_literal(domain[1:-1]):
                raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="bad address literal"))
            return
        ascii_domain = domain
        if not domain.isascii():
            try:
                ascii_domain = domain.encode("idna").decode("ascii")
            except UnicodeError:
                raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="bad domain")) from None
        if len(ascii_domain) > 253 or not _DOMAIN.fullmatch(ascii_domain):
            raise _SyntaxProblem(replies.BAD_ADDRESS.format(detail="bad domain"))


#: _check_new_address for the addresses it passed lately: the same senders and
#: recipients come back message after message, and the check is pure (a refusal is
#: an exception, which the cache never keeps)
_check_address = functools.lru_cache(maxsize=1024)(_check_new_address)


_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?:[\x21-\x5a\x5e-\x7e]+")


def _address_literal(text: str) -> bool:
    """Whether *text* (between the brackets) is an RFC 5321 4.1.3 address literal:
    a dotted-quad IPv4 address, ``IPv6:`` and an IPv6 address, or ``tag:content``."""
    try:
        if text[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(text[5:])
        else:
            if ":" in text:
                return _GENERAL_LITERAL.fullmatch(text) is not None
            ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
