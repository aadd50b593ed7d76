"""Off-loopback clients for real: server and client in a network namespace of our own.

Inside the namespace the server listens on 198.18.0.1 (a benchmarking range, RFC 2544)
and the client connects from that address, so the server sees a non-loopback peer.
Nothing touches this machine's real interfaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import asyncio, base64, json, ssl, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from jdxmail.server.app import SmtpServerApp
from tests.server.conftest import Client, make_settings, user_entry, port_of

tmp, cert, key, ca = (Path(p) for p in sys.argv[2:6])
PLAIN = "AUTH PLAIN " + base64.b64encode(b"\0test@example.com\0password").decode()

async def session(app, tls_context):
    out = []
    reader, writer = await asyncio.open_connection("198.18.0.1", port_of(app))
    client = Client(reader, writer)
    out.append(await client.line())
    out.append(await client.ehlo())
    out.append(await client.cmd(PLAIN))
    out.append(await client.cmd("MAIL FROM:<a@example.com>"))
    out.append(await client.cmd("RCPT TO:<someone@gmail.com>"))
    out.append(await client.cmd("RCPT TO:<b@localhost>"))
    if tls_context is not None:
        await client.starttls(tls_context)
        out.append(await client.ehlo())
        out.append(await client.cmd(PLAIN))
        out.append(await client.cmd("MAIL FROM:<a@example.com>"))
        out.append(await client.cmd("RCPT TO:<someone@gmail.com>"))
    await client.close()
    return out

async def main():
    results = {}
    context = ssl.create_default_context(cafile=str(ca))
    tls = {"CertFile": str(cert), "KeyFile": str(key)}
    for name, extra, ctx in (
        ("tls", {"Tls": tls}, context),
        ("plaintext_allowed", {"Tls": tls, "AllowPlaintextAuth": True}, None),
        ("no_tls", {}, None),
    ):
        settings = make_settings(tmp / name, Users=[user_entry()], **extra)
        app = SmtpServerApp(settings, bind_address="198.18.0.1", port=0, auth_failure_delay=0)
        await app.start()
        try:
            results[name] = await session(app, ctx)
        finally:
            await app.stop(1)
    print(json.dumps(results))

asyncio.run(main())
"""


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with loopback and a veth pair holding 198.18.0.1."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and the ip command (iproute2)")
    name = f"jdxmail-serve-{os.getpid()}"

    def run(*args: str) -> None:
        subprocess.run(["ip", "netns", "exec", name, *args], check=True, capture_output=True)

    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr!r}")
    try:
        run("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "jdxs0", "type", "veth", "peer", "name", "jdxs1")
        run("ip", "addr", "add", "198.18.0.1/24", "dev", "jdxs0")
        run("ip", "link", "set", "jdxs0", "up")
        run("ip", "link", "set", "jdxs1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_off_loopback_policy_over_real_sockets(
    netns: str, tmp_path: Path, tls_keys: dict[str, str], ca: trustme.CA
) -> None:
    """From a non-loopback address: AUTH waits for TLS (538), relaying needs AUTH (530)."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    done = subprocess.run(
        [
            "ip", "netns", "exec", netns, sys.executable, "-c", _SCRIPT, str(ROOT),
            str(tmp_path), tls_keys["CertFile"], tls_keys["KeyFile"], str(ca_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])

    banner, ehlo, auth, mail, remote, local, ehlo_tls, auth_tls, mail_tls, remote_tls = results[
        "tls"
    ]
    assert banner.endswith("ESMTP jdxmail SMTP Server Ready")
    assert "STARTTLS" in ehlo
    assert "AUTH PLAIN LOGIN" not in ehlo
    assert auth == "538 5.7.11 Encryption required for requested authentication mechanism"
    assert mail == "250 2.1.0 Sender OK"
    assert remote == "530 5.7.0 Authentication required"
    assert local == "250 2.1.5 Recipient OK"
    assert "AUTH PLAIN LOGIN" in ehlo_tls
    assert auth_tls == "235 2.7.0 Authentication successful"
    assert mail_tls == "250 2.1.0 Sender OK"
    assert remote_tls == "250 2.1.5 Recipient OK"

    _, ehlo, auth, *_ = results["plaintext_allowed"]
    assert "AUTH PLAIN LOGIN" in ehlo
    assert auth == "235 2.7.0 Authentication successful"

    _, ehlo, auth, _, remote, _ = results["no_tls"]
    assert "STARTTLS" not in ehlo
    assert auth == "235 2.7.0 Authentication successful"
    assert remote == "250 2.1.5 Recipient OK"
