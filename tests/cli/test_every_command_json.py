"""Every command that takes --json prints one JSON document on stdout, its errors included.

A table of real ``jdxmail`` processes: each command on an error path (a missing or bad
config, bad arguments, a server that refuses, stdin closed or not UTF-8 where a password
is read). Scripts parse stdout; a plain-text error there, a traceback or an "internal
error" would break them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from subprocess import CompletedProcess, run
from typing import NamedTuple

import pytest
import typer.main

from jdxmail.cli.app import app
from jdxmail.cli.exitcodes import ExitCode, PortExit, RelayExit

JDXMAIL = str(Path(sys.executable).with_name("jdxmail"))


def _refused_port() -> int:
    """A loopback port nothing listens on (bound, never listening, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


REFUSED = str(_refused_port())


class Row(NamedTuple):
    """One command line, what is on its stdin, and the exit code it must end with."""

    args: tuple[str, ...]
    code: int
    stdin: str = "empty"  # empty, closed or latin1


ROWS = {
    "validate-config, missing file": Row(("validate-config", "-c", "gone.json"), ExitCode.USAGE),
    "validate-config, parse error": Row(("validate-config", "-c", "broken.json"), ExitCode.USAGE),
    "validate-config, bad option": Row(("validate-config", "--bogus"), ExitCode.USAGE),
    "check-port, missing config": Row(("check-port", "-c", "gone.json"), PortExit.OTHER),
    "check-port, port 0": Row(("check-port", "--port", "0"), PortExit.OTHER),
    "check-port, nothing answers": Row(
        ("check-port", "--listening", "--bind", "127.0.0.1", "-p", REFUSED), PortExit.OTHER
    ),
    "test-relay, no relay in config": Row(("test-relay", "-c", "norelay.json"), ExitCode.USAGE),
    "test-relay, bad port in host": Row(("test-relay", "--host", "127.0.0.1:x"), ExitCode.USAGE),
    "test-relay, --send without --from": Row(
        ("test-relay", "--host", "127.0.0.1", "--send", "--to", "a@example.com"), ExitCode.USAGE
    ),
    "test-relay, refused": Row(
        ("test-relay", "--host", f"127.0.0.1:{REFUSED}", "--tls", "none"), RelayExit.CONNECT
    ),
    "test-relay, password from closed stdin": Row(
        ("test-relay", "--host", f"127.0.0.1:{REFUSED}", "-u", "u", "--password-stdin"),
        ExitCode.USAGE,
        "closed",
    ),
    "test-relay, password not UTF-8": Row(
        ("test-relay", "--host", f"127.0.0.1:{REFUSED}", "-u", "u", "--password-stdin"),
        ExitCode.USAGE,
        "latin1",
    ),
    "send-test, no --to": Row(("send-test",), ExitCode.USAGE),
    "send-test, missing config": Row(
        ("send-test", "--to", "a@example.com", "-c", "gone.json"), ExitCode.USAGE
    ),
    "send-test, refused": Row(
        ("send-test", "--to", "a@example.com", "--host", f"127.0.0.1:{REFUSED}"), RelayExit.CONNECT
    ),
    "auth-string, no user": Row(("auth-string",), ExitCode.USAGE),
    "auth-string, stdin not a terminal": Row(("auth-string", "u"), ExitCode.USAGE),
    "auth-string, stdin closed": Row(
        ("auth-string", "u", "--password-stdin"), ExitCode.USAGE, "closed"
    ),
    "auth-string, stdin not UTF-8": Row(
        ("auth-string", "u", "--password-stdin"), ExitCode.USAGE, "latin1"
    ),
    "doctor, missing config": Row(("doctor", "-c", "gone.json"), ExitCode.FAILED),
    "user list, missing config": Row(("user", "list", "-c", "gone.json"), ExitCode.USAGE),
    "user list, invalid config": Row(("user", "list", "-c", "invalid.json"), ExitCode.FAILED),
    "queue list, missing config": Row(("queue", "list", "-c", "gone.json"), ExitCode.USAGE),
    "queue list, bad option": Row(("queue", "list", "--bogus"), ExitCode.USAGE),
    "queue failed, invalid config": Row(("queue", "failed", "-c", "invalid.json"), ExitCode.FAILED),
    "queue show, no such id": Row(("queue", "show", "nope"), ExitCode.FAILED),
}

#: rows that fail on this branch for a reason the "cli" helper fixes (closed or non-UTF-8
#: stdin crashing the password reader): remove once both branches are merged
BAD_STDIN = "closed / non-UTF-8 stdin is the cli helper's fix (issue 17); remove after merging"
NEEDS_STDIN_FIX = {
    "test-relay, password from closed stdin",
    "test-relay, password not UTF-8",
    "auth-string, stdin closed",
    "auth-string, stdin not UTF-8",
}


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A folder with the configs the rows name: none, broken, invalid, without relays."""
    (tmp_path / "broken.json").write_text("{ not json")
    (tmp_path / "invalid.json").write_text('{"SmtpServer": {"Port": "x"}}')
    (tmp_path / "norelay.json").write_text('{"SmtpServer": {"Port": 2525}}')
    here = {"Paths": {"Spool": str(tmp_path / "spool"), "Mailbox": str(tmp_path / "mb")}}
    (tmp_path / "appsettings.json").write_text(json.dumps(here))
    for path in tmp_path.glob("*.json"):
        path.chmod(0o600)
    return tmp_path


def _jdxmail(args: tuple[str, ...], cwd: Path, stdin: str) -> CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDXMAIL_")}
    command = [JDXMAIL, *args]
    if stdin == "closed":
        command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
    return run(
        command,
        cwd=cwd,
        input=b"\xff\xfe\n" if stdin == "latin1" else b"",
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=BAD_STDIN, strict=True))
        if n in NEEDS_STDIN_FIX
        else n
        for n in ROWS
    ],
)
def test_json_errors_are_one_document(name: str, configs: Path) -> None:
    """With --json, stdout parses as one JSON document; no traceback, no internal error."""
    row = ROWS[name]
    proc = _jdxmail((*row.args, "--json"), configs, row.stdin)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr
    assert "internal error" not in stderr
    document = json.loads(proc.stdout)  # one document: trailing text would not parse
    assert proc.returncode == row.code, (proc.returncode, proc.stdout, stderr)
    if isinstance(document, dict) and "exit_code" in document:
        assert document["exit_code"] == proc.returncode
    if isinstance(document, dict) and "error" in document:
        assert document["ok"] is False
        assert document["error"]


def test_every_json_command_is_in_the_table() -> None:
    """Each command that takes --json has at least one row (a new one must be added here)."""

    def walk(command: object, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            return [p for name, sub in subcommands.items() for p in walk(sub, (*path, name))]
        params = getattr(command, "params", [])
        takes_json = any("--json" in getattr(p, "opts", ()) for p in params)
        return [path] if takes_json else []

    with_json = {" ".join(p) for p in walk(typer.main.get_command(app), ())}
    covered = {
        " ".join(row.args[:2]) if row.args[0] in ("user", "queue") else row.args[0]
        for row in ROWS.values()
    }
    assert with_json <= covered
