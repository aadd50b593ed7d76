"""The one settings model of jdxmail, in the PascalCase keys of ``appsettings.json``.

Every key, its type and default is here and nowhere else; docs/configuration.md
describes them. Field names are snake_case; the file keys are their PascalCase aliases
(``time_out`` ↔ ``TimeOut``, ``bind_address`` ↔ ``BindAddress``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_pascal

from jdxmail.passwords import HashType

__all__ = [
    "DEFAULT_CONFIG_TEXT",
    "DeliverySettings",
    "MailboxSettings",
    "PathSettings",
    "RelaySettings",
    "Settings",
    "SmtpServerSettings",
    "TlsSettings",
    "UserSettings",
    "WebTlsSettings",
    "WebUISettings",
    "parse_resolver",
    "relay_password_env",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: What ``jdxmail serve`` runs on when there is no config file: a dev inbox on
#: 127.0.0.1:2525 that takes mail from this machine into local mailboxes.
DEFAULT_CONFIG_TEXT = """\
// jdxmail's built-in default: a development inbox on 127.0.0.1:2525.
// Programs on this machine may send to any address without logging in;
// with no relay configured, every message lands in data/smtp/mailbox/.
{
  "SmtpServer": {
    "Enabled": true,
    "BindAddress": "127.0.0.1",
    "Port": 2525,
    "TrustedNetworks": ["127.0.0.0/8", "::1/128"],
    "Users": []
  }
}
"""

RELAY_PASSWORD_ENV = "JDXMAIL_RELAY_PASSWORD"


def relay_password_env(name: str | None) -> str:
    """Name of the environment variable that holds the password of relay *name*.

    ``JDXMAIL_RELAY_PASSWORD`` for the single ``RelayServer`` (name None), else
    ``JDXMAIL_RELAY_PASSWORD_<NAME>`` with the name upper-cased and every character
    that is not a letter or digit turned into ``_``.
    """
    if name is None:
        return RELAY_PASSWORD_ENV
    return f"{RELAY_PASSWORD_ENV}_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}"


def _network(value: object) -> object:
    """A CIDR network, or a single address as a /32 (/128); host bits are cleared."""
    if not isinstance(value, str):
        return value
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP network: write it as CIDR, e.g. 192.168.1.0/24 or ::1/128"
        ) from None


def _upper_hash_type(value: object) -> object:
    return HashType.parse(value) if isinstance(value, str) else value


class Section(BaseModel):
    """Base of every section: PascalCase keys, unknown keys refused, frozen values."""

    model_config = ConfigDict(
        alias_generator=to_pascal,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
    )


Port = Annotated[int, Field(ge=1, le=65535)]


def _bind_address(value: str) -> str:
    """BindAddress: an IP address or ``localhost``; ``*`` or empty mean 0.0.0.0."""
    if value in ("*", ""):
        return "0.0.0.0"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value.lower() != "localhost":
            raise ValueError("must be an IP address such as 127.0.0.1 or 0.0.0.0") from None
    return value


class UserSettings(Section):
    """An SMTP user who may log in with AUTH PLAIN or AUTH LOGIN."""

    user_name: str = Field(min_length=1)
    #: the stored form of the password (a hash, or the password itself for PLAIN)
    password: SecretStr
    hash_type: Annotated[HashType, BeforeValidator(_upper_hash_type)] = HashType.SHA256
    #: envelope senders this user may use besides its own name; None = any sender.
    #: An entry ``@example.com`` allows every address of that domain.
    allowed_senders: list[str] | None = None


class TlsSettings(Section):
    """Certificate for STARTTLS and the optional implicit-TLS listener."""

    cert_file: Path | None = None
    key_file: Path | None = None
    #: a second listener that speaks TLS from the first byte (465 by convention)
    implicit_tls_port: Port | None = None

    @property
    def configured(self) -> bool:
        """True when both a certificate and a key file are named."""
        return self.cert_file is not None and self.key_file is not None


class SmtpServerSettings(Section):
    """The SMTP server that apps, devices and test suites connect to."""

    enabled: bool = True
    bind_address: str = "127.0.0.1"
    port: Port = 2525
    #: name in the banner, EHLO reply and Received: headers; default: this host's name
    host_name: str | None = None
    #: seconds an idle client may wait between commands (and per relay step)
    time_out: int = Field(default=30, ge=1, le=3600)
    users: list[UserSettings] = Field(default_factory=list)
    #: domains delivered to local mailboxes; default: localhost and HostName
    local_domains: list[str] | None = None
    #: networks whose clients may relay without AUTH
    trusted_networks: list[Annotated[IPNetwork, BeforeValidator(_network)]] = Field(
        default_factory=list
    )
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=100, ge=1)
    max_connections: int = Field(default=100, ge=1)
    #: sessions one client address may hold at once (loopback clients are exempt)
    max_connections_per_client: int = Field(default=25, ge=1)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    #: allow AUTH over an unencrypted connection from off this machine
    allow_plaintext_auth: bool = False
    #: what to do with a bare CR or LF in message data (SMTP smuggling defence)
    bare_line_endings: Literal["Reject", "Normalize"] = "Reject"
    #: what to do with NUL bytes in message data (never stored or relayed)
    nul_bytes: Literal["Reject", "Strip"] = "Reject"
    #: failed logins from one client address before it is disconnected with 421
    auth_failure_limit: int = Field(default=5, ge=1)
    #: seconds over which failed logins are counted
    auth_failure_window: int = Field(default=300, ge=1)
    #: a second listener whose connections start with a PROXY protocol header (v1/v2)
    proxy_port: Port | None = None
    #: the load balancers allowed to connect to ProxyPort (anyone else is closed on)
    trusted_proxies: list[Annotated[IPNetwork, BeforeValidator(_network)]] = Field(
        default_factory=lambda: [
            ipaddress.ip_network("127.0.0.0/8"),
            ipaddress.ip_network("::1/128"),
        ]
    )
    #: seconds a proxy has to send the whole PROXY header
    proxy_timeout: int = Field(default=5, ge=1, le=60)

    @field_validator("bind_address")
    @classmethod
    def _bind_address(cls, value: str) -> str:
        return _bind_address(value)

    @field_validator("local_domains")
    @classmethod
    def _lower_domains(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [d.strip().lower().rstrip(".") for d in value]

    @property
    def effective_host_name(self) -> str:
        """HostName, or this machine's host name."""
        return self.host_name or socket.gethostname() or "localhost"

    @property
    def effective_local_domains(self) -> list[str]:
        """LocalDomains, or ``localhost`` and the host name."""
        if self.local_domains is not None:
            return self.local_domains
        return sorted({"localhost", self.effective_host_name.lower()})


