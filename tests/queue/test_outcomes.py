"""The outcome table, backoff, circuit breaker and DSN format, row by row."""

from __future__ import annotations

import email
import email.policy
import ssl

import aiosmtplib
import hypothesis
import hypothesis.strategies
import pytest

from jdxmail.queue.bounce import FailedRecipient, build_dsn, human_duration
from jdxmail.queue.outcomes import (
    OUTCOME_TABLE,
    EightBitUnsupported,
    Outcome,
    RelayUnusable,
    Scope,
    Stage,
    classify,
    enhanced_status,
)
from jdxmail.queue.worker import CircuitBreaker, backoff_delay

#: every byte mapped to one of CR, LF, '.', 'a' (messages made of line endings and dots)
_CRLF_DOT = bytes(b"\r\n.a"[i % 4] for i in range(256))

# (stage, error, expected row, outcome, scope, failover, trips breaker, status)
CASES: list[tuple[Stage, BaseException, str, Outcome, Scope, bool, bool, str]] = [
    (
        Stage.TLS,
        ssl.SSLCertVerificationError(1, "certificate verify failed"),
        "certificate not trusted",
        Outcome.RETRY, Scope.RELAY, True, True, "4.7.5",
    ),
    (
        Stage.TLS,
        ssl.SSLError(1, "wrong version number"),
        "TLS handshake failed",
        Outcome.RETRY, Scope.RELAY, True, True, "4.7.0",
    ),
    (
        Stage.TLS,
        RelayUnusable("no STARTTLS", stage=Stage.TLS, status="4.7.10"),
        "relay unusable (no STARTTLS, no usable AUTH)",
        Outcome.RETRY, Scope.RELAY, True, True, "4.7.10",
    ),
    (
        Stage.DATA,
        aiosmtplib.SMTPDataError(421, "4.3.2 shutting down"),
        "service closing (421)",
        Outcome.RETRY, Scope.RELAY, True, True, "4.3.2",
    ),
    (
        Stage.CONNECT,
        aiosmtplib.SMTPConnectResponseError(554, "no service for you"),
        "greeting or EHLO refused",
        Outcome.RETRY, Scope.RELAY, True, True, "5.4.2",
    ),
    (
        Stage.AUTH,
        aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Username and Password not accepted"),
        "authentication refused (our configuration, never the sender's fault)",
        Outcome.RETRY, Scope.RELAY, True, True, "5.7.8",
    ),
    (
        Stage.CONNECT,
        ConnectionRefusedError(111, "Connection refused"),
        "connection failed, dropped or timed out",
        Outcome.RETRY, Scope.RELAY, True, True, "4.4.1",
    ),
    (
        Stage.MAIL,
        EightBitUnsupported("8-bit content, no 8BITMIME"),
        "relay lacks 8BITMIME for 8-bit content",
        Outcome.RETRY, Scope.MESSAGE, True, False, "4.6.3",
    ),
    (
        Stage.MAIL,
        aiosmtplib.SMTPNotSupported("needs SMTPUTF8"),
        "relay lacks a needed extension (SMTPUTF8)",
        Outcome.RETRY, Scope.MESSAGE, True, False, "4.6.7",
    ),
    (
        Stage.RCPT,
        ValueError("Invalid address"),
        "address the relay cannot take (bad syntax)",
        Outcome.BOUNCE, Scope.RECIPIENT, False, False, "5.1.3",
    ),
    (
        Stage.MAIL,
        aiosmtplib.SMTPSenderRefused(451, "4.7.1 greylisted", "a@b"),
        "sender refused for now (MAIL 4xx)",
        Outcome.RETRY, Scope.MESSAGE, True, False, "4.7.1",
    ),
    (
        Stage.MAIL,
        aiosmtplib.SMTPSenderRefused(550, "5.7.60 Client does not have permissions", "a@b"),
        "sender refused (MAIL 5xx)",
        Outcome.BOUNCE, Scope.MESSAGE, False, False, "5.7.60",
    ),
    (
        Stage.RCPT,
        aiosmtplib.SMTPRecipientRefused(450, "mailbox busy", "c@d"),
        "recipient refused for now (RCPT 4xx)",
        Outcome.RETRY, Scope.RECIPIENT, False, False, "4.0.0",
    ),
    (
        Stage.RCPT,
        aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "c@d"),
        "recipient refused (RCPT 5xx)",
        Outcome.BOUNCE, Scope.RECIPIENT, False, False, "5.1.1",
    ),
    (
        Stage.DATA,
        aiosmtplib.SMTPDataError(452, "4.3.1 insufficient storage"),
        "message refused for now (DATA 4xx)",
        Outcome.RETRY, Scope.MESSAGE, True, False, "4.3.1",
    ),
    (
        Stage.DATA,
        aiosmtplib.SMTPDataError(554, "5.7.1 spam"),
        "message refused (DATA 5xx)",
        Outcome.BOUNCE, Scope.MESSAGE, False, False, "5.7.1",
    ),
    (
        Stage.DATA,
        RuntimeError("something odd"),
        "anything else (unexpected reply or error)",
        Outcome.RETRY, Scope.RELAY, True, True, "4.0.0",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[2] for c in CASES])
