"""serve reloads its config when the file changes, and `jdxmail user add|remove` say
whether the running server picked the change up (issue 17)."""

from __future__ import annotations

import base64
import os
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import PASSWORD, USER, user_entry
from tests.server.test_lifecycle import ServeProcess, write_json

NEW_USER = "new@example.com"
NEW_PASSWORD = "fresh-secret"


@pytest.fixture
def serve() -> Iterator[list[ServeProcess]]:
    """Started serve processes, killed at the end of the test if still running."""
    started: list[ServeProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.communicate(timeout=10)


def jdxmail(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``jdxmail ARGS`` to the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDXMAIL_")}
    return subprocess.run(
        [sys.executable, "-m", "jdxmail", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def auth_code(port: int, user: str, password: str) -> int:
    """The reply code of AUTH PLAIN as *user* on a new connection."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return int(client.docmd("AUTH", f"PLAIN {token}")[0])


def test_user_added_while_serve_runs_can_log_in(tmp_path: Path, serve: list[ServeProcess]) -> None:
    """`user add` while serve runs: the command says the server loaded it, the new user
    logs in without SIGHUP, the log says what changed; `user remove` likewise."""
    config = write_json(
        tmp_path / "appsettings.json", {"SmtpServer": {"Users": [user_entry(USER)]}}
    )
    server = ServeProcess(tmp_path, "--config", str(config), "--delivery", "inline")
    serve.append(server)
    assert auth_code(server.port, NEW_USER, NEW_PASSWORD) == 535

    added = jdxmail(
        tmp_path,
        "user",
        "add",
        NEW_USER,
        "--config",
        str(config),
        "--password-stdin",
        stdin=NEW_PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert f"the running server (PID {server.proc.pid}) loaded the change" in added.stderr
    assert "users added: new@example.com" in server.wait_for_log("config change:")
    assert auth_code(server.port, NEW_USER, NEW_PASSWORD) == 235
    assert auth_code(server.port, USER, PASSWORD) == 235

    removed = jdxmail(tmp_path, "user", "remove", NEW_USER, "--config", str(config), "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "loaded the change" in removed.stderr
    assert auth_code(server.port, NEW_USER, NEW_PASSWORD) == 535
    assert server.stop()[0] == 0


def test_edit_without_a_running_server_says_so(tmp_path: Path) -> None:
    """With no serve running this config, `user add` says the change applies at start."""
    config = write_json(tmp_path / "appsettings.json", {"SmtpServer": {"Users": []}})
    added = jdxmail(
        tmp_path,
        "user",
        "add",
        NEW_USER,
        "--config",
        str(config),
        "--password-stdin",
        stdin=NEW_PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert "no running `jdxmail serve` uses this config" in added.stderr


def test_serve_notices_a_hand_edit(tmp_path: Path, serve: list[ServeProcess]) -> None:
    """A config rewritten by hand (no jdxmail command, no SIGHUP) is reloaded by serve."""
    config = write_json(tmp_path / "appsettings.json", {"SmtpServer": {"Users": []}})
    server = ServeProcess(tmp_path, "--config", str(config), "--delivery", "inline")
    serve.append(server)
    write_json(config, {"SmtpServer": {"Users": [user_entry(USER)]}})
    assert "changed on disk" in server.wait_for_log("changed on disk")
    server.wait_for_log("settings reloaded: 1 users")
    assert auth_code(server.port, USER, PASSWORD) == 235
    assert server.stop()[0] == 0
