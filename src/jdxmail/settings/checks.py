"""Semantic checks of valid settings: the causes of the troubleshooting guide that a
config file alone can show (rows A3, B2, B3, C3, C6, H5 and more)."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from jdxmail.client_tls import client_tls_context
from jdxmail.findings import Finding, KeyPath, Severity
from jdxmail.passwords import HashType, detect_hash_type
from jdxmail.providers import provider_for_host, suggest_host
from jdxmail.settings.files import ConfigSource
from jdxmail.settings.model import RelaySettings, Settings, relay_password_env

__all__ = ["check_paths", "check_settings", "local_addresses", "web_exposure_problems"]

Emit = Callable[..., None]


def local_addresses() -> set[str]:
    """Every IP address configured on this host's interfaces."""
    addresses = {"127.0.0.1", "::1"}
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family.name in ("AF_INET", "AF_INET6"):
                addresses.add(entry.address.split("%")[0])
    return addresses


def _is_loopback(address: str) -> bool:
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _is_wildcard(address: str) -> bool:
    return address in ("0.0.0.0", "::")


def _emitter(source: ConfigSource, findings: list[Finding]) -> Emit:
    def emit(
        severity: Severity,
        code: str,
        message: str,
        fix: str = "",
        path: KeyPath = (),
        row: str | None = None,
    ) -> None:
        findings.append(
            Finding(
                severity, code, message, fix, (*source.prefix, *path), source.line_of(path), row
            )
        )

    return emit


def check_paths(settings: Settings, source: ConfigSource) -> list[Finding]:
    """Findings for Paths.* (resolved *settings*) that would stop serve from starting:
    a folder under a regular file, or one this user cannot create or write."""
    findings: list[Finding] = []
    _check_paths(settings, _emitter(source, findings))
    return findings


def check_settings(
    settings: Settings,
    source: ConfigSource,
    addresses: set[str] | None = None,
) -> list[Finding]:
    """Every semantic finding for *settings* read from *source*.

    *addresses* are this host's IP addresses (default: read from the interfaces).
    """
    findings: list[Finding] = []
    emit = _emitter(source, findings)
    _check_server(settings, emit, local_addresses() if addresses is None else addresses)
    _check_users(settings, emit)
    _check_web(settings, emit)
    for index, relay in enumerate(settings.relays):
        path: KeyPath = (
            (settings.relay_key,) if settings.relay_server else (settings.relay_key, index)
        )
        for check in (_check_relay_tls, _check_relay_provider):
            check(relay, path, emit)
    _check_file_mode(settings, source, emit)
    _check_paths(settings, emit)
    _check_metrics(settings, emit)
    return findings


def _check_paths(settings: Settings, emit: Emit) -> None:
    paths = settings.paths
    for key, folder in (("Spool", paths.spool), ("Mailbox", paths.mailbox), ("Logs", paths.logs)):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            what = "it is a file" if existing == folder else f"{existing} is a file"
            emit(
                Severity.ERROR,
                "paths.not-a-folder",
                f"Paths.{key} {folder} is not a folder: {what}, so `jdxmail serve` "
                "cannot keep its files there",
                f"point Paths.{key} at a folder, or move {existing} away",
                ("Paths", key),
            )
        elif not os.access(existing, os.W_OK | os.X_OK):
            what = "" if existing == folder else f" (it would be made in {existing})"
            emit(
                Severity.ERROR,
                "paths.not-writable",
                f"Paths.{key} {folder} is not writable by this user{what}",
                f"give this user write access to {existing}, or set Paths.{key}",
                ("Paths", key),
            )


def _check_metrics(settings: Settings, emit: Emit) -> None:
    """The Metrics listener has no login: off loopback anyone who reaches it reads it."""
    metrics = settings.metrics
    if metrics.enabled and not _is_loopback(metrics.bind_address):
        emit(
            Severity.WARNING,
            "metrics.off-loopback",
            f"the Metrics listener on {metrics.bind_address} has no login: whoever reaches "
            "it reads the figures (relay names, traffic) and the readiness",
            "bind it to an interface only the monitoring network reaches, or firewall the "
            "port to the Prometheus servers",
            ("Metrics", "BindAddress"),
        )