def test_each_row_of_the_outcome_table(
    case: tuple[Stage, BaseException, str, Outcome, Scope, bool, bool, str],
) -> None:
    """Each upstream failure gets the outcome, scope and status its table row says."""
    stage, error, row, outcome, scope, failover, trips, status = case
    verdict = classify(stage, error)
    assert verdict.row == row
    assert (verdict.outcome, verdict.scope) == (outcome, scope)
    assert (verdict.failover, verdict.trips_breaker) == (failover, trips)
    assert verdict.status == status


def test_every_row_has_a_case() -> None:
    """No row of the table goes untested."""
    assert {c[2] for c in CASES} == {row.name for row in OUTCOME_TABLE}


def test_verdict_text_keeps_upstream_reply() -> None:
    """The reply a user sees is the upstream's code and text, on one line."""
    verdict = classify(Stage.RCPT, aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no\nsuch", "x"))
    assert verdict.text == "550 5.1.1 no such"


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 unknown", "5.1.1"),
        (550, "unknown", "5.0.0"),
        (451, "try later", "4.0.0"),
        (250, "2.0.0 Ok: queued as X", "2.0.0"),
    ],
)
def test_enhanced_status(code: int, text: str, expected: str) -> None:
    """The RFC 3463 status is taken from the reply, else made from the reply code."""
    assert enhanced_status(code, text, "4.0.0") == expected


def test_backoff_doubles_up_to_cap_with_jitter() -> None:
    """Retry delays double from the first delay, stop at the cap, and vary by ±20 %."""
    middle = [backoff_delay(n, 60, 3600, lambda: 0.5) for n in range(1, 9)]
    assert middle == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert backoff_delay(1, 60, 3600, lambda: 0.0) == pytest.approx(48)
    assert backoff_delay(1, 60, 3600, lambda: 1.0) == pytest.approx(72)


def test_circuit_breaker_opens_after_three_and_grows() -> None:
    """Three failures in a row skip the relay; more failures skip it longer; success resets."""
    breaker = CircuitBreaker("r")
    breaker.failure(100.0)
    breaker.failure(100.0)
    assert breaker.allows(100.0)
    breaker.failure(100.0)
    assert not breaker.allows(129.0)
    assert breaker.allows(130.0)
    breaker.failure(130.0)
    assert not breaker.allows(189.0)
    breaker.success()
    assert breaker.allows(130.0)


def test_dsn_files_a_refusal_apart_from_an_expiry() -> None:
    """A 550 is "could not be delivered", only the 4.4.7 recipient "could not be delivered in time"."""
    data, _ = build_dsn(
        reporting_host="jdx.test",
        original_sender="a@x",
        original_data=b"Subject: hi\r\n\r\nbody\r\n",
        queue_id="Q2",
        received_at=1_700_000_000.0,
        failed=[
            FailedRecipient("gone@y", "5.1.1", "550 5.1.1 no such user", "up", 1.7e9),
            FailedRecipient("slow@y", "4.4.7", "message expired after 5 days", "up", 1.7e9),
        ],
    )
    text = next(email.message_from_bytes(data, policy=email.policy.default).iter_parts())
    body = text.get_content()
    refused, _, expired = body.partition("in time")
    assert "<gone@y>: 550 5.1.1" in refused
    assert "could not be delivered to these recipients" in refused
    assert "<slow@y>" in expired
    assert "<gone@y>" not in expired


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(432000, "5 days"), (120, "2 minutes"), (9000, "2 hours 30 minutes"), (45, "45 seconds")],
)
def test_lifetimes_read_as_durations(seconds: float, words: str) -> None:
    """An expiry says "after 2 minutes", never "after 0.00138889 days"."""
    assert human_duration(seconds) == words


def test_dsn_is_rfc3464_multipart_report() -> None:
    """A DSN has the explanation, per-recipient status fields and the original header."""
    original = b"Subject: hello\r\nFrom: <a@x>\r\n\r\nsecret body\r\n"
    data, message_id = build_dsn(
        reporting_host="jdx.test",
        original_sender="a@x",
        original_data=original,
        queue_id="Q1",
        received_at=1_700_000_000.0,
        failed=[
            FailedRecipient(
                "b@y", "5.1.1", "550 5.1.1 no such user", "gmail", 1.7e9, "smtp.gmail.com"
            )
        ],
    )
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["To"] == "a@x"
    assert parsed["Message-ID"] == f"<{message_id}>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert "hello" in parsed["Subject"]
    text, status, headers = parsed.iter_parts()
    assert "<b@y>: 550 5.1.1 no such user" in text.get_content()
    raw_status = status.as_string()
    assert "Reporting-MTA: dns; jdx.test" in raw_status
    assert "Action: failed" in raw_status
    assert "Remote-MTA: dns; smtp.gmail.com" in raw_status
    assert "Subject: hello" in headers.as_string()
    assert b"secret body" not in data
    assert b"\n" not in data.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: a\r\n\r\nplain\r\n",
        b".leading dot\r\n..two\r\n.\r\nend",
        b"bare\nLF\rCR\r\n.dot after\n.dot after LF\r\n",
        b"",
        b"\r\n.\r\n",
    ],
)
def test_dot_stuffing_matches_aiosmtplib(data: bytes) -> None:
    """The fast DATA payload is byte for byte what aiosmtplib's own DATA would send."""
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from jdxmail.data_encoding import dot_stuffed

    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
    assert dot_stuffed(data) == expected


