"""The TLS context of every client connection jdxmail opens (relays, diagnostics).

One builder, so that the relay client, ``diag relay`` / ``test-relay`` and
``validate-config``'s CA-file check trust the same certificates the same way.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_tls_context"]


def client_tls_context(ca_file: Path | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client TLS context trusting the system CAs, or *ca_file* when given.

    With ``verify=False`` neither the certificate nor the host name is checked.
    Raises OSError or ssl.SSLError when *ca_file* cannot be read or holds no PEM
    certificate.
    """
    context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