def _check_server(settings: Settings, emit: Emit, addresses: set[str]) -> None:
    smtp = settings.smtp_server
    if not smtp.enabled:
        emit(
            Severity.WARNING,
            "server.disabled",
            "the SMTP server is disabled: `jdxmail serve` will refuse to start",
            'set "Enabled": true',
            ("SmtpServer", "Enabled"),
            "A3",
        )
    bind = smtp.bind_address
    if not _is_wildcard(bind) and bind.lower() != "localhost" and bind not in addresses:
        emit(
            Severity.ERROR,
            "server.bind-not-local",
            f"BindAddress {bind} is not an address of this host, so the server cannot listen on it",
            "use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of: "
            + ", ".join(sorted(a for a in addresses if ":" not in a)),
            ("SmtpServer", "BindAddress"),
        )
    if smtp.port < 1024:
        emit(
            Severity.INFO,
            "server.privileged-port",
            f"port {smtp.port} is below 1024: only root or a process with "
            "CAP_NET_BIND_SERVICE may listen on it",
            'run `jdxmail check-port` to see if this user can, or use "Port": 2525',
            ("SmtpServer", "Port"),
            "A2",
        )
    if smtp.tls.implicit_tls_port == smtp.port:
        emit(
            Severity.ERROR,
            "tls.port-clash",
            f"Tls.ImplicitTlsPort and Port are both {smtp.port}",
            "give the implicit-TLS listener its own port, 465 by convention",
            ("SmtpServer", "Tls", "ImplicitTlsPort"),
        )
    _check_tls_files(settings, emit)
    exposed = not _is_loopback(bind)
    if exposed and not smtp.tls.configured:
        emit(
            Severity.WARNING,
            "exposure.no-tls",
            f"the server listens on {bind} without TLS: logins and mail cross the network in clear",
            'set SmtpServer.Tls.CertFile and KeyFile, or "BindAddress": "127.0.0.1"',
            ("SmtpServer", "BindAddress"),
            "H5",
        )
    if exposed and smtp.allow_plaintext_auth:
        emit(
            Severity.WARNING,
            "exposure.plaintext-auth",
            "AllowPlaintextAuth lets clients on the network send passwords without TLS",
            'use it only on a trusted LAN; prefer Tls settings and "AllowPlaintextAuth": false',
            ("SmtpServer", "AllowPlaintextAuth"),
            "H5",
        )
    for index, network in enumerate(smtp.trusted_networks):
        if network.prefixlen == 0:
            emit(
                Severity.ERROR,
                "policy.open-relay",
                f"TrustedNetworks holds {network}: every host on the internet may relay "
                "through this server without logging in (an open relay)",
                "list only your own networks, e.g. 192.168.1.0/24, and use Users for the rest",
                ("SmtpServer", "TrustedNetworks", index),
                "H5",
            )
        elif exposed and network.is_global:
            emit(
                Severity.WARNING,
                "policy.public-trusted",
                f"TrustedNetworks holds the public network {network}: its hosts relay "
                "without logging in",
                "trust only private networks and give other senders a user",
                ("SmtpServer", "TrustedNetworks", index),
                "H5",
            )
    can_login = bool(smtp.users)
    trusted = bool(smtp.trusted_networks)
    if settings.relays and not can_login and not trusted:
        emit(
            Severity.ERROR,
            "users.none",
            "a relay is configured but there are no Users and no TrustedNetworks: "
            "nobody may send mail out (every client gets 530 Authentication required)",
            "add a user with `jdxmail user add NAME`, or list the clients' network in "
            "SmtpServer.TrustedNetworks",
            ("SmtpServer", "Users"),
            "B3",
        )


