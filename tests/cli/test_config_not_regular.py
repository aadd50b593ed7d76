"""A config path that is a FIFO, a device or a socket is refused at once by every
command, instead of hanging on the read (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jdxmail.cli.exitcodes import ExitCode

COMMANDS = [
    ["validate-config"],
    ["serve"],
    ["user", "list"],
    ["user", "add", "a@example.com", "--password-stdin"],
    ["user", "remove", "a@example.com", "--yes"],
    ["check-port"],
    ["test-relay"],
    ["send-test", "--to", "a@example.com"],
    ["doctor"],
    ["queue", "list"],
]


def _run(args: list[str], config: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDXMAIL_")}
    if config is not None:
        env["JDXMAIL_CONFIG"] = config
    return subprocess.run(
        [sys.executable, "-m", "jdxmail", *args],
        input="pw\n",
        capture_output=True,
        text=True,
        timeout=15,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_fifo_config_is_refused(args: list[str], tmp_path: Path) -> None:
    """Every command refuses a FIFO as config with a message saying what it is."""
    fifo = tmp_path / "appsettings.json"
    os.mkfifo(fifo)
    try:
        proc = _run(args, str(fifo))
    except subprocess.TimeoutExpired:
        pytest.fail(f"`jdxmail {' '.join(args)}` hung reading the FIFO")
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, ExitCode.INTERNAL), out
    assert "is a FIFO" in out, out
    assert "internal error" not in out


def test_fifo_found_by_default_lookup_is_refused(tmp_path: Path) -> None:
    """A FIFO named appsettings.json in the folder is reported, not silently skipped."""
    os.mkfifo(tmp_path / "appsettings.json")
    proc = _run(["validate-config"], None)
    assert proc.returncode == ExitCode.USAGE
    assert "is a FIFO" in proc.stderr


def test_device_config_is_refused() -> None:
    """A character device (/dev/zero would never end) is refused as not a regular file."""
    proc = _run(["validate-config", "--config", "/dev/zero"], None)
    assert proc.returncode == ExitCode.USAGE
    assert "is a character device" in proc.stderr
