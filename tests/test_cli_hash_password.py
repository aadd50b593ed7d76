"""`jdxmail hash-password`: output for scripts, --stdin, --type, --verify, a hidden prompt."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import termios
import time

from typer.testing import CliRunner

from tests.conftest import invoke

GUIDE_HASH = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"


def test_prints_only_the_hash(runner: CliRunner) -> None:
    """`jdxmail hash-password password` prints the guide's hash and nothing else on stdout."""
    code, out, _ = invoke(runner, "hash-password", "password")
    assert code == 0
    assert out == GUIDE_HASH + "\n"


def test_stdin_reads_one_line(runner: CliRunner) -> None:
    """--password-stdin takes one line (CRLF or LF stripped), keeping inner spaces."""
    code, out, _ = invoke(
        runner, "hash-password", "--password-stdin", input="password\r\nignored\n"
    )
    assert (code, out.strip()) == (0, GUIDE_HASH)
    _, spaced, _ = invoke(runner, "hash-password", "--password-stdin", input="abcd efgh\n")
    _, direct, _ = invoke(runner, "hash-password", "abcd efgh")
    assert spaced == direct


def test_types(runner: CliRunner) -> None:
    """--type sha512 gives 128 hex digits; --type scrypt a salted self-describing value."""
    _, sha512, _ = invoke(runner, "hash-password", "--type", "sha512", "password")
    assert re.fullmatch(r"[0-9a-f]{128}\n", sha512)
    _, scrypt, _ = invoke(runner, "hash-password", "-t", "SCRYPT", "password")
    assert scrypt.startswith("scrypt:32768:8:1$")
    code, _, err = invoke(runner, "hash-password", "--type", "md5", "password")
    assert code == 2
    assert "md5" in err


def test_verify_match_and_no_match(runner: CliRunner) -> None:
    """--verify exits 0 with "match" for the right password and 1 with "no match" otherwise."""
    code, out, _ = invoke(runner, "hash-password", "password", "--verify", GUIDE_HASH)
    assert (code, out.strip()) == (0, "match")
    code, out, _ = invoke(runner, "hash-password", "wrong", "--verify", GUIDE_HASH)
    assert (code, out.strip()) == (1, "no match")
    _, scrypt, _ = invoke(runner, "hash-password", "-t", "scrypt", "pw")
    code, _, _ = invoke(
        runner, "hash-password", "--password-stdin", "--verify", scrypt.strip(), input="pw\n"
    )
    assert code == 0


def test_verify_rejects_a_value_that_is_no_hash(runner: CliRunner) -> None:
    """--verify with a value that is not a hash says so and exits 2."""
    code, _, err = invoke(runner, "hash-password", "password", "--verify", "password")
    assert code == 2
    assert "not a SHA256, SHA512 or scrypt hash" in err


def test_bad_input(runner: CliRunner) -> None:
    """No password without a terminal, both forms at once, or an empty one: exit 2, no traceback."""
    code, _, err = invoke(runner, "hash-password", input="")
    assert code == 2
    assert "--password-stdin" in err
    code, _, err = invoke(runner, "hash-password", "pw", "--password-stdin", input="pw\n")
    assert code == 2
    assert "not both" in err
    assert "--password-stdin" in err
    code, _, err = invoke(runner, "hash-password", "--password-stdin", input="\n")
    assert code == 2
    assert "empty" in err


def _read_until(fd: int, needle: bytes, limit: float = 10.0) -> bytes:
    seen = b""
    while needle not in seen:
        ready, _, _ = select.select([fd], [], [], limit)
        if not ready:
            raise AssertionError(f"timed out waiting for {needle!r}; got {seen!r}")
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen


def _type_when_hidden(fd: int, text: bytes, limit: float = 10.0) -> None:
    """Write *text* once the terminal's echo is off (the prompt is waiting, hidden)."""
    deadline = time.monotonic() + limit
    while termios.tcgetattr(fd)[3] & termios.ECHO:
        if time.monotonic() > deadline:
            raise AssertionError("the prompt never turned echo off")
        select.select([], [], [], 0.01)
    os.write(fd, text)


def test_prompt_on_a_terminal_hides_and_confirms() -> None:
    """On a TTY it asks twice without echo and prints the hash of what was typed."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jdxmail", "hash-password"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    try:
        _read_until(controller, b"Password:")
        _type_when_hidden(controller, b"password\n")
        _read_until(controller, b"Repeat")
        _type_when_hidden(controller, b"password\n")
        rest = _read_until(controller, GUIDE_HASH.encode())
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        os.close(controller)
    assert b"password\r\n" not in rest.split(GUIDE_HASH.encode())[0]


def test_old_stdin_flag_still_works_and_says_the_new_name(runner: CliRunner) -> None:
    """The old --stdin still reads the password, is hidden from --help and names its successor."""
    code, out, err = invoke(runner, "hash-password", "--stdin", input="password\n")
    assert (code, out.strip()) == (0, GUIDE_HASH)
    assert "--password-stdin" in err
    _, help_text, _ = invoke(runner, "hash-password", "--help")
    assert "--password-stdin" in help_text
    assert "--stdin " not in help_text