def _check_tls_files(settings: Settings, emit: Emit) -> None:
    tls = settings.smtp_server.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        missing = "KeyFile" if tls.key_file is None else "CertFile"
        emit(
            Severity.ERROR,
            "tls.incomplete",
            f"Tls.{missing} is missing: TLS needs both a certificate and its key",
            f"set SmtpServer.Tls.{missing}",
            ("SmtpServer", "Tls", missing),
        )
    if tls.implicit_tls_port is not None and not tls.configured:
        emit(
            Severity.ERROR,
            "tls.no-certificate",
            "Tls.ImplicitTlsPort is set but there is no certificate to serve on it",
            "set Tls.CertFile and Tls.KeyFile (or run `jdxmail serve --self-signed` for tests)",
            ("SmtpServer", "Tls", "ImplicitTlsPort"),
        )
    readable = True
    for key, value in (("CertFile", tls.cert_file), ("KeyFile", tls.key_file)):
        if value is None:
            continue
        reason = ""
        if not value.exists():
            reason = "does not exist"
        elif not value.is_file():
            reason = "is not a regular file"
        elif not os.access(value, os.R_OK):
            reason = "is not readable by this user"
        if reason:
            readable = False
            emit(
                Severity.ERROR,
                "tls.file-unreadable",
                f"Tls.{key} {value} {reason}",
                "fix the path, or the file's permissions",
                ("SmtpServer", "Tls", key),
            )
    if readable and tls.cert_file is not None and tls.key_file is not None:
        _check_certificate(tls.cert_file, tls.key_file, emit)


def _check_certificate(cert_file: Path, key_file: Path, emit: Emit) -> None:
    """Load the pair as serve does; name the file at fault when it fails."""
    try:
        cert_text = cert_file.read_bytes()
        key_text = key_file.read_bytes()
    except OSError:
        return
    fix = (
        "CertFile must be a PEM certificate (chain: -----BEGIN CERTIFICATE-----) and "
        "KeyFile its unencrypted PEM key (-----BEGIN PRIVATE KEY-----)"
    )
    cert_path: KeyPath = ("SmtpServer", "Tls", "CertFile")
    key_path: KeyPath = ("SmtpServer", "Tls", "KeyFile")
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        emit(
            Severity.ERROR,
            "tls.not-pem",
            f"Tls.CertFile {cert_file} is not a PEM certificate; `jdxmail serve` cannot load it",
            fix,
            cert_path,
        )
        return
    if b"PRIVATE KEY-----" not in key_text:
        emit(
            Severity.ERROR,
            "tls.not-pem",
            f"Tls.KeyFile {key_file} is not a PEM private key; `jdxmail serve` cannot load it",
            fix,
            key_path,
        )
        return
    if b"ENCRYPTED" in key_text:
        emit(
            Severity.ERROR,
            "tls.key-encrypted",
            f"Tls.KeyFile {key_file} is encrypted with a passphrase; `jdxmail serve` "
            "cannot ask for it",
            f"store it without a passphrase: `openssl pkey -in {key_file} -out key.pem` "
            "(and chmod 600 key.pem)",
            key_path,
        )
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except (ssl.SSLError, OSError, ValueError) as exc:
        mismatch = "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc)
        message = (
            f"Tls.KeyFile {key_file} does not belong to the certificate {cert_file}"
            if mismatch
            else f"the certificate {cert_file} and key {key_file} cannot be loaded: {exc}"
        )
        emit(
            Severity.ERROR,
            "tls.key-mismatch" if mismatch else "tls.not-pem",
            message,
            "use the key made with this certificate" if mismatch else fix,
            key_path if mismatch else cert_path,
        )


