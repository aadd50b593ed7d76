"""Every command, run with stdin closed and with non-UTF-8 stdin, ends with a message
and an exit code of its own: never a traceback or "internal error" (issue 17)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jdxmail.cli.exitcodes import ExitCode
from jdxmail.passwords import hash_password
from jdxmail.queue.spool import Spool
from tests.queue.conftest import message


def _refused_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _commands(queue_id: str) -> list[list[str]]:
    port = str(_refused_port())
    return [
        ["validate-config"],
        ["serve", "--port", "0"],  # Enabled is false in the config: exits at once
        ["user", "list"],
        ["user", "add", "n@example.com"],
        ["user", "add", "n@example.com", "--password-stdin"],
        ["user", "passwd", "x@example.com"],
        ["user", "passwd", "x@example.com", "--password-stdin"],
        ["user", "remove", "x@example.com"],
        ["user", "check", "x@example.com"],
        ["user", "check", "x@example.com", "--password-stdin"],
        ["hash-password"],
        ["hash-password", "--stdin"],
        ["hash-password", "--verify", hash_password("pw")],
        ["auth-string", "u@example.com"],
        ["auth-string", "u@example.com", "--password-stdin"],
        ["check-port", "--bind", "127.0.0.1", "--port", port],
        ["test-relay"],
        ["test-relay", "--host", "127.0.0.1", "--port", port, "--user", "u", "--tls", "none"],
        ["test-relay", "--host", "127.0.0.1", "--port", port, "--user", "u", "--password-stdin"],
        ["send-test", "--to", "a@example.com", "--server", f"127.0.0.1:{port}", "--user", "u"],
        ["doctor", "--timeout", "1"],
        ["queue", "list"],
        ["queue", "failed"],
        ["queue", "show", queue_id],
        ["queue", "retry", queue_id],
        ["queue", "delete", queue_id],
        ["queue", "flush"],
    ]


@pytest.fixture
def setup(tmp_path: Path) -> str:
    """A config with one user, the server disabled, and one queued message; its id."""
    spool, mailbox = tmp_path / "spool", tmp_path / "mb"
    config = {
        "SmtpServer": {
            "Enabled": False,
            "Users": [
                {"UserName": "x@example.com", "Password": hash_password("pw"), "HashType": "SHA256"}
            ],
        },
        "Paths": {"Spool": str(spool), "Mailbox": str(mailbox)},
    }
    (tmp_path / "appsettings.json").write_text(json.dumps(config))
    (tmp_path / "appsettings.json").chmod(0o600)

    async def store() -> str:
        async with Spool(spool, mailbox) as opened:
            return await opened.store(message(0))

    return asyncio.run(store())


def _run(args: list[str], cwd: Path, *, closed: bool) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDXMAIL_")}
    command = [sys.executable, "-m", "jdxmail", *args]
    if closed:
        command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
    return subprocess.run(
        command,
        cwd=cwd,
        input=None if closed else b"\xff\xfe\n",
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("closed", [True, False], ids=["stdin-closed", "stdin-not-utf8"])
def test_every_command_with_bad_stdin(closed: bool, setup: str, tmp_path: Path) -> None:
    """Closed or non-UTF-8 stdin never ends in a traceback or an internal error."""
    problems = []
    for args in _commands(setup):
        proc = _run(args, tmp_path, closed=closed)
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode == ExitCode.INTERNAL or "Traceback" in text or "internal error" in text:
            problems.append(f"jdxmail {' '.join(args)}: exit {proc.returncode}: {text[-300:]}")
    assert not problems, "\n".join(problems)
