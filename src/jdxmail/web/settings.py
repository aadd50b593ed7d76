"""The Settings area: the SMTP settings as forms grouped like JumboDogX's pages, and a
raw editor of the config file.

A save goes through the core (settings.save): the file is edited in place (comments
kept), validated with validate-config's findings before anything is written, written
atomically, then applied as SIGHUP applies it; the answer names the changes that need
a restart. Secrets are write-only: the page and the API show a marker, never a
password, hash or relay credential.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefinedType
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jdxmail.findings import Finding, KeyPath, format_path
from jdxmail.settings import secrets
from jdxmail.settings.files import ConfigError, ConfigSource, read_source
from jdxmail.settings.model import RelaySettings
from jdxmail.settings.save import (
    SaveResult,
    save_text,
    save_values,
    text_version,
    validate_text,
)
from jdxmail.web.configfile import apply_saved, config_error, config_file, findings_json
from jdxmail.web.context import ConsoleContext, context
from jdxmail.web.responses import ApiError, json_body, page

__all__ = ["GROUPS", "SettingField", "parse_key", "routes"]


@dataclass(frozen=True)
class SettingField:
    """One input of the settings forms: the key it edits and how it is typed."""

    key: KeyPath
    label: str
    kind: str = "text"  # text, int, bool, list, select, secret
    help: str = ""
    choices: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The key as users write it (``SmtpServer.Tls.CertFile``)."""
        return format_path(self.key)


def _smtp(key: str, label: str, kind: str = "text", help: str = "", **kw: Any) -> SettingField:
    return SettingField(("SmtpServer", *key.split(".")), label, kind, help, **kw)


