"""What test-relay and send-test probe, how, and what they report.

A :class:`RelayTarget` (from the command line, a provider, or a relay of the config),
the :class:`ProbeOptions`, the stages in order (:class:`ProbeStage`) and the
:class:`RelayReport` that :func:`jdxmail.diagnostics.relay_probe.probe_relay` returns.
"""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from jdxmail.diagnostics.stages import StageResult
from jdxmail.findings import Finding, KeyPath
from jdxmail.providers import Provider, provider_by_key, provider_for_host
from jdxmail.settings.model import RelaySettings, Settings

__all__ = [
    "SLOW_STAGE_MS",
    "ProbeOptions",
    "ProbeStage",
    "RelayReport",
    "RelayTarget",
    "TlsMode",
    "config_targets",
    "control_character",
    "provider_target",
    "sample_message",
    "target_from_relay",
]


#: a stage slower than this gets a latency warning (row E2)
SLOW_STAGE_MS = 2000.0


class TlsMode(enum.StrEnum):
    """How the session is encrypted."""

    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    NONE = "none"
    #: STARTTLS when the server offers it, else plain (send-test's default)
    AUTO = "auto"


class ProbeStage(enum.StrEnum):
    """The stages of a session, in order."""

    DNS = "DNS"
    CONNECT = "TCP connect"
    BANNER = "banner"
    EHLO = "EHLO"
    TLS = "TLS"
    EHLO_TLS = "EHLO after TLS"
    AUTH = "AUTH"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    QUIT = "QUIT"


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """Where to connect and how; ``key`` is the config key of the relay (for fixes)."""

    host: str
    port: int
    tls: TlsMode
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    ca_file: Path | None = None
    verify: bool = True
    timeout: float = 15.0
    #: the relay's key path in the config (``RelayServer``), or () for command-line targets
    key: KeyPath = ()
    name: str = ""
    provider: Provider | None = None
    #: a server of this machine (send-test to jdxmail), not a provider: fixes say so
    local: bool = False

    @property
    def label(self) -> str:
        """Name, or ``host:port``."""
        return self.name or f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    """What to try beyond the login."""

    mail_from: str | None = None
    rcpt_to: str | None = None
    send: bool = False
    ehlo_name: str = "jdxmail-test"
    message: bytes | None = None
    slow_ms: float = SLOW_STAGE_MS

    def __post_init__(self) -> None:
        for name in ("mail_from", "rcpt_to", "ehlo_name"):
            _refuse_control_characters(name, getattr(self, name))


def _refuse_control_characters(name: str, value: str | None) -> None:
    """ValueError when *value* holds CR, LF, NUL or another control character: it would
    end the SMTP command early and smuggle another one onto the wire."""
    bad = None if value is None else control_character(value)
    if bad is not None:
        raise ValueError(f"{name} contains a control character ({bad})")


_CONTROL_NAMES = {"\r": "CR", "\n": "LF", "\t": "tab", "\x00": "NUL"}


def control_character(value: str) -> str | None:
    """The name of the first control character (Unicode category Cc) in *value*: ``CR``,
    ``LF``, ``tab``, ``NUL`` or ``U+001B``; None when there is none.

    No address, host or name needs one, and CR or LF in an SMTP command would end it
    early and smuggle another one onto the wire.
    """
    bad = next((char for char in value if unicodedata.category(char) == "Cc"), None)
    if bad is None:
        return None
    return _CONTROL_NAMES.get(bad, f"U+{ord(bad):04X}")


@dataclass(slots=True)
class RelayReport:
    """The stages run, the findings with fixes, the failing stage and the transcript."""

    target: RelayTarget
    stages: list[StageResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    failed: ProbeStage | None = None
    #: (``C`` or ``S``, line): AUTH secrets masked, message body summarised
    transcript: list[tuple[str, str]] = field(default_factory=list)
    final_reply: str | None = None

    @property
    def ok(self) -> bool:
        """True when no stage failed."""
        return self.failed is None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (never holds a secret)."""
        t = self.target
        return {
            "relay": t.label,
            "host": t.host,
            "port": t.port,
            "tls": t.tls.value,
            "provider": t.provider.key if t.provider else None,
            "ok": self.ok,
            "failed_stage": self.failed.value if self.failed else None,
            "stages": [s.to_json() for s in self.stages],
            "findings": [f.to_json() for f in self.findings],
            "final_reply": self.final_reply,
        }


def provider_target(
    spec: str, *, port: int | None = None, tls: TlsMode | None = None
) -> RelayTarget | None:
    """A target for ``--provider gmail`` / ``ses:eu-west-1``… (None for an unknown one)."""
    key, _, region = spec.partition(":")
    provider = provider_by_key(key)
    if provider is None:
        return None
    if provider.key == "ses":
        host = f"email-smtp.{region or 'us-east-1'}.amazonaws.com"
    elif provider.hosts:
        host = provider.hosts[0]
    else:
        return None
    chosen = port or (587 if 587 in provider.ports else next(iter(provider.ports)))
    implicit = provider.ports.get(chosen, False)
    mode = tls or (TlsMode.IMPLICIT if implicit else TlsMode.STARTTLS)
    return RelayTarget(host, chosen, mode, name=provider.label, provider=provider)


def target_from_relay(relay: RelaySettings, key: KeyPath, default_timeout: float) -> RelayTarget:
    """The target for a relay of the config, its TLS mode as jdxmail would use it."""
    if relay.implicit_tls:
        mode = TlsMode.IMPLICIT
    elif relay.use_tls:
        mode = TlsMode.STARTTLS
    else:
        mode = TlsMode.NONE
    return RelayTarget(
        relay.host,
        relay.port,
        mode,
        relay.username,
        relay.password,
        relay.ca_file,
        relay.verify_certificate,
        float(relay.time_out or default_timeout),
        key,
        relay.display_name,
        provider_for_host(relay.host),
    )


def config_targets(settings: Settings, default_timeout: float = 15.0) -> list[RelayTarget]:
    """A target for each relay of *settings*, with its key path (for the findings' fixes)."""
    targets = []
    for index, item in enumerate(settings.relays):
        key = (settings.relay_key,) if settings.relay_server else (settings.relay_key, index)
        targets.append(target_from_relay(item, key, default_timeout))
    return targets


def sample_message(mail_from: str, rcpt_to: str, host: str) -> bytes:
    """A small test message from *mail_from* to *rcpt_to*."""
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = rcpt_to
    message["Subject"] = "jdxmail test message"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="jdxmail.invalid")
    message.set_content(
        f"This is a test message sent by jdxmail through {host}.\n"
        "If you can read it, the server took the message.\n"
    )
    return message.as_bytes()
