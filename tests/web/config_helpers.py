"""Helpers of the Users, Settings and Backup tests: SMTP logins, secrets that must never
show, and a config file made unwritable in a way root also hits."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import httpx
import pytest

GUIDE_HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
RELAY_SECRET = "relay-app-password-77"

#: a config with comments, a user (hash of "password") and a relay password
CONFIG_WITH_SECRETS = f"""\
// console test config: keep this comment
{{
  "SmtpServer": {{
    "BindAddress": "127.0.0.1",
    "Port": 2525, // the dev port
    "HostName": "mx.test",
    "MaxRecipients": 100,
    "TrustedNetworks": ["127.0.0.0/8", "::1/128"],
    "Users": [
      {{ "UserName": "test@example.com", "Password": "{GUIDE_HASH}", "HashType": "SHA256" }}
    ]
  }},
  "RelayServers": [
    {{ "Name": "upstream", "Host": "127.0.0.1", "Port": 2600, "UseTls": false,
       "Username": "me", "Password": "{RELAY_SECRET}" }}
  ]
}}
"""


async def can_login(port: int, user: str, password: str) -> bool:
    """True when AUTH is offered and AUTH with *user*/*password* on 127.0.0.1:*port* succeeds."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        if not client.supports_extension("auth"):
            return False  # no users configured: AUTH is not offered
        await client.login(user, password)
    except aiosmtplib.SMTPAuthenticationError:
        return False
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()
    return True


def assert_no_secret(answer: httpx.Response, *secrets: str) -> None:
    """*answer* (headers and body) holds none of *secrets*."""
    text = answer.text + repr(answer.headers)
    for secret in secrets:
        assert secret not in text, f"{answer.request.url} leaked a secret"


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make *path* immutable (chattr +i): root cannot write it either (JDX-F1)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed (needed to make a file root cannot write)")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not allowed here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def api(url: str) -> httpx.AsyncClient:
    """A plain API client on the console at *url*, as curl is: it keeps no cookie.

    (A client that kept the console's CSRF cookie would count as a browser and need
    the token for every change.)
    """
    client = httpx.AsyncClient(base_url=url, timeout=10)

    async def forget_cookies(_: httpx.Response) -> None:
        client.cookies.clear()

    client.event_hooks["response"] = [forget_cookies]
    return client


def files_in(folder: Path) -> set[str]:
    """Names of the files in *folder* (no temporary or backup file may be left)."""
    return {p.name for p in folder.iterdir() if p.is_file()}


def screenshot_dir() -> Path | None:
    """Where page tests also save their screenshots (JDX_SCREENSHOTS), if set."""
    folder = os.environ.get("JDX_SCREENSHOTS")
    return Path(folder) if folder else None