#: (anchor, title, intro, fields) of each form group, in the order of JumboDogX's pages
GROUPS: list[tuple[str, str, str, list[SettingField]]] = [
    (
        "general",
        "General",
        "Where the SMTP server listens and how it introduces itself.",
        [
            _smtp("Enabled", "Enabled", "bool", "Off: serve refuses to start (JDX-A3)."),
            _smtp(
                "BindAddress",
                "Bind address",
                help="127.0.0.1: this machine only; 0.0.0.0: every interface.",
            ),
            _smtp("Port", "Port", "int", "2525 needs no privilege; 25 and 587 do."),
            _smtp("HostName", "Host name", help="In the banner and EHLO. Empty: this host's name."),
            _smtp(
                "TimeOut", "Idle timeout (s)", "int", "Seconds a client may wait between commands."
            ),
            _smtp(
                "LocalDomains",
                "Local domains",
                "list",
                "One per line; mail to them goes to local mailboxes. Empty: localhost and "
                "the host name.",
            ),
            _smtp(
                "BareLineEndings",
                "Bare CR/LF in data",
                "select",
                "Reject defends against SMTP smuggling.",
                choices=("Reject", "Normalize"),
            ),
            _smtp(
                "NulBytes",
                "NUL bytes in data",
                "select",
                "Reject refuses the message (550); Strip removes them.",
                choices=("Reject", "Strip"),
            ),
        ],
    ),
    (
        "auth",
        "Authentication and trusted networks",
        "Who may send without logging in, and how logins are guarded. Users are on the Users page.",
        [
            _smtp(
                "TrustedNetworks",
                "Trusted networks",
                "list",
                "One CIDR per line, e.g. 192.168.1.0/24; clients there may relay without AUTH.",
            ),
            _smtp(
                "AllowPlaintextAuth",
                "Allow AUTH without TLS",
                "bool",
                "From off this machine; passwords would cross the network in clear.",
            ),
            _smtp("AuthFailureLimit", "Failed logins allowed", "int", "Per client, then 421."),
            _smtp("AuthFailureWindow", "Counted over (s)", "int"),
            _smtp(
                "ProxyPort",
                "PROXY protocol port",
                "int",
                "A second listener for a load balancer (HAProxy send-proxy); empty: none.",
            ),
            _smtp(
                "TrustedProxies",
                "Trusted proxies",
                "list",
                "One CIDR per line: the load balancers allowed on the PROXY port.",
            ),
            _smtp("ProxyTimeout", "PROXY header timeout (s)", "int"),
        ],
    ),
    ("relays", "Relays", "Upstream servers mail is handed to, tried in this order.", []),
    (
        "delivery",
        "Delivery and queue",
        "How queued mail is retried, and where jdxmail keeps its files.",
        [
            SettingField(
                ("Delivery", "MessageLifetime"),
                "Message lifetime (s)",
                "int",
                "How long mail may wait for a relay before it bounces.",
            ),
            SettingField(
                ("Delivery", "RetryDelay"), "First retry after (s)", "int", "Doubled each attempt."
            ),
            SettingField(("Delivery", "RetryMaxDelay"), "Longest wait (s)", "int"),
            SettingField(("Delivery", "ConnectionsPerRelay"), "Sessions per relay", "int"),
            SettingField(
                ("Delivery", "RewriteSender"),
                "Send as the relay account",
                "bool",
                "For relays that refuse other senders (JDX-C7).",
            ),
            SettingField(
                ("Delivery", "RewriteFrom"),
                "Also rewrite From:",
                "bool",
                "The original From becomes Reply-To.",
            ),
            SettingField(
                ("Delivery", "EightBitDowngrade"),
                "8-bit mail, relay without 8BITMIME",
                "select",
                "Convert sends a 7bit copy; Bounce returns it (5.6.3).",
                choices=("Convert", "Bounce"),
            ),
            SettingField(("Paths", "Spool"), "Spool folder"),
            SettingField(("Paths", "Mailbox"), "Mailbox folder"),
            SettingField(("Paths", "Logs"), "Log folder"),
        ],
    ),
    (
        "limits",
        "Limits",
        "What one client or message may use.",
        [
            _smtp("MaxMessageSize", "Largest message (bytes)", "int", "Announced as SIZE."),
            _smtp("MaxRecipients", "Recipients per message", "int"),
            _smtp("MaxConnections", "Sessions at once", "int"),
            _smtp(
                "MaxConnectionsPerClient",
                "Sessions per client",
                "int",
                "From one address; loopback clients are exempt.",
            ),
        ],
    ),
    (
        "tls",
        "TLS",
        "The certificate for STARTTLS and the implicit-TLS listener.",
        [
            _smtp("Tls.CertFile", "Certificate file", help="PEM; relative to the config folder."),
            _smtp("Tls.KeyFile", "Key file"),
            _smtp(
                "Tls.ImplicitTlsPort", "Implicit-TLS port", "int", "465 by convention; empty: none."
            ),
        ],
    ),
]

_RELAY_FIELDS: list[tuple[str, str, str, str]] = [
    ("Name", "Name", "text", "Shown in the queue and logs."),
    ("Host", "Host", "text", "e.g. smtp.gmail.com"),
    ("Port", "Port", "int", "587: STARTTLS; 465: TLS from the first byte."),
    ("UseTls", "Use TLS", "bool", ""),
    ("Username", "User name", "text", ""),
    ("Password", "Password", "secret", "Write-only; or JDXMAIL_RELAY_PASSWORD_<NAME>."),
    ("DailyQuota", "Messages per day", "int", "Empty: no limit."),
    ("VerifyCertificate", "Verify its certificate", "bool", ""),
    ("CaFile", "CA file", "text", "Only for a private CA."),
    ("TimeOut", "Timeout (s)", "int", "Empty: SmtpServer.TimeOut."),
]

#: what a new relay starts with (its model's defaults), so the form shows what applies
_RELAY_DEFAULTS: dict[str, Any] = {
    info.alias or name: info.default
    for name, info in RelaySettings.model_fields.items()
    if info.default is not None and not isinstance(info.default, PydanticUndefinedType)
}

_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key(text: str) -> KeyPath:
    """``RelayServers[0].Host`` → ``("RelayServers", 0, "Host")``; ValueError if bad."""
    parts: list[str | int] = []
    position = 0
    for match in _KEY_PART.finditer(text):
        gap = text[position : match.start()]
        if gap not in ("", "."):
            break
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        position = match.end()
    if not parts or position != len(text) or not isinstance(parts[0], str):
        raise ValueError(f"not a key path: {text!r}")
    return tuple(parts)


