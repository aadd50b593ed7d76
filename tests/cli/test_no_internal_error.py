"""Edge input that users reach every day — closed or non-UTF-8 stdin, absurd numbers,
control characters — gets a clear message and a non-zero exit, never "internal error"
(issue 17)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jdxmail.cli.exitcodes import ExitCode
from tests.conftest import WriteConfig

GUIDE_HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
ONE_USER = (
    '{"SmtpServer": {"Users": [{"UserName": "x@example.com", "Password": "'
    + GUIDE_HASH
    + '", "HashType": "SHA256"}]}}'
)


def run(*args: str, stdin: bytes | None = None, closed: bool = False) -> tuple[int, str, str]:
    """Run a real ``jdxmail ARGS`` (stdin closed, or fed *stdin*) → (code, stdout, stderr)."""
    command = [sys.executable, "-m", "jdxmail", *args]
    if closed:
        command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
    proc = subprocess.run(
        command,
        input=stdin,
        stdin=None if closed or stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return (
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def assert_clear(code: int, out: str, err: str) -> None:
    """A usage-style failure with a message, not a bug report or a traceback."""
    assert code not in (0, int(ExitCode.INTERNAL)), (code, out, err)
    assert "internal error" not in out + err
    assert "Traceback" not in out + err
    assert "error:" in err, err


CLOSED_STDIN = [
    ("hash-password",),
    ("hash-password", "--stdin"),
    ("user", "add", "new@example.com", "--password-stdin"),
    ("user", "add", "new@example.com"),
    ("user", "passwd", "x@example.com", "--password-stdin"),
    ("user", "remove", "x@example.com"),
    ("user", "check", "x@example.com", "--password-stdin"),
    ("auth-string", "u@example.com"),
    ("auth-string", "u@example.com", "--password-stdin"),
]


@pytest.mark.parametrize("args", CLOSED_STDIN, ids=" ".join)
def test_closed_stdin_is_explained(args: tuple[str, ...], write_config: WriteConfig) -> None:
    """With stdin closed (`<&-`), a command that needs it says so and exits 2."""
    write_config(ONE_USER)
    code, out, err = run(*args, closed=True)
    assert_clear(code, out, err)
    assert code == ExitCode.USAGE
    assert "stdin" in err
    assert "x@example.com" in Path("appsettings.json").read_text()


@pytest.mark.parametrize(
    "args",
    [
        ("hash-password", "--stdin"),
        ("auth-string", "u@example.com", "--password-stdin"),
        ("user", "add", "new@example.com", "--password-stdin"),
    ],
    ids=" ".join,
)
def test_non_utf8_stdin_is_explained(args: tuple[str, ...], write_config: WriteConfig) -> None:
    """A password line that is not UTF-8 is refused as such, and nothing is written."""
    write_config(ONE_USER)
    code, out, err = run(*args, stdin=b"\xff\xfe\n")
    assert_clear(code, out, err)
    assert code == ExitCode.USAGE
    assert "UTF-8" in err
    assert "new@example.com" not in Path("appsettings.json").read_text()


@pytest.mark.parametrize("name", ["appsettings.json", "jdxmail.toml"])
@pytest.mark.parametrize("command", ["validate-config", "serve"])
def test_huge_port_number(command: str, name: str, write_config: WriteConfig) -> None:
    """A 5,000-digit Port is a parse error at its line, not a crash."""
    digits = "9" * 5000
    if name.endswith(".toml"):
        text = f"[SmtpServer]\nPort = {digits}\n"
    else:
        text = f'{{\n  "SmtpServer": {{\n    "Port": {digits}\n  }}\n}}\n'
    path = write_config(text, name=name)
    code, out, err = run(command, "--config", str(path))
    assert code == ExitCode.USAGE, (out, err)
    assert "internal error" not in out + err
    assert f"{path}:" in err
    assert ":3:" in err or ":2:" in err


def _silent_listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    return listener


def _no_connection(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--from", "a@b\r\nRSET"),
        ("--to", "c@d\r\nRSET"),
        ("--from", "a@b\nRSET"),
        ("--to", "c@d\x1b[2J"),
        ("--user", "u\r\nQUIT"),
    ],
)
@pytest.mark.parametrize("command", ["test-relay", "send-test"])
def test_control_characters_refused_before_connecting(command: str, flag: str, value: str) -> None:
    """CR/LF or another control character in an address or name is refused before any
    connection is made, so nothing of it reaches the wire."""
    listener = _silent_listener()
    port = str(listener.getsockname()[1])
    args = {"--from": "a@example.com", "--to": "c@example.com"}
    args[flag] = value
    if command == "test-relay":
        base = ["test-relay", "--host", "127.0.0.1", "--port", port, "--tls", "none", "--send"]
    else:
        base = ["send-test", "--server", f"127.0.0.1:{port}", "--tls", "none"]
    flat = [item for pair in args.items() for item in pair]
    code, out, err = run(*base, *flat, "--timeout", "1", stdin=b"pw\n")
    try:
        assert_clear(code, out, err)
        assert code == ExitCode.USAGE
        assert flag in err
        assert "control character" in err
        assert _no_connection(listener)
    finally:
        listener.close()


@pytest.mark.parametrize(
    "args",
    [
        ("test-relay", "--host", "127.0.0.1\r\n", "--port", "1"),
        ("test-relay", "--provider", "gmail\n"),
        ("send-test", "--to", "a@b", "--server", "127.0.0.1\n:1"),
        ("user", "add", "evil\r\n@example.com", "--password-stdin"),
        ("auth-string", "u\tser", "--password-stdin"),
        ("check-port", "--bind", "127.0.0.1\n", "--port", "2525"),
    ],
    ids=lambda a: a[0],
)
def test_control_characters_in_hosts_and_names(args: tuple[str, ...]) -> None:
    """Hosts, providers and user names with control characters are refused as such."""
    code, out, err = run(*args, stdin=b"pw\n")
    assert_clear(code, out, err)
    assert code in (ExitCode.USAGE, 3)
    assert "control character" in err
    assert not Path("appsettings.json").exists()
