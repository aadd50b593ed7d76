"""Real command-line SMTP clients against the server: swaks and curl's smtp://."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import trustme

from tests.server.conftest import PASSWORD, USER, StartServer, port_of, user_entry


async def run(*args: str) -> tuple[int, str]:
    """Run a client program; return its exit code and combined output."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace")


def need(program: str) -> str:
    """The path of *program*, or skip the test (.ci/run installs swaks and curl)."""
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (.ci/run installs it with apt-get)")
    return path


def mailbox(tmp_path: Path, recipient: str) -> list[Path]:
    """The message files delivered to *recipient*."""
    return list((tmp_path / "mailbox" / recipient).glob("*.eml"))


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
async def test_swaks_auth_and_send(
    start_server: StartServer, tmp_path: Path, mechanism: str
) -> None:
    """swaks logs in with AUTH LOGIN / PLAIN and relays a message to a remote address."""
    swaks = need("swaks")
    app = await start_server(Users=[user_entry()])
    code, out = await run(
        swaks,
        "--server", "127.0.0.1",
        "--port", str(port_of(app)),
        "--auth", mechanism,
        "--auth-user", USER,
        "--auth-password", PASSWORD,
        "--from", USER,
        "--to", "friend@example.net",
        "--header", "Subject: swaks test",
    )  # fmt: skip
    assert code == 0, out
    assert "235 2.7.0 Authentication successful" in out
    assert "250 2.0.0 OK: queued as" in out
    assert len(mailbox(tmp_path, "friend@example.net")) == 1


async def test_swaks_wrong_password_gets_535(start_server: StartServer) -> None:
    """swaks with a wrong password sees 535 5.7.8 and fails."""
    swaks = need("swaks")
    app = await start_server(Users=[user_entry()])
    code, out = await run(
        swaks,
        "--server", "127.0.0.1",
        "--port", str(port_of(app)),
        "--auth", "LOGIN",
        "--auth-user", USER,
        "--auth-password", "wrong",
        "--to", "friend@example.net",
    )  # fmt: skip
    assert code != 0
    assert "535 5.7.8 Authentication credentials invalid" in out


async def test_curl_smtp_upload(start_server: StartServer, tmp_path: Path) -> None:
    """curl smtp:// with --user sends a file as a message."""
    curl = need("curl")
    app = await start_server(Users=[user_entry()])
    message = tmp_path / "message.txt"
    message.write_bytes(b"From: test@example.com\r\nSubject: curl\r\n\r\nsent by curl\r\n")
    code, out = await run(
        curl, "--silent", "--show-error",
        f"smtp://127.0.0.1:{port_of(app)}",
        "--mail-from", USER,
        "--mail-rcpt", "dev@localhost",
        "--user", f"{USER}:{PASSWORD}",
        "--upload-file", str(message),
    )  # fmt: skip
    assert code == 0, out
    files = mailbox(tmp_path, "dev@localhost")
    assert len(files) == 1
    assert b"sent by curl" in files[0].read_bytes()


async def test_curl_smtp_starttls_required(
    start_server: StartServer, tmp_path: Path, tls_keys: dict[str, str], ca: trustme.CA
) -> None:
    """curl --ssl-reqd upgrades with STARTTLS, verifies the certificate and sends."""
    curl = need("curl")
    app = await start_server(Users=[user_entry()], Tls=tls_keys)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    message = tmp_path / "message.txt"
    message.write_bytes(b"Subject: curl tls\r\n\r\nover TLS\r\n")
    code, out = await run(
        curl, "--silent", "--show-error", "--ssl-reqd",
        "--cacert", str(bundle),
        f"smtp://localhost:{port_of(app)}",
        "--mail-from", USER,
        "--mail-rcpt", "dev@localhost",
        "--user", f"{USER}:{PASSWORD}",
        "--upload-file", str(message),
    )  # fmt: skip
    assert code == 0, out
    data = mailbox(tmp_path, "dev@localhost")[0].read_bytes()
    assert b"with ESMTPSA" in data