class WebTlsSettings(Section):
    """The web console's own certificate (HTTPS)."""

    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def configured(self) -> bool:
        """True when both a certificate and a key file are named."""
        return self.cert_file is not None and self.key_file is not None


class WebUISettings(Section):
    """The web console and HTTP API that ``jdxmail serve`` runs beside the SMTP server."""

    enabled: bool = True
    bind_address: str = "127.0.0.1"
    port: Port = 5001
    tls: WebTlsSettings = Field(default_factory=WebTlsSettings)
    #: serve HTTPS with SmtpServer.Tls's certificate (when Tls here names none)
    use_smtp_certificate: bool = False
    #: console users (same shape and hashes as SmtpServer.Users); none: open on loopback
    users: list[UserSettings] = Field(default_factory=list)

    @field_validator("bind_address")
    @classmethod
    def _bind_address(cls, value: str) -> str:
        return _bind_address(value)


class RelaySettings(Section):
    """An upstream SMTP server (Gmail, Outlook, SendGrid, SES…) that mail is handed to."""

    name: str | None = None
    host: str = Field(min_length=1)
    port: Port = 587
    #: 465: TLS from the first byte; any other port: STARTTLS, required
    use_tls: bool = True
    username: str | None = None
    password: SecretStr | None = None
    #: messages per day this relay takes before mail waits or goes to the next relay
    daily_quota: int | None = Field(default=None, ge=1)
    verify_certificate: bool = True
    ca_file: Path | None = None
    #: seconds per step of the relay session; default: SmtpServer.TimeOut
    time_out: int | None = Field(default=None, ge=1, le=3600)

    @property
    def display_name(self) -> str:
        """Name, or ``host:port``."""
        return self.name or f"{self.host}:{self.port}"

    @property
    def implicit_tls(self) -> bool:
        """True when the session is TLS from the first byte (UseTls on port 465)."""
        return self.use_tls and self.port == 465


