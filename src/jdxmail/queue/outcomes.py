"""What each upstream error means: the one table from a failure to retry / bounce / fail over.

Every upstream failure becomes a :class:`Verdict` through :data:`OUTCOME_TABLE`,
the one place that decides retry / bounce / fail over / count against the relay.
Each row is tested in tests/queue/test_outcomes.py.
"""

from __future__ import annotations

import enum
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib

__all__ = [
    "OUTCOME_TABLE",
    "EightBitUnsupported",
    "ErrorTest",
    "Outcome",
    "RelayUnusable",
    "Row",
    "Scope",
    "Stage",
    "Verdict",
    "classify",
    "enhanced_status",
]


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