def web_exposure_problems(settings: Settings, bind_address: str | None = None) -> list[str]:
    """Why the web console must not listen on *bind_address* (default WebUI.BindAddress).

    Off loopback it needs console users and TLS; [] when it may listen.
    """
    web = settings.web_ui
    if _is_loopback(bind_address or web.bind_address):
        return []
    problems = []
    if not web.users:
        problems.append("no console user is configured (WebUI.Users)")
    if not (
        web.tls.configured or (web.use_smtp_certificate and settings.smtp_server.tls.configured)
    ):
        problems.append(
            "TLS is off (WebUI.Tls.CertFile and KeyFile, or WebUI.UseSmtpCertificate "
            "with SmtpServer.Tls)"
        )
    return problems


def _check_web(settings: Settings, emit: Emit) -> None:
    web = settings.web_ui
    if not web.enabled:
        return
    problems = web_exposure_problems(settings)
    if problems:
        emit(
            Severity.ERROR,
            "web.off-loopback",
            f"the web console would listen on {web.bind_address}, off loopback, but "
            + " and ".join(problems)
            + ": `jdxmail serve` refuses to start",
            "add console users under WebUI.Users and a certificate under WebUI.Tls (or "
            'WebUI.UseSmtpCertificate), or set WebUI.BindAddress to "127.0.0.1"',
            ("WebUI", "BindAddress"),
        )
    smtp = settings.smtp_server
    same_address = (
        web.bind_address == smtp.bind_address
        or _is_wildcard(web.bind_address)
        or _is_wildcard(smtp.bind_address)
    )
    for key, port in (("Port", smtp.port), ("Tls.ImplicitTlsPort", smtp.tls.implicit_tls_port)):
        if same_address and port == web.port:
            emit(
                Severity.ERROR,
                "web.port-clash",
                f"WebUI.Port and SmtpServer.{key} are both {web.port}: the console cannot "
                "listen there, and serve runs without it",
                'give the console its own port, 5001 by default ("Port": 5001 under WebUI)',
                ("WebUI", "Port"),
            )
    if (web.tls.cert_file is None) != (web.tls.key_file is None):
        missing = "KeyFile" if web.tls.key_file is None else "CertFile"
        emit(
            Severity.ERROR,
            "web.tls-incomplete",
            f"WebUI.Tls.{missing} is missing: HTTPS needs both a certificate and its key",
            f"set WebUI.Tls.{missing}",
            ("WebUI", "Tls", missing),
        )
    if (
        web.use_smtp_certificate
        and not web.tls.configured
        and not settings.smtp_server.tls.configured
    ):
        emit(
            Severity.WARNING,
            "web.no-smtp-certificate",
            "WebUI.UseSmtpCertificate is true but SmtpServer.Tls names no certificate: "
            "serve needs --self-signed for the console to start",
            "set SmtpServer.Tls.CertFile and KeyFile, or give WebUI.Tls its own",
            ("WebUI", "UseSmtpCertificate"),
        )


def _check_users(settings: Settings, emit: Emit) -> None:
    seen: dict[str, int] = {}
    for index, user in enumerate(settings.smtp_server.users):
        path: KeyPath = ("SmtpServer", "Users", index)
        name = user.user_name.casefold()
        if name in seen:
            emit(
                Severity.ERROR,
                "users.duplicate",
                f"user {user.user_name!r} is listed twice (Users[{seen[name]}] and "
                f"Users[{index}]); only one password can work",
                "remove one of them",
                (*path, "UserName"),
            )
        seen.setdefault(name, index)
        stored = user.password.get_secret_value()
        for severity, code, message, fix in _password_findings(
            user.user_name, stored, user.hash_type
        ):
            row = "B2" if severity is Severity.ERROR else None
            emit(severity, code, message, fix, (*path, "Password"), row)


