"""Postfix as the client: a private Postfix instance relays into jdxmail serve.

Postfix runs with its own config and queue under the test folder, listening on a
loopback port, with ``relayhost`` pointing at the jdxmail server under test. It is
skipped when Postfix is not installed or the test does not run as root (Postfix
switches to its own user). .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pty
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import PASSWORD, USER, StartServer, port_of, user_entry

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test.invalid
mydomain = test.invalid
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{upstream}
smtpd_peername_lookup = no
smtp_host_lookup = native
maillog_file_prefixes = {root}
maillog_file = {root}/postfix.log
biff = no
smtputf8_enable = no
{extra}
"""

# chroot off ("n" in column 5), so the private queue needs no copied /etc.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
tlsmgr unix - - n 1000? 1 tlsmgr
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A private Postfix instance relaying to a given upstream port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "conf"
        self.port = 0

    def command(self, *args: str) -> tuple[int, str]:
        """Run ``postfix -c CONF ARGS`` (with a terminal, where it prints its errors)."""
        leader, follower = pty.openpty()
        try:
            proc = subprocess.run(
                ["postfix", "-c", str(self.conf), *args],
                stdin=subprocess.DEVNULL,
                stdout=follower,
                stderr=follower,
                timeout=60,
                check=False,
            )
        finally:
            os.close(follower)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(leader, 65536):
                out += chunk
        os.close(leader)
        return proc.returncode, out.decode(errors="replace")

    def start(self, upstream: int, extra: str = "") -> None:
        """Write main.cf/master.cf and start the instance."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        for folder in (self.conf, self.root / "data", self.root / "queue"):
            folder.mkdir(parents=True)
        shutil.chown(self.root / "data", "postfix")
        (self.conf / "main.cf").write_text(
            MAIN_CF.format(root=self.root, upstream=upstream, extra=extra)
        )
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))
        code, out = self.command("start")
        if code != 0:
            pytest.skip(f"postfix does not start here: {out.strip()[-300:]}")

    def stop(self) -> None:
        """Stop the instance."""
        if (self.conf / "main.cf").exists():
            self.command("stop")

    def log(self) -> str:
        """The instance's log so far."""
        path = self.root / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def postfix() -> Iterator[Postfix]:
    """A Postfix instance in a folder its own user can reach (skipped without root)."""
    if shutil.which("postfix") is None:
        pytest.skip("postfix is not installed (.ci/run installs it with apt-get)")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix must be started as root")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("no 'postfix' user")
    # pytest's tmp folders are private to root; Postfix's processes run as "postfix".
    root = Path(tempfile.mkdtemp(prefix="jdxmail-postfix-"))
    root.chmod(0o755)
    instance = Postfix(root / "instance")
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)


def submit(port: int, recipient: str) -> None:
    """Hand one message to Postfix's smtpd."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(
            "app@test.invalid",
            [recipient],
            f"From: app@test.invalid\r\nTo: {recipient}\r\nSubject: via postfix\r\n\r\nhi\r\n",
        )


async def delivered(folder: Path, postfix: Postfix) -> Path:
    """Wait (up to 30 s) for a message file in *folder*; fail with Postfix's log."""
    for _ in range(300):
        files = await asyncio.to_thread(lambda: list(folder.glob("*.eml")))
        if files:
            return files[0]
        if "status=deferred" in postfix.log() or "status=bounced" in postfix.log():
            break
        await asyncio.sleep(0.1)  # Postfix's queue manager gives no event to wait on
    raise AssertionError(f"Postfix did not deliver:\n{postfix.log()[-2000:]}")


async def test_postfix_relays_into_jdxmail(
    start_server: StartServer, postfix: Postfix, tmp_path: Path
) -> None:
    """Postfix's smtp client (EHLO, SIZE, 8BITMIME, PIPELINING) hands mail to jdxmail."""
    app = await start_server(TrustedNetworks=["127.0.0.0/8"])
    await asyncio.to_thread(postfix.start, port_of(app), "smtp_tls_security_level = none")
    await asyncio.to_thread(submit, postfix.port, "friend@example.org")
    message = await delivered(tmp_path / "mailbox" / "friend@example.org", postfix)
    data = message.read_bytes()
    assert b"Subject: via postfix" in data
    assert b"Received: from postfix.test.invalid ([127.0.0.1])" in data
    assert "status=sent" in postfix.log()


async def test_postfix_logs_in_over_starttls(
    start_server: StartServer, postfix: Postfix, tmp_path: Path, tls_keys: dict[str, str]
) -> None:
    """Postfix with TLS required and SASL logs in to jdxmail over STARTTLS and relays."""
    if not glob.glob("/usr/lib/*/sasl2/libplain.so*"):
        pytest.skip("Cyrus SASL PLAIN module missing (apt-get install libsasl2-modules)")
    app = await start_server(Users=[user_entry()], Tls=tls_keys)
    extra = "\n".join(
        [
            "smtp_tls_security_level = encrypt",
            "smtp_sasl_auth_enable = yes",
            f"smtp_sasl_password_maps = static:{USER}:{PASSWORD}",
            "smtp_sasl_security_options = noanonymous",
            "smtp_sasl_tls_security_options = noanonymous",
        ]
    )
    await asyncio.to_thread(postfix.start, port_of(app), extra)
    await asyncio.to_thread(submit, postfix.port, "friend@example.org")
    message = await delivered(tmp_path / "mailbox" / "friend@example.org", postfix)
    data = message.read_bytes()
    assert b"with ESMTPSA" in data
    assert f"(authenticated user {USER})".encode() in data
