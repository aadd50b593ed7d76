"""STARTTLS, the implicit-TLS listener, the RFC 3207 reset and the dev certificate."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import aiosmtplib
import trustme

from jdxmail.server.tls import ensure_self_signed
from tests.conftest import BOTH_LOOPS
from tests.server.conftest import PASSWORD, USER, Client, StartServer, port_of, user_entry

pytestmark = BOTH_LOOPS  # STARTTLS and its injection defence, on uvloop too

PLAIN = "AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()


async def test_starttls_offered_and_working(
    start_server: StartServer, tls_keys: dict[str, str], client_tls: ssl.SSLContext
) -> None:
    """EHLO offers STARTTLS; after the handshake EHLO no longer offers it and mail flows."""
    app = await start_server(Tls=tls_keys, Users=[user_entry()])
    client = await Client.connect(port_of(app))
    assert "STARTTLS" in await client.ehlo()
    await client.starttls(client_tls)
    keywords = await client.ehlo()
    assert "STARTTLS" not in keywords
    assert "AUTH PLAIN LOGIN" in keywords
    assert await client.cmd("STARTTLS") == "503 5.5.1 TLS already active"
    assert await client.cmd(PLAIN) == "235 2.7.0 Authentication successful"
    await client.close()


async def test_aiosmtplib_requires_starttls(
    start_server: StartServer, tls_keys: dict[str, str], ca: trustme.CA, tmp_path: Path
) -> None:
    """aiosmtplib with start_tls=True verifies the certificate, logs in and sends."""
    app = await start_server(Tls=tls_keys, Users=[user_entry()])
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with aiosmtplib.SMTP(
        hostname="localhost", port=port_of(app), start_tls=True, cert_bundle=str(bundle)
    ) as smtp:
        await smtp.login(USER, PASSWORD)
        _, reply = await smtp.sendmail(USER, ["a@localhost"], b"Subject: t\r\n\r\nx\r\n")
    assert reply.startswith("2.0.0 OK: queued as")
    data = next((tmp_path / "mailbox" / "a@localhost").glob("*.eml")).read_bytes()
    assert b"with ESMTPSA" in data


async def test_starttls_resets_the_session(
    start_server: StartServer, tls_keys: dict[str, str], client_tls: ssl.SSLContext
) -> None:
    """RFC 3207 4.2: EHLO and a transaction started before STARTTLS are forgotten."""
    app = await start_server(Tls=tls_keys)
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert await client.cmd("MAIL FROM:<a@localhost>") == "250 2.1.0 Sender OK"
    await client.starttls(client_tls)
    assert await client.cmd("RCPT TO:<b@localhost>") == "503 5.5.1 Send EHLO or HELO first"
    await client.ehlo()
    assert await client.cmd("RCPT TO:<b@localhost>") == "503 5.5.1 Send MAIL first"


async def test_commands_pipelined_after_starttls_are_discarded(
    start_server: StartServer, tls_keys: dict[str, str], client_tls: ssl.SSLContext
) -> None:
    """Plaintext sent in the same packet as STARTTLS is dropped, not run inside TLS."""
    app = await start_server(Tls=tls_keys)
    client = await Client.connect(port_of(app))
    await client.ehlo()
    client.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\nRCPT TO:<x@localhost>\r\n")
    assert await client.line() == "220 2.0.0 Ready to start TLS"
    await client.writer.start_tls(client_tls, server_hostname="localhost")
    await client.ehlo()
    # Had the injected MAIL been run, this would be 503 nested MAIL / a 250 for RCPT.
    assert await client.cmd("RCPT TO:<x@localhost>") == "503 5.5.1 Send MAIL first"
    assert await client.cmd("MAIL FROM:<me@localhost>") == "250 2.1.0 Sender OK"
    await client.close()


async def test_starttls_unavailable_without_certificate(start_server: StartServer) -> None:
    """Without a certificate STARTTLS is not offered and gets 454 4.7.0."""
    app = await start_server()
    client = await Client.connect(port_of(app))
    assert "STARTTLS" not in await client.ehlo()
    assert await client.cmd("STARTTLS") == "454 4.7.0 TLS not available"


async def test_failed_handshake_closes_only_that_session(
    start_server: StartServer, tls_keys: dict[str, str]
) -> None:
    """A client that sends garbage instead of a TLS handshake is dropped; others go on."""
    app = await start_server(Tls=tls_keys)
    client = await Client.connect(port_of(app))
    await client.ehlo()
    assert (await client.cmd("STARTTLS")).startswith("220")
    client.send(b"this is not a TLS ClientHello\r\n" * 4)
    assert await client.closed()
    other = await Client.connect(port_of(app))
    assert await other.cmd("NOOP") == "250 2.0.0 OK"


async def test_implicit_tls_listener_offers_auth(
    start_server: StartServer, tls_keys: dict[str, str], client_tls: ssl.SSLContext
) -> None:
    """On the implicit-TLS port the session is known to be encrypted: AUTH, no STARTTLS."""
    app = await start_server(Tls=tls_keys, Users=[user_entry()], implicit_tls_port=0)
    client = await Client.connect(port_of(app, implicit_tls=True), tls=client_tls)
    keywords = await client.ehlo()
    assert "AUTH PLAIN LOGIN" in keywords
    assert "STARTTLS" not in keywords
    assert await client.cmd(PLAIN) == "235 2.7.0 Authentication successful"


async def test_aiosmtplib_implicit_tls(
    start_server: StartServer, tls_keys: dict[str, str], ca: trustme.CA, tmp_path: Path
) -> None:
    """aiosmtplib with use_tls=True sends through the implicit-TLS listener."""
    app = await start_server(Tls=tls_keys, Users=[user_entry()], implicit_tls_port=0)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with aiosmtplib.SMTP(
        hostname="localhost",
        port=port_of(app, implicit_tls=True),
        use_tls=True,
        cert_bundle=str(bundle),
    ) as smtp:
        await smtp.login(USER, PASSWORD)
        _, reply = await smtp.sendmail(USER, ["far@example.org"], b"Subject: t\r\n\r\nx\r\n")
    assert reply.startswith("2.0.0")


async def test_self_signed_certificate_is_made_once_and_reused(
    start_server: StartServer, tmp_path: Path
) -> None:
    """--self-signed makes a certificate under the data folder, reuses it, and serves it."""
    app = await start_server(self_signed=True)
    cert = tmp_path / "tls" / "selfsigned-cert.pem"
    key = tmp_path / "tls" / "selfsigned-key.pem"
    first = cert.read_bytes()
    assert key.stat().st_mode & 0o077 == 0
    assert ensure_self_signed(tmp_path / "tls", "mx.test") == (cert, key)
    assert cert.read_bytes() == first
    context = ssl.create_default_context(cafile=str(cert))
    client = await Client.connect(port_of(app))
    assert "STARTTLS" in await client.ehlo()
    await client.starttls(context)
    assert await client.cmd("NOOP") == "250 2.0.0 OK"


async def test_self_signed_certificate_made_again_for_a_new_host_name(tmp_path: Path) -> None:
    """A dev certificate for another host name is replaced, not reused."""
    cert, _ = ensure_self_signed(tmp_path, "one.test")
    first = cert.read_bytes()
    ensure_self_signed(tmp_path, "two.test")
    assert cert.read_bytes() != first