def relay_fields(view: dict[str, Any]) -> list[tuple[str, list[SettingField]]]:
    """(title, fields) of each relay form, and one more to add a relay."""
    forms: list[tuple[str, list[SettingField]]] = []

    def fields(base: KeyPath) -> list[SettingField]:
        return [
            SettingField((*base, key), label, kind, help)
            for key, label, kind, help in _RELAY_FIELDS
        ]

    if view.get("RelayServer"):
        relay = view["RelayServer"]
        forms.append(
            (f"RelayServer: {relay.get('Name') or relay.get('Host')}", fields(("RelayServer",)))
        )
        return forms
    relays = view.get("RelayServers") or []
    for index, relay in enumerate(relays):
        forms.append(
            (
                f"{index + 1}. {relay.get('Name') or relay.get('Host')}",
                fields(("RelayServers", index)),
            )
        )
    forms.append(("Add a relay", fields(("RelayServers", len(relays)))))
    return forms


def value_at(data: Any, key: KeyPath) -> Any:
    """The value at *key* of the view, or None."""
    node = data
    for part in key:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
    return node


def _shown(field: SettingField, value: Any) -> Any:
    """The value as the input holds it (lists one per line, secrets never)."""
    if field.kind == "secret":
        return ""
    if field.kind == "list":
        return "\n".join(str(v) for v in value or [])
    if field.kind == "bool":
        return bool(value)
    return "" if value is None else str(value)


def _current(ctx: ConsoleContext) -> tuple[ConfigSource | None, dict[str, Any], list[Finding]]:
    """The config file as it is now: its source, its masked view and its findings."""
    if ctx.config_path is None or not ctx.config_path.exists():
        return None, secrets.view(ctx.server.settings), []
    source = read_source(ctx.config_path)
    checked = validate_text(ctx.config_path, source.text)
    if checked.settings is None:
        return source, secrets.view(ctx.server.settings), checked.findings
    return source, secrets.view(checked.settings), checked.findings


def _pending(request: Request) -> list[str]:
    pending: list[str] = getattr(request.app.state, "restart_pending", [])
    return pending


def _remember_restart(request: Request, keys: list[str]) -> list[str]:
    """Keys saved that wait for a restart (kept until serve restarts)."""
    pending = sorted(set(_pending(request)) | set(keys))
    request.app.state.restart_pending = pending
    return pending


async def settings_page(request: Request) -> Response:
    """``GET /settings``: the forms, the raw editor and the current findings."""
    ctx = context(request)
    try:
        source, view, findings = _current(ctx)
    except ConfigError as error:
        raise ApiError(
            409, str(error), "fix the file by hand; validate-config shows the line"
        ) from None
    groups = []
    for anchor, title, intro, fields in GROUPS:
        if anchor == "relays":
            blocks = []
            for name, relay in relay_fields(view):
                new = value_at(view, relay[0].key[:-1]) is None
                rows = []
                for f in relay:
                    value = _RELAY_DEFAULTS.get(str(f.key[-1])) if new else value_at(view, f.key)
                    rows.append((f, _shown(f, value), value is not None))
                blocks.append((name, rows, new))
        else:
            rows = [(f, _shown(f, value_at(view, f.key)), False) for f in fields]
            blocks = [("", rows, False)]
        groups.append((anchor, title, intro, blocks))
    return page(
        request,
        "settings.html",
        {
            "groups": groups,
            "config": str(ctx.config_path) if ctx.config_path else None,
            "format": source.format if source else "json",
            "raw": secrets.redact_text(source) if source else "",
            "version": text_version(source.text) if source else "",
            "findings": [f.to_json() for f in findings],
            "pending": _pending(request),
            "marker": secrets.MARKER,
        },
        active="settings",
    )


