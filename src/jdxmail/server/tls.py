"""TLS for clients: the server context from CertFile/KeyFile, and a dev certificate.

``jdxmail serve --self-signed`` makes a self-signed certificate for the host name,
localhost, 127.0.0.1 and ::1 the first time and reuses it afterwards, so a client that
was told to trust it once keeps working.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from jdxmail.server.errors import ServerError

__all__ = ["TlsSetupError", "ensure_self_signed", "server_context"]

CERT_NAME = "selfsigned-cert.pem"
KEY_NAME = "selfsigned-key.pem"
_VALID_DAYS = 825
_RENEW_BEFORE = datetime.timedelta(days=30)


class TlsSetupError(ServerError):
    """The certificate or key cannot be used; ``fix`` says what to do."""


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """An SSLContext for the server side (TLS 1.2 or later); raise TlsSetupError."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path, key in ((cert_file, "SmtpServer.Tls.CertFile"), (key_file, "SmtpServer.Tls.KeyFile")):
        if not path.is_file():
            raise TlsSetupError(
                f"{key} {path} does not exist",
                "check the path, or run `jdxmail serve --self-signed` for a dev certificate",
            )
    try:
        context.load_cert_chain(cert_file, key_file)
    except PermissionError:
        raise TlsSetupError(
            f"cannot read {cert_file} or {key_file}: permission denied",
            "give the user that runs jdxmail read access to both files",
        ) from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsSetupError(
            f"cannot load the certificate {cert_file} with key {key_file}: {exc}",
            "CertFile must be a PEM certificate (chain) and KeyFile its unencrypted PEM key",
        ) from None
    return context


def _still_valid(cert_file: Path, host_name: str) -> bool:
    from cryptography import x509  # noqa: PLC0415 - only needed with --self-signed

    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return False
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc - _RENEW_BEFORE < now:
        return False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return host_name.lower() in [n.lower() for n in names.get_values_for_type(x509.DNSName)]


def ensure_self_signed(directory: Path, host_name: str) -> tuple[Path, Path]:
    """Return (cert, key) of the dev certificate in *directory*, making it if needed.

    A certificate is made again when it is missing, unreadable, close to expiry or
    not for *host_name*. Raises TlsSetupError when the folder is not writable.
    """
    cert_file, key_file = directory / CERT_NAME, directory / KEY_NAME
    if cert_file.is_file() and key_file.is_file() and _still_valid(cert_file, host_name):
        return cert_file, key_file
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, host_name[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jdxmail development certificate"),
        ]
    )
    dns = sorted({host_name.lower(), "localhost"})
    alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise TlsSetupError(
            f"cannot write the dev certificate into {directory}: {exc.strerror or exc}",
            "make the folder writable for this user, or set SmtpServer.Tls.CertFile/KeyFile",
        ) from None
    return cert_file, key_file