@hypothesis.given(hypothesis.strategies.binary(max_size=40).map(lambda b: b.translate(_CRLF_DOT)))
def test_dot_stuffing_matches_aiosmtplib_for_any_line_endings(data: bytes) -> None:
    """Whatever mix of CR, LF and dots a message has, the DATA payload is what
    aiosmtplib's own DATA would send (line endings made CRLF, leading dots doubled)."""
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from jdxmail.data_encoding import dot_stuffed

    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
    assert dot_stuffed(data) == expected


_LINE = b"x" * 76 + b"\r\n"


@pytest.mark.parametrize(
    "data",
    [
        _LINE * 1300,
        b".first\r\n" + _LINE * 1300,
        _LINE * 1300 + b".last",
        _LINE * 700 + b".middle\r\n" + _LINE * 600 + b"..\r\n.\r\n",
        (_LINE * 60)[:4094] + b"\r\n.",
        b"\x00" * 5000 + b"\r\n.\x00\r\n",
    ],
)
def test_big_spooled_data_is_stuffed_as_aiosmtplib_would(data: bytes) -> None:
    """A message of many kilobytes (searched for dot lines another way than a small
    one) goes out with exactly the dots aiosmtplib's own DATA would send."""
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from jdxmail.data_encoding import dot_stuffed

    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
    assert dot_stuffed(data, crlf=True) == expected


# lines of text, base64-like runs, dots alone, line ends: sparse and dense dot lines
_PARTS = hypothesis.strategies.sampled_from(
    [b"\r\n", b".", b"\r\n.", b"word ", b"QUJD" * 30, b"a.b", b"\r", b"\n", b"\r\n.\r\n"]
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    hypothesis.strategies.lists(_PARTS, max_size=400).map(b"".join),
    hypothesis.strategies.integers(min_value=0, max_value=6000),
    hypothesis.strategies.booleans(),
)
def test_find_dot_line_finds_what_find_finds(data: bytes, start: int, mutable: bool) -> None:
    """The one search for CRLF-dot (the server's DATA reader, un-stuffing, stuffing for
    a relay) answers as ``find`` does, in bytes (glibc's memmem past 4 KiB) and in the
    server's bytearray, from any start, with dots few or many."""
    from jdxmail.data_encoding import find_dot_line

    text = bytearray(data) if mutable else data
    start = min(start, len(data))
    assert find_dot_line(text, start) == data.find(b"\r\n.", start)


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 10_000])
@pytest.mark.parametrize(
    "data",
    [
        b"Subject: a\r\n\r\nplain\r\n",
        b".leading dot\r\n..two\r\n.\r\nend",
        b"line\r\n.dot\r\n\r\n.\r\n..\r\nlast line without end",
        b"",
        b"\r\n.\r\n",
        (b"x" * 75 + b"\r\n.y\r\n") * 40,
    ],
)
def test_stuffing_in_pieces_matches_stuffing_whole(data: bytes, piece: int) -> None:
    """Data read in pieces of any size is stuffed exactly as the whole data is."""
    from jdxmail.data_encoding import dot_stuffed, stuffed_pieces

    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    assert b"".join(stuffed_pieces(pieces)) + b".\r\n" == dot_stuffed(data)


@pytest.mark.parametrize(
    "address",
    [
        "alice@example.com",
        "a.b+tag@mail.example.co.jp",
        "o'brien@example.org",
        "!#$%&*+/=?^_`{|}~-@x",
        "",
        "a..b@example.com",
        "Alice <alice@example.com>",
        '"john doe"@example.com',
        "user@[192.0.2.1]",
        "jürgen@example.de",
        "bad address@example.com",
        "x@example.com> NOTIFY=NEVER",
        "evil@example.com\r\nRSET",
    ],
)
def test_quoted_address_is_what_aiosmtplib_would_send(address: str) -> None:
    """MAIL/RCPT carry the same <address> as aiosmtplib's quote_address (or refuse it)."""
    from aiosmtplib.email import quote_address

    from jdxmail.queue.relay import _quoted

    try:
        expected: str | type[Exception] = quote_address(address)
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError, match="not permitted in an SMTP mailbox"):
            _quoted(address)
    else:
        assert _quoted(address) == expected