def _password_findings(
    name: str, stored: str, hash_type: HashType
) -> Iterator[tuple[Severity, str, str, str]]:
    detected = detect_hash_type(stored)
    rehash = f"store a hash: `jdxmail user passwd {name}`, or `jdxmail hash-password --type scrypt`"
    if hash_type is HashType.PLAIN:
        if detected is not None:
            yield (
                Severity.WARNING,
                "hash.looks-hashed",
                f"user {name!r}: HashType is PLAIN but Password looks like a "
                f"{detected.value} hash, so the client would have to send the hash itself",
                f'set "HashType": "{detected.value}"',
            )
        else:
            yield (
                Severity.WARNING,
                "hash.plain",
                f"user {name!r}: the password is stored in clear text",
                rehash,
            )
        return
    if detected is hash_type:
        if hash_type in (HashType.SHA256, HashType.SHA512):
            yield (
                Severity.INFO,
                "hash.unsalted",
                f"user {name!r}: an unsalted {hash_type.value} hash can be looked up in "
                "precomputed tables if the config leaks",
                f'`jdxmail user passwd {name}` stores a salted scrypt hash ("HashType": "SCRYPT")',
            )
        return
    if detected is None:
        what = "looks like the password itself, not a hash"
        fix = (
            f"replace it with `jdxmail hash-password` of the password (or `jdxmail user "
            f"passwd {name}`)"
        )
    else:
        what = f"is a {detected.value} hash"
        fix = f'set "HashType": "{detected.value}"'
    yield (
        Severity.ERROR,
        "hash.type-mismatch",
        f"user {name!r}: HashType is {hash_type.value} but Password {what}; "
        "every login of this user fails with 535",
        fix,
    )


def _check_relay_tls(relay: RelaySettings, path: KeyPath, emit: Emit) -> None:
    if relay.port == 465 and not relay.use_tls:
        emit(
            Severity.ERROR,
            "relay.tls-port",
            f"relay {relay.display_name}: port 465 speaks TLS from the first byte, but "
            "UseTls is false; the session can never start",
            'set "UseTls": true (or use port 587 for STARTTLS)',
            (*path, "UseTls"),
            "C3",
        )
    elif relay.port == 587 and not relay.use_tls:
        emit(
            Severity.WARNING,
            "relay.tls-port",
            f"relay {relay.display_name}: port 587 is for STARTTLS, but UseTls is false; "
            "most providers refuse AUTH without it",
            'set "UseTls": true',
            (*path, "UseTls"),
            "C3",
        )
    if not relay.use_tls and (relay.password is not None or relay.username):
        emit(
            Severity.WARNING,
            "relay.plaintext-password",
            f"relay {relay.display_name}: UseTls is false, so the relay password crosses "
            "the network in clear",
            'set "UseTls": true',
            (*path, "UseTls"),
        )
    if not relay.verify_certificate:
        emit(
            Severity.WARNING,
            "relay.no-verify",
            f"relay {relay.display_name}: certificate checks are off; anyone on the path "
            "can read the mail and the relay password",
            'use "CaFile" for a private CA instead, and "VerifyCertificate": true',
            (*path, "VerifyCertificate"),
        )
    if relay.ca_file is not None and not os.access(relay.ca_file, os.R_OK):
        emit(
            Severity.ERROR,
            "relay.ca-unreadable",
            f"relay {relay.display_name}: CaFile {relay.ca_file} cannot be read",
            "fix the path or the permissions",
            (*path, "CaFile"),
        )
    elif relay.ca_file is not None:
        try:
            client_tls_context(relay.ca_file)
        except (ssl.SSLError, OSError, ValueError):
            emit(
                Severity.ERROR,
                "relay.ca-not-pem",
                f"relay {relay.display_name}: CaFile {relay.ca_file} holds no PEM "
                "certificate, so every delivery attempt would fail its TLS check",
                "point CaFile at the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)",
                (*path, "CaFile"),
            )
    if relay.username and relay.password is None:
        env = relay_password_env(relay.name)
        emit(
            Severity.ERROR,
            "relay.no-password",
            f"relay {relay.display_name}: Username is set but there is no Password "
            f"(neither in the file nor in ${env})",
            f"set Password, or export {env}=…",
            (*path, "Password"),
        )


