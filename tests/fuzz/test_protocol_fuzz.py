"""A Hypothesis state machine speaks SMTP to a real server on loopback: valid and
mutated commands, AUTH payloads, pipelined groups, STARTTLS at odd moments and DATA
with every mix of line endings, dot-stuffing, NUL bytes and long lines.

Invariants: every reply is a well-formed RFC 5321 reply of the class the command
calls for; the server stays up for the next client; every message answered 250 is in
the mailbox byte for byte (after the documented normalisation: Received, Date and
Message-ID headers put in front); nothing is logged at ERROR and no traceback.

The server runs in a thread of the test (its own event loop, real sockets) rather
than as ``jdxmail serve`` so that failed logins cost no delay (``auth_failure_delay``
is 1 s per failure in serve). CI runs a fixed small budget; set
``JDXMAIL_FUZZ_EXAMPLES`` (and optionally ``JDXMAIL_FUZZ_STEPS``) for a long run.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import socket
import ssl
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from jdxmail.passwords import HashType, hash_password
from jdxmail.queue.mailbox import mailbox_dir_for
from jdxmail.server.app import SmtpServerApp
from jdxmail.settings.model import Settings

LONG_RUN = os.environ.get("JDXMAIL_FUZZ_EXAMPLES")
EXAMPLES = int(LONG_RUN or "100")
STEPS = int(os.environ.get("JDXMAIL_FUZZ_STEPS", "25"))
USER, PASSWORD = "fuzz@fuzz.test", "fuzz-password"

REPLY_LINE = re.compile(rb"([2-5][0-5]\d)([ -])([\x20-\x7e]*)\r\n")
BARE_ENDING = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class ServerThread:
    """A SmtpServerApp on 127.0.0.1 (port 0) in a thread with its own event loop."""

    def __init__(self, app_settings: Settings) -> None:
        self.settings = app_settings
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-server", daemon=True)

    def start(self) -> None:
        """Start and wait until the server listens."""
        self._thread.start()
        assert self._ready.wait(30), "the server did not start"
        if self._error is not None:
            raise self._error

    def alive(self) -> bool:
        """Whether the server's thread still runs."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start() or seen as a dead thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = SmtpServerApp(
            self.settings, port=0, auth_failure_delay=0.0, grace=1.0, self_signed=True
        )
        await app.start()
        self.port = next(a.port for a in app.addresses if not a.implicit_tls)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await app.stop(1.0)


class Broken(Exception):
    """The server closed the connection (after a 421, or at QUIT)."""


@dataclass
class Conn:
    """A client connection and what the session state should be."""

    sock: socket.socket | ssl.SSLSocket
    buffer: bytes = b""
    greeted: bool = False
    ehlo: bool = False
    tls: bool = False
    authenticated: bool = False
    in_mail: bool = False
    recipients: list[str] = field(default_factory=list)

    def send(self, data: bytes) -> None:
        """Write *data* as it is."""
        self.sock.sendall(data)

    def reply(self) -> tuple[int, list[bytes]]:
        """Read one reply; assert it is well-formed (same code on every line, ASCII)."""
        lines: list[bytes] = []
        code = 0
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise Broken(f"closed after {lines!r}")
                self.buffer += chunk
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            match = REPLY_LINE.fullmatch(line + b"\r\n")
            assert match is not None, f"malformed reply line {line!r}"
            this = int(match.group(1))
            assert code in (0, this), f"reply lines with codes {code} and {this}"
            code = this
            lines.append(match.group(3))
            if match.group(2) == b" ":
                return code, lines

    def command(self, line: bytes) -> int:
        """Send *line* + CRLF and return the reply code."""
        self.send(line + b"\r\n")
        return self.reply()[0]


@dataclass
class Accepted:
    """A message the server answered 250 for: its recipients and data as meant."""

    recipients: list[str]
    data: bytes
    token: str


