"""The TLS stage of a relay probe: STARTTLS or TLS from the first byte.

A failed handshake is explained: an untrusted certificate (with what it holds, fetched
again without checks), a host name it does not name, a port that speaks plain SMTP
where TLS was expected, or the other way round.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from datetime import UTC, datetime
from typing import Any

from jdxmail.client_tls import client_tls_context
from jdxmail.diagnostics.relay_session import ProberBase, ProbeSession, ProtocolError, elapsed_ms
from jdxmail.diagnostics.relay_target import ProbeStage, RelayTarget, TlsMode
from jdxmail.diagnostics.stages import StageResult
from jdxmail.findings import Severity

__all__ = ["TlsStages", "describe_certificate", "looks_like_tls"]


def _tls_context(target: RelayTarget) -> ssl.SSLContext:
    """The client TLS context; OSError/ssl.SSLError when the CA file cannot be used."""
    if not target.verify:
        return client_tls_context(verify=False)
    return client_tls_context(target.ca_file)


def looks_like_tls(data: bytes) -> bool:
    """True for the start of a TLS record (handshake or alert, version 3.x)."""
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03


def describe_certificate(der: bytes) -> dict[str, Any]:
    """Subject, issuer, SANs, days to expiry and self-signedness of a DER certificate.

    Used where the ssl module gives no details: an unverified or untrusted certificate.
    Returns {} for bytes that are not a certificate.
    """
    from cryptography import x509  # noqa: PLC0415 - only when a certificate is described

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {}
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [*alt.get_values_for_type(x509.DNSName)]
        sans += [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    remaining = cert.not_valid_after_utc - datetime.now(UTC)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": sans,
        "days_to_expiry": remaining.days,
        "self_signed": cert.issuer == cert.subject,
    }


def _certificate_text(facts: dict[str, Any]) -> str:
    text = f"cert {facts['subject'] or '(no subject)'} issued by {facts['issuer']}"
    if facts.get("self_signed"):
        text += " (self-signed)"
    text += f", SANs {', '.join(facts['sans']) or 'none'}"
    return text + f", {facts['days_to_expiry']} days left"


class TlsStages(ProberBase):
    """The TLS stage of a probe: STARTTLS or implicit TLS, and what a failure means."""

    def tls_mismatch(self, started: float, detail: str) -> None:
        mode = "plain text" if self.target.tls is TlsMode.NONE else "STARTTLS mode"
        key = "Port"
        if self.target.key and self.target.tls is TlsMode.NONE:
            key = "UseTls"
            fix = self.setting("UseTls", "true") + ' and "Port": 465 (jdxmail speaks TLS '
            fix += "from the first byte on 465), or the provider's STARTTLS port 587"
        elif self.target.key:
            fix = self.setting("Port", "465") + " (with UseTls true, jdxmail speaks TLS from "
            fix += "the first byte on 465), or the provider's STARTTLS port 587"
        else:
            fix = "--tls implicit (or use the STARTTLS port 587)"
        self.fail(
            ProbeStage.BANNER,
            started,
            detail,
            f"port {self.target.port} speaks TLS from the first byte (implicit TLS), but "
            f"the session was started in {mode}",
            fix,
            key,
            "C3",
            "relay.tls-mode",
        )

    async def port_speaks_tls(self) -> bool:
        """True when a fresh connection to the port completes a TLS handshake."""
        context = client_tls_context(verify=False)
        try:
            async with asyncio.timeout(self.target.timeout):
                _, writer = await asyncio.open_connection(
                    self.target.host, self.target.port, ssl=context
                )
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        writer.close()
        return True

    async def port_speaks_plain(self) -> str | None:
        """The banner a fresh plain connection gets, or None."""
        try:
            async with asyncio.timeout(self.target.timeout):
                reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
                try:
                    line = await reader.readline()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return None
        text = line.decode("utf-8", "replace").strip()
        return text if text[:3].isdigit() else None

    async def start_tls(self, *, implicit: bool) -> bool:
        session = self.session
        assert session is not None
        started = time.perf_counter()
        if not implicit:
            if "STARTTLS" not in self.extensions:
                fix = (
                    self.setting("UseTls", "false") + " only if the relay is on a trusted "
                    "network; otherwise use the provider's STARTTLS port 587 or implicit TLS on 465"
                )
                self.fail(
                    ProbeStage.TLS,
                    started,
                    "STARTTLS not offered",
                    "the server does not offer STARTTLS on this port",
                    fix,
                    "UseTls",
                    "C3",
                    "relay.no-starttls",
                )
                return False
            try:
                reply = await session.command("STARTTLS")
            except (OSError, TimeoutError, ProtocolError) as exc:
                self.io_fail(ProbeStage.TLS, started, exc)
                return False
            if reply.code != 220:
                self.reply_fail(ProbeStage.TLS, started, reply, "the server refused STARTTLS")
                return False
        try:
            context = _tls_context(self.target)
        except (OSError, ssl.SSLError) as exc:
            self.fail(
                ProbeStage.TLS,
                started,
                f"cannot use the CA file: {exc}",
                f"the CA file {self.target.ca_file} cannot be used ({exc})",
                "point CaFile (--ca) at a readable PEM file",
                "CaFile",
                None,
                "relay.ca-file",
            )
            return False
        try:
            async with asyncio.timeout(self.target.timeout):
                await session.writer.start_tls(context, server_hostname=self.target.host)
        except ssl.SSLCertVerificationError as exc:
            await self.cert_fail(started, exc, implicit=implicit)
            return False
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            await self.handshake_fail(started, exc, implicit=implicit)
            return False
        self.tls_success(started, implicit=implicit)
        return True

    async def cert_fail(
        self, started: float, exc: ssl.SSLCertVerificationError, *, implicit: bool
    ) -> None:
        reason = exc.verify_message or str(exc)
        der = await self.fetch_certificate(implicit=implicit)
        facts = describe_certificate(der) if der else {}
        seen = f" ({_certificate_text(facts)})" if facts else ""
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            names = [n for n in facts.get("sans", []) if not n.startswith("*")]
            name = f'"{names[0]}"' if names else '"<a name on the certificate>"'
            fix = "connect by a name the certificate holds: " + self.setting("Host", name)
            row: str | None = "C1"
        elif "expired" in reason.lower():
            fix = "the relay's certificate has expired: tell its operator"
            row = None
        else:
            fix = (
                "if the relay uses a private CA, "
                + self.setting("CaFile", '"/path/to/ca.pem"')
                + "; keep certificate checks on"
            )
            row = None
        result = StageResult(
            ProbeStage.TLS.value,
            False,
            elapsed_ms(started),
            f"certificate not trusted: {reason}",
            facts,
        )
        self.report.stages.append(result)
        self.report.failed = self.report.failed or ProbeStage.TLS
        self.finding(
            Severity.ERROR,
            "relay.certificate",
            f"TLS: the certificate of {self.target.host} is not trusted: {reason}{seen}",
            fix,
            "CaFile",
            row,
        )

    async def fetch_certificate(self, *, implicit: bool) -> bytes | None:
        """The server's certificate (DER), from a fresh session that does not verify it."""
        context = client_tls_context(verify=False)
        host, port = self.target.host, self.target.port
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.target.timeout):
                if implicit:
                    _, writer = await asyncio.open_connection(
                        host, port, ssl=context, server_hostname=host
                    )
                else:
                    reader, writer = await asyncio.open_connection(host, port)
                    session = ProbeSession(reader, writer, self.target.timeout, [])
                    await session.reply()
                    await session.command(f"EHLO {self.options.ehlo_name}")
                    if (await session.command("STARTTLS")).code != 220:
                        return None
                    await writer.start_tls(context, server_hostname=host)
                ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
                return ssl_object.getpeercert(binary_form=True) if ssl_object else None
        except (OSError, TimeoutError, ssl.SSLError, ProtocolError):
            return None
        finally:
            if writer is not None:
                writer.close()

    async def handshake_fail(self, started: float, exc: BaseException, *, implicit: bool) -> None:
        reason = (
            f"no TLS handshake within {self.target.timeout:g} s"
            if isinstance(exc, TimeoutError)
            else (getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc))
        )
        if implicit:
            banner = await self.port_speaks_plain()
            if banner is not None:
                fix = (
                    self.setting("Port", "587") + ' with "UseTls": true (STARTTLS)'
                    if self.target.key
                    else "--tls starttls (or --tls none)"
                )
                self.fail(
                    ProbeStage.TLS,
                    started,
                    f"TLS handshake failed: {reason}",
                    f"port {self.target.port} speaks plain SMTP ({banner[:60]}), not TLS "
                    "from the first byte",
                    fix,
                    "UseTls",
                    "C3",
                    "relay.tls-mode",
                )
                return
        self.fail(
            ProbeStage.TLS,
            started,
            f"TLS handshake failed: {reason}",
            f"TLS handshake failed: {reason}",
            "the server's TLS setup does not fit this client; try the provider's other TLS "
            "port (587 STARTTLS / 465 implicit)",
            "UseTls",
            "C3",
            "relay.tls-handshake",
        )

    def tls_success(self, started: float, *, implicit: bool) -> None:
        session = self.session
        assert session is not None
        ssl_object: ssl.SSLObject | None = session.writer.get_extra_info("ssl_object")
        facts: dict[str, Any] = {"mode": "implicit" if implicit else "STARTTLS"}
        parts = [facts["mode"]]
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            facts["protocol"] = ssl_object.version()
            facts["cipher"] = cipher[0] if cipher else None
            parts.append(f"{facts['protocol']} {facts['cipher']}")
            der = ssl_object.getpeercert(binary_form=True)
            facts.update(describe_certificate(der) if der else {})
            if "subject" in facts:
                parts.append(_certificate_text(facts))
            # with verification on, a completed handshake means both checks passed
            verified = self.target.verify
            facts["hostname_match"] = verified
            facts["chain_verified"] = verified
            parts.append(
                "hostname matches, chain verified"
                if verified
                else "certificate NOT verified (--insecure / VerifyCertificate false)"
            )
            days = facts.get("days_to_expiry")
            if isinstance(days, int) and days < 14:
                self.finding(
                    Severity.WARNING,
                    "relay.cert-expiry",
                    f"the certificate of {self.target.host} expires in {days} days",
                    "tell the relay's operator",
                    "",
                    None,
                )
        self.stage(ProbeStage.TLS, True, started, "; ".join(parts), **facts)