def _check_relay_provider(relay: RelaySettings, path: KeyPath, emit: Emit) -> None:
    typo = suggest_host(relay.host)
    if typo:
        emit(
            Severity.WARNING,
            "relay.host-typo",
            f"relay host {relay.host!r} looks like a typo of {typo!r}",
            f'set "Host": "{typo}"',
            (*path, "Host"),
            "C1",
        )
    provider = provider_for_host(relay.host)
    if provider is None:
        return
    if relay.port not in provider.ports:
        ports = ", ".join(
            f"{p} ({'implicit TLS' if tls else 'STARTTLS'})" for p, tls in provider.ports.items()
        )
        emit(
            Severity.WARNING,
            "relay.provider-port",
            f"{provider.label} does not take mail on port {relay.port}; it listens on {ports}",
            f'set "Port": {next(iter(provider.ports))}',
            (*path, "Port"),
            "C1",
        )
    username = relay.username or ""
    if provider.fixed_username and username != provider.fixed_username:
        emit(
            Severity.ERROR,
            "relay.provider-username",
            f"{provider.label} requires Username {provider.fixed_username!r}"
            + (f", not {username!r}" if username else ""),
            f'set "Username": "{provider.fixed_username}" and the API key as Password',
            (*path, "Username"),
            "C6",
        )
    elif provider.username_is_address and username and "@" not in username:
        emit(
            Severity.WARNING,
            "relay.provider-username",
            f"{provider.label} expects the full email address as Username, not {username!r}",
            'set "Username": "you@…"',
            (*path, "Username"),
            "C6",
        )
    secret = relay.password.get_secret_value() if relay.password is not None else ""
    if provider.key == "gmail" and secret:
        letters = secret.replace(" ", "")
        if not (len(letters) == 16 and letters.isalpha()):
            emit(
                Severity.WARNING,
                "relay.gmail-app-password",
                "Gmail's Password should be a 16-letter app password (spaces allowed); "
                "this one is not, so it is probably the account password, which Gmail refuses",
                provider.password_hint,
                (*path, "Password"),
                "C4",
            )
    if provider.key == "sendgrid" and secret and not secret.startswith("SG."):
        emit(
            Severity.WARNING,
            "relay.provider-password",
            "SendGrid API keys start with 'SG.'; this Password does not",
            provider.password_hint,
            (*path, "Password"),
            "C6",
        )
    if provider.key == "ses" and secret and len(secret) == 40:
        emit(
            Severity.WARNING,
            "relay.provider-password",
            "this looks like an IAM secret access key (40 characters); SES SMTP passwords "
            "are 44 characters",
            provider.password_hint,
            (*path, "Password"),
            "C6",
        )
    if relay.daily_quota is None and provider.daily_limit:
        emit(
            Severity.INFO,
            "relay.quota",
            f"{provider.label} stops taking mail after about {provider.daily_limit} messages a day",
            f'set "DailyQuota": {provider.daily_limit} so jdxmail holds or fails over '
            "instead of hitting the limit",
            (*path, "DailyQuota"),
            "E3",
        )


def _check_file_mode(settings: Settings, source: ConfigSource, emit: Emit) -> None:
    if source.path is None or os.name != "posix":
        return
    has_secrets = bool(settings.smtp_server.users) or any(
        r.password is not None for r in settings.relays
    )
    try:
        mode = source.path.stat().st_mode
    except OSError:
        return
    if has_secrets and mode & (stat.S_IRGRP | stat.S_IROTH):
        readers = "everyone" if mode & stat.S_IROTH else "its group"
        emit(
            Severity.WARNING,
            "file.readable",
            f"{source.path} holds passwords and is readable by {readers} "
            f"(mode {stat.S_IMODE(mode):04o})",
            f"chmod 600 {source.path}",
        )