def parse_resolver(text: str) -> tuple[str, int]:
    """A DNS server as ``ip``, ``ip:port``, ``[v6]:port`` or a bare IPv6 → (ip, port).

    Raises ValueError when the host is not an IP address (a resolver given by name
    would need DNS to be found).
    """
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


class DeliverySettings(Section):
    """How queued mail is relayed: retries, parallel sessions, sender rewriting."""

    #: seconds a message may wait for a relay before it bounces (5 days)
    message_lifetime: int = Field(default=5 * 24 * 3600, ge=60)
    #: seconds before the first retry; doubled each attempt (with jitter)
    retry_delay: int = Field(default=60, ge=1)
    #: the longest wait between two attempts, in seconds
    retry_max_delay: int = Field(default=3600, ge=1)
    #: parallel sessions per relay, reused for consecutive messages
    connections_per_relay: int = Field(default=4, ge=1, le=100)
    #: send with the relay account as envelope sender (relays that refuse others: C7)
    rewrite_sender: bool = False
    #: also put the relay account in From: (the original From becomes Reply-To)
    rewrite_from: bool = False
    #: 8-bit content for a relay without 8BITMIME: a 7bit copy (qp/base64), or a bounce
    eight_bit_downgrade: Literal["Convert", "Bounce"] = "Convert"
    #: ask DNS (MX, then A/AAAA) whether a relayed recipient's domain takes mail at RCPT
    check_recipient_domain: bool = False
    #: the DNS server for that check (``ip`` or ``ip:port``); default: /etc/resolv.conf
    dns_resolver: str | None = None

    @field_validator("dns_resolver")
    @classmethod
    def _resolver_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_resolver(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IP address with an optional port "
                    "(127.0.0.1, 127.0.0.1:5353, [::1]:53)"
                ) from None
        return value


class MailboxSettings(Section):
    """Retention of the local mailboxes (the dev inbox), pruned in the background."""

    #: keep at most this many messages (all mailboxes together); null: no limit
    max_messages: int | None = Field(default=None, ge=1)
    #: remove messages older than this many seconds; null: keep them
    max_age: int | None = Field(default=None, ge=60)


class PathSettings(Section):
    """Where jdxmail keeps its files; relative paths are under the config file's folder."""

    spool: Path = Path("data/smtp/spool")
    mailbox: Path = Path("data/smtp/mailbox")
    logs: Path = Path("logs")


class HealthSettings(Section):
    """What /readyz and doctor require of the server."""

    #: free bytes the spool's disk must keep; less: not ready (100 MiB)
    min_free_bytes: int = Field(default=100 * 1024 * 1024, ge=0)


class MetricsSettings(Section):
    """A listener of its own for /metrics, /healthz and /readyz (when the console is off)."""

    enabled: bool = False
    bind_address: str = "127.0.0.1"
    port: Port = 9464

    @field_validator("bind_address")
    @classmethod
    def _bind_address(cls, value: str) -> str:
        return _bind_address(value)


class LoggingSettings(Section):
    """How log lines are written."""

    #: "text": one line for people and grep; "json": one JSON object per line
    format: Literal["text", "json"] = "text"
    #: .NET's ``Logging.LogLevel`` of a JumboDogX appsettings.json: accepted, not used
    log_level: dict[str, str] | None = None