async def get_settings(request: Request) -> Response:
    """``GET /api/v1/settings``: the settings (secrets masked), version and findings."""
    ctx = context(request)
    try:
        source, view, findings = _current(ctx)
    except ConfigError as error:
        return config_error(error)
    return JSONResponse(
        {
            "config": str(ctx.config_path) if ctx.config_path else None,
            "format": source.format if source else None,
            "version": text_version(source.text) if source else None,
            "settings": view,
            "findings": findings_json(findings),
            "restart_pending": _pending(request),
        }
    )


def _saved(request: Request, path: Path, result: SaveResult) -> Response:
    ctx = context(request)
    applied = apply_saved(ctx, path)
    pending = _remember_restart(request, result.restart)
    return JSONResponse(
        {
            "saved": True,
            "config": str(path),
            "changed": sorted(result.changed),
            "restart": result.restart,
            "restart_pending": pending,
            "applied": applied,
            "findings": findings_json(result.findings),
            "version": result.version,
        }
    )


def _version(body: dict[str, Any]) -> str | None:
    version = body.get("version")
    return version if isinstance(version, str) and version else None


async def put_settings(request: Request) -> Response:
    """``PUT /api/v1/settings``: set ``values`` ({key path: value}); null removes a key."""
    ctx = context(request)
    body = await json_body(request)
    values = body.get("values")
    if not isinstance(values, dict) or not values:
        raise ApiError(
            400, "nothing to save: no values", 'send {"values": {"SmtpServer.Port": 2526}}'
        )
    try:
        parsed = {parse_key(str(key)): value for key, value in values.items()}
    except ValueError as exc:
        raise ApiError(
            400, str(exc), 'write keys as in the file, e.g. "RelayServers[0].Host"'
        ) from None
    path = config_file(ctx, create=True)
    try:
        result = await asyncio.to_thread(save_values, path, parsed, base_version=_version(body))
    except ConfigError as error:
        return config_error(error)
    return _saved(request, path, result)


async def get_raw(request: Request) -> Response:
    """``GET /api/v1/settings/raw``: the file's text with every secret as the marker."""
    ctx = context(request)
    path = config_file(ctx)
    try:
        source = read_source(path)
    except ConfigError as error:
        return config_error(error)
    return JSONResponse(
        {
            "config": str(path),
            "format": source.format,
            "text": secrets.redact_text(source),
            "version": text_version(source.text),
            "marker": secrets.MARKER,
        }
    )


def _text(body: dict[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "the config text is empty", 'send {"text": "..."}')
    return text


async def put_raw(request: Request) -> Response:
    """``PUT /api/v1/settings/raw``: save a whole new text (``text``, ``version``)."""
    ctx = context(request)
    body = await json_body(request)
    text = _text(body)
    path = config_file(ctx, create=True)
    try:
        result = await asyncio.to_thread(save_text, path, text, base_version=_version(body))
    except ConfigError as error:
        return config_error(error)
    return _saved(request, path, result)


async def check_raw(request: Request) -> Response:
    """``POST /api/v1/settings/check``: the findings of a text, without saving it."""
    ctx = context(request)
    body = await json_body(request)
    text = _text(body)
    path = config_file(ctx, create=True)

    def check() -> tuple[bool, list[Finding]]:
        current = read_source(path) if path.exists() else None
        restored, problems = secrets.restore(path, text, current)
        checked = validate_text(path, restored)
        return checked.ok and not problems, problems + checked.findings

    try:
        valid, findings = await asyncio.to_thread(check)
    except ConfigError as error:
        return config_error(error)
    return JSONResponse({"valid": valid, "findings": findings_json(findings)})


routes: list[BaseRoute] = [
    Route("/settings", settings_page, methods=["GET"]),
    Route("/api/v1/settings", get_settings, methods=["GET"]),
    Route("/api/v1/settings", put_settings, methods=["PUT"]),
    Route("/api/v1/settings/raw", get_raw, methods=["GET"]),
    Route("/api/v1/settings/raw", put_raw, methods=["PUT"]),
    Route("/api/v1/settings/check", check_raw, methods=["POST"]),
]