hosts = st.from_regex(r"[a-z][a-z0-9]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True)
locals_ = st.from_regex(r"[a-z0-9][a-z0-9_+-]{0,12}", fullmatch=True)
bad_hosts = st.sampled_from(["", "x\x01y", "x\x00y", "a" * 600])
#: (an address without <> is accepted on purpose, as Postfix does)
bad_addresses = st.sampled_from(
    ["<x@>", "<@x.test>", "<x@fuzz.test", "<a b@fuzz.test>", "<x@[1.2.3]>", "<>", "<x\x01@a.test>"]
)
line_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=60,
)


@st.composite
def bodies(draw: st.DrawFn, *, clean: bool = False) -> bytes:
    """Message content lines with CRLF mostly, sometimes bare LF/CR, leading dots, NUL
    and a line far too long; the header section carries a unique token.

    *clean*: CRLF only, no NUL, no long line (content the server must accept): the
    mailbox check then runs whatever the odds Hypothesis gives the faults above.
    """
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        text = draw(line_text).encode()
        if draw(st.integers(0, 4)) == 0:
            text = b"." * draw(st.integers(1, 3)) + text
        if clean:
            parts.append(text + b"\r\n")
            continue
        if draw(st.integers(0, 30)) == 0:
            text += b"\0"
        if draw(st.integers(0, 30)) == 0:
            text = b"L" * 1100
        ending = draw(st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r"]))
        parts.append(text + ending)
    return b"".join(parts)


def expected_final(data: bytes) -> int:
    """The final reply code for DATA content *data* (defaults: Reject bare, Reject NUL)."""
    if BARE_ENDING.search(data) or b"\0" in data:
        return 550
    if any(len(line) > 1000 for line in data.split(b"\r\n")):
        return 550
    return 250


def stuffed(data: bytes) -> bytes:
    """*data* dot-stuffed and ended as DATA needs (RFC 5321 4.5.2)."""
    out = re.sub(rb"(^|\r\n)\.", rb"\1..", data)
    return out + (b"" if out.endswith(b"\r\n") or not out else b"\r\n") + b".\r\n"


class SmtpMachine(RuleBasedStateMachine):
    """Drives one server through many connections; see the module docstring."""

    server: ServerThread
    mailbox: Path
    errors: list[logging.LogRecord]
    #: what the run did (messages accepted and refused, logins, TLS, groups)
    seen: Counter[str]

    def __init__(self) -> None:
        super().__init__()
        self.conn: Conn | None = None
        self.accepted: list[Accepted] = []

    # -- connection ------------------------------------------------------------------

    def _connect(self) -> Conn:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        conn = Conn(sock)
        code, _ = conn.reply()
        assert code == 220
        conn.greeted = True
        return conn

    def _closed(self) -> None:
        if self.conn is not None:
            self.conn.sock.close()
        self.conn = None

    def _do(self, action: object) -> None:
        """Run *action*; a 421 or a close by the server ends the connection."""
        assert callable(action)
        try:
            action()
        except Broken:
            self._closed()

    def _code(self, line: bytes) -> int:
        assert self.conn is not None
        code = self.conn.command(line)
        if code == 421:
            raise Broken("421")
        return code

    @precondition(lambda self: self.conn is None)
    @rule()
    def connect(self) -> None:
        """A new client: the banner is 220."""
        self.conn = self._connect()

    @precondition(lambda self: self.conn is not None)
    @rule(name=hosts, verb=st.sampled_from([b"EHLO", b"HELO"]))
    def greet(self, name: str, verb: bytes) -> None:
        """EHLO/HELO with a valid name: 250, and the transaction is reset."""

        def act() -> None:
            assert self._code(verb + b" " + name.encode()) == 250
            assert self.conn is not None
            self.conn.ehlo = verb == b"EHLO" or self.conn.ehlo
            self.conn.in_mail, self.conn.recipients = False, []

        self._do(act)

    @precondition(lambda self: self.conn is not None)
    @rule(name=bad_hosts, verb=st.sampled_from([b"EHLO", b"HELO"]))
    def greet_badly(self, name: str, verb: bytes) -> None:
        """EHLO/HELO with a bad name: a 5xx."""
        self._do(lambda: self._expect_class(verb + b" " + name.encode(), 5))

    def _expect_class(self, line: bytes, klass: int) -> None:
        code = self._code(line)
        assert code // 100 == klass, f"{line!r} got {code}"

    @precondition(lambda self: self.conn is not None)
    @rule(local=locals_, size=st.none() | st.integers(0, 10_000))
    def mail(self, local: str, size: int | None) -> None:
        """MAIL FROM: 250 after a greeting with no transaction open, else 503."""

        def act() -> None:
            assert self.conn is not None
            param = b"" if size is None or not self.conn.ehlo else f" SIZE={size}".encode()
            code = self._code(b"MAIL FROM:<" + f"{local}@fuzz.test".encode() + b">" + param)
            if not self.conn.greeted or self.conn.in_mail or not (self.conn.ehlo or not param):
                assert code == 503 or code // 100 == 5, code
                return
            helo_done = self.conn.ehlo or code == 250
            assert code == (250 if helo_done else 503), code
            self.conn.in_mail = code == 250

        self._do(act)

    @precondition(lambda self: self.conn is not None)
    @rule(local=locals_)
    def rcpt(self, local: str) -> None:
        """RCPT TO: 250 inside a transaction, 503 outside."""

        def act() -> None:
            assert self.conn is not None
            address = f"{local}@fuzz.test"
            code = self._code(b"RCPT TO:<" + address.encode() + b">")
            if self.conn.in_mail:
                assert code in (250, 452), code
                if code == 250:
                    self.conn.recipients.append(address)
            else:
                assert code == 503, code

        self._do(act)

    @precondition(lambda self: self.conn is not None)
    @rule(verb=st.sampled_from([b"MAIL FROM:", b"RCPT TO:"]), address=bad_addresses)
    def bad_address(self, verb: bytes, address: str) -> None:
        """A malformed MAIL/RCPT path is refused with a 5xx and changes nothing."""

        def act() -> None:
            assert self.conn is not None
            if verb == b"MAIL FROM:" and address == "<>":
                return  # (the null sender is valid for MAIL)
            self._expect_class(verb + address.encode(), 5)

        self._do(act)

    @precondition(lambda self: self.conn is not None)
    @rule(body=bodies())
    def data(self, body: bytes) -> None:
        """DATA: 354 with recipients (503 without), then 250 or the documented 550."""

        def act() -> None:
            assert self.conn is not None
            code = self._code(b"DATA")
            if not self.conn.recipients:
                assert code == 503, code
                return
            assert code == 354, code
            self._send_body(body)

        self._do(act)

    def _send_body(self, body: bytes) -> None:
        assert self.conn is not None
        token = uuid.uuid4().hex
        data = f"X-Fuzz-Id: {token}\r\nSubject: fuzz\r\n\r\n".encode() + body
        self.conn.send(stuffed(data))
        code, _ = self.conn.reply()
        if code == 421:
            raise Broken("421")
        expected = expected_final(data if data.endswith(b"\r\n") else data + b"\r\n")
        assert code == expected, f"final reply {code}, expected {expected} for {data!r}"
        self.seen["accepted" if code == 250 else "refused"] += 1
        if code == 250:
            self.accepted.append(Accepted(list(self.conn.recipients), data, token))
        self.conn.in_mail, self.conn.recipients = False, []

    @precondition(lambda self: self.conn is not None)
    @rule(sender=locals_, rcpts=st.lists(locals_, min_size=1, max_size=3), body=bodies())
    def pipelined(self, sender: str, rcpts: list[str], body: bytes) -> None:
        """MAIL, RCPTs and DATA in one write (RFC 2920): one reply each, in order."""
        self._pipelined(sender, rcpts, body)

    @precondition(lambda self: self.conn is not None)
    @rule(
        sender=locals_,
        rcpts=st.lists(locals_, min_size=1, max_size=3),
        body=bodies(clean=True),
    )
    def pipelined_clean(self, sender: str, rcpts: list[str], body: bytes) -> None:
        """The same with content the server must accept (and store byte for byte)."""
        self._pipelined(sender, rcpts, body)

    def _pipelined(self, sender: str, rcpts: list[str], body: bytes) -> None:
        def act() -> None:
            assert self.conn is not None
            if not self.conn.ehlo or self.conn.in_mail:
                return
            group = b"MAIL FROM:<" + f"{sender}@fuzz.test".encode() + b">\r\n"
            group += b"".join(b"RCPT TO:<" + f"{r}@fuzz.test".encode() + b">\r\n" for r in rcpts)
            self.conn.send(group + b"DATA\r\n")
            codes = [self.conn.reply()[0] for _ in range(len(rcpts) + 2)]
            if 421 in codes:
                raise Broken("421")
            assert codes == [250] * (len(rcpts) + 1) + [354], codes
            self.conn.in_mail = True
            self.conn.recipients = [f"{r}@fuzz.test" for r in rcpts]
            self.seen["pipelined"] += 1
            self._send_body(body)

        self._do(act)

    @precondition(lambda self: self.conn is not None)
    @rule(
        mechanism=st.sampled_from([b"PLAIN", b"LOGIN", b"CRAM-MD5", b"plain"]),
        initial=st.none() | st.binary(max_size=40),
        garbage=st.booleans(),
        answers=st.lists(st.binary(max_size=30), max_size=3),
        right=st.booleans(),
    )
    def auth(
        self,
        mechanism: bytes,
        initial: bytes | None,
        garbage: bool,
        answers: list[bytes],
        right: bool,
    ) -> None:
        """AUTH with valid, random or garbage payloads: only AUTH's replies, never a
        dropped session."""

        def act() -> None:
            assert self.conn is not None
            if right and mechanism.upper() == b"PLAIN":
                initial_b64 = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
            elif initial is None:
                initial_b64 = b""
            elif garbage:
                initial_b64 = initial.hex().encode() + b"!*"
            else:
                initial_b64 = base64.b64encode(initial) or b"="
            line = b"AUTH " + mechanism + (b" " + initial_b64 if initial_b64 else b"")
            code = self._code(line)
            for answer in answers:
                if code != 334:
                    break
                code = self._code(base64.b64encode(answer))
            if code == 334:
                code = self._code(b"*")
                assert code == 501, code
            assert code in (235, 501, 502, 503, 504, 535, 538), code
            if code == 235:
                assert right
                assert not self.conn.authenticated
                assert not self.conn.in_mail
                self.conn.authenticated = True
                self.seen["logged in"] += 1

        self._do(act)

    @precondition(lambda self: self.conn is not None)
    @rule()
    def starttls(self) -> None:
        """STARTTLS at any moment: 220 and a TLS session that starts over, or a 5xx."""

        def act() -> None:
            assert self.conn is not None
            code = self._code(b"STARTTLS")
            if code != 220:
                assert code // 100 == 5, code
                return
            assert not self.conn.tls
            assert not self.conn.buffer
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            wrapped = context.wrap_socket(self.conn.sock, server_hostname="localhost")
            fresh = Conn(wrapped, greeted=True, tls=True)
            self.seen["tls"] += 1
            self.conn = fresh

        self._do(act)

    @precondition(lambda self: self.conn is not None)
    @rule(verb=st.sampled_from([b"RSET", b"NOOP"]))
    def simple(self, verb: bytes) -> None:
        """RSET and NOOP: 250; RSET ends the transaction."""

        def act() -> None:
            assert self.conn is not None
            assert self._code(verb) == 250
            if verb == b"RSET":
                self.conn.in_mail, self.conn.recipients = False, []

        self._do(act)

    @precondition(lambda self: self.conn is not None)
    @rule(junk=st.binary(min_size=0, max_size=80), ending=st.sampled_from([b"\r\n", b"\n"]))
    def junk(self, junk: bytes, ending: bytes) -> None:
        """A line that is no command (or ends in a bare LF): a 5xx, then go on."""

        def act() -> None:
            assert self.conn is not None
            line = b"X" + junk.replace(b"\r", b"").replace(b"\n", b"")
            self.conn.send(line + ending)
            code = self.conn.reply()[0]
            if code == 421:
                raise Broken("421")
            assert code // 100 == 5, code

        self._do(act)

    @precondition(lambda self: self.conn is not None)
    @rule()
    def quit(self) -> None:
        """QUIT: 221 and the server closes."""

        def act() -> None:
            assert self.conn is not None
            assert self.conn.command(b"QUIT") == 221
            assert self.conn.sock.recv(1) == b""
            raise Broken("quit")

        self._do(act)

    # -- invariants and the end of an example ----------------------------------------

    @invariant()
    def server_runs(self) -> None:
        """The server's thread is alive."""
        assert self.server.alive()

    @invariant()
    def nothing_logged_as_error(self) -> None:
        """No ERROR line and no traceback in the log."""
        assert not self.errors, [r.getMessage() for r in self.errors]

    def teardown(self) -> None:
        """Close, check the server still serves a new client, check every accepted
        message arrived byte for byte."""
        self._closed()
        fresh = self._connect()
        assert fresh.command(b"NOOP") == 250
        fresh.sock.close()
        for message in self.accepted:
            for recipient in dict.fromkeys(r.lower() for r in message.recipients):
                folder = mailbox_dir_for(self.mailbox, recipient)
                stored = [p for p in folder.iterdir() if message.token.encode() in p.read_bytes()]
                assert len(stored) == 1, (recipient, message.token)
                content = stored[0].read_bytes()
                assert content.endswith(message.data)
                prefix = content[: -len(message.data)]
                # the mailbox copy's envelope lines, then the headers jdxmail adds
                envelope = re.match(
                    rb"Return-Path: <[^\r\n>]*>\r\nDelivered-To: <([^>]*)>\r\n", prefix
                )
                assert envelope is not None, prefix
                assert envelope.group(1).decode().lower() == recipient, prefix
                assert re.fullmatch(
                    rb"(?:(?:Received|Date|Message-ID):[^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*)+",
                    prefix[envelope.end() :],
                ), prefix
                stored[0].unlink()
                self.seen["checked in the mailbox"] += 1


class _Errors(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


@pytest.fixture
def fuzz_server(tmp_path: Path) -> Iterator[tuple[ServerThread, Path, list[logging.LogRecord]]]:
    """A dev-inbox server with one user, its mailbox root, and the ERROR records."""
    app_settings = Settings.model_validate(
        {
            "SmtpServer": {
                "HostName": "fuzz.test",
                "BindAddress": "127.0.0.1",
                "AuthFailureLimit": 100000,
                "Users": [
                    {
                        "UserName": USER,
                        "Password": hash_password(PASSWORD, HashType.SHA256),
                        "HashType": "SHA256",
                    }
                ],
            },
            "Paths": {
                "Spool": str(tmp_path / "spool"),
                "Mailbox": str(tmp_path / "mailbox"),
                "Logs": str(tmp_path / "logs"),
            },
        }
    )
    errors: list[logging.LogRecord] = []
    handler = _Errors(errors)
    root = logging.getLogger("jdxmail")
    root.addHandler(handler)
    server = ServerThread(app_settings)
    server.start()
    try:
        yield server, tmp_path / "mailbox", errors
    finally:
        server.stop()
        root.removeHandler(handler)


def test_smtp_protocol_fuzz(
    fuzz_server: tuple[ServerThread, Path, list[logging.LogRecord]],
) -> None:
    """Random sessions of valid and mutated SMTP keep every reply well-formed and of
    the right class, the server up, accepted mail intact and the log free of errors."""
    server, mailbox, errors = fuzz_server
    SmtpMachine.server, SmtpMachine.mailbox, SmtpMachine.errors = server, mailbox, errors
    SmtpMachine.seen = Counter()
    run_state_machine_as_test(
        SmtpMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            # the CI budget is the same examples every run; a long run explores
            derandomize=LONG_RUN is None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    seen = SmtpMachine.seen
    print(f"fuzz run: {EXAMPLES} examples x {STEPS} steps: {dict(seen)}")
    # the run must have reached the mailbox check at least once (which paths the fixed
    # CI examples take moves with the state machine's code; a long run covers them all)
    assert seen["checked in the mailbox"] > 0