class Settings(Section):
    """Everything jdxmail reads from ``appsettings.json`` or ``jdxmail.toml``."""

    smtp_server: SmtpServerSettings = Field(default_factory=SmtpServerSettings)
    relay_server: RelaySettings | None = None
    relay_servers: list[RelaySettings] = Field(default_factory=list)
    mailbox: MailboxSettings = Field(default_factory=MailboxSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    web_ui: WebUISettings = Field(default_factory=WebUISettings, alias="WebUI")
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def _one_relay_form(self) -> Settings:
        if self.relay_server is not None and self.relay_servers:
            raise ValueError(
                "both RelayServer and RelayServers are set; "
                "move RelayServer into the RelayServers list"
            )
        names = [r.display_name.casefold() for r in self.relay_servers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"relay names must differ; used twice: {', '.join(duplicates)}")
        return self

    @property
    def relays(self) -> list[RelaySettings]:
        """The relays in the order they are tried (the single RelayServer, or the list)."""
        if self.relay_server is not None:
            return [self.relay_server]
        return list(self.relay_servers)

    @property
    def relay_key(self) -> str:
        """The config key that holds the relays, for messages."""
        return "RelayServer" if self.relay_server is not None else "RelayServers"

    def with_environment(self, environ: dict[str, str] | None = None) -> Settings:
        """A copy with relay passwords taken from the environment where set.

        The variable wins over the file, so a secret can stay out of the config.
        """
        env = os.environ if environ is None else environ
        if self.relay_server is not None:
            secret = env.get(relay_password_env(None))
            if secret:
                relay = self.relay_server.model_copy(update={"password": SecretStr(secret)})
                return self.model_copy(update={"relay_server": relay})
            return self
        relays = []
        for index, relay in enumerate(self.relay_servers):
            secret = env.get(relay_password_env(relay.display_name))
            if not secret and index == 0:
                secret = env.get(RELAY_PASSWORD_ENV)
            relays.append(
                relay.model_copy(update={"password": SecretStr(secret)}) if secret else relay
            )
        return self.model_copy(update={"relay_servers": relays})

    def with_base_dir(self, base: Path) -> Settings:
        """A copy whose relative file paths are resolved under *base*."""

        def under(path: Path | None) -> Path | None:
            return path if path is None or path.is_absolute() else base / path

        paths = PathSettings(
            spool=base / self.paths.spool,
            mailbox=base / self.paths.mailbox,
            logs=base / self.paths.logs,
        )
        tls = self.smtp_server.tls.model_copy(
            update={
                "cert_file": under(self.smtp_server.tls.cert_file),
                "key_file": under(self.smtp_server.tls.key_file),
            }
        )
        smtp = self.smtp_server.model_copy(update={"tls": tls})
        web_tls = self.web_ui.tls.model_copy(
            update={
                "cert_file": under(self.web_ui.tls.cert_file),
                "key_file": under(self.web_ui.tls.key_file),
            }
        )
        web_ui = self.web_ui.model_copy(update={"tls": web_tls})
        resolved = self.model_copy(update={"paths": paths, "smtp_server": smtp, "web_ui": web_ui})
        if self.relay_server is not None:
            relay = self.relay_server.model_copy(
                update={"ca_file": under(self.relay_server.ca_file)}
            )
            return resolved.model_copy(update={"relay_server": relay})
        relays = [r.model_copy(update={"ca_file": under(r.ca_file)}) for r in self.relay_servers]
        return resolved.model_copy(update={"relay_servers": relays})


def section_aliases(model: type[BaseModel]) -> dict[str, tuple[str, Any]]:
    """Map each file key of *model* (casefolded) to its alias and field annotation."""
    out: dict[str, tuple[str, Any]] = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        out[alias.casefold()] = (alias, info.annotation)
    return out
