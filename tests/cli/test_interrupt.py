"""Ctrl-C while a command waits on a silent server stops it at once, with what was
learnt so far and exit 130 (issue 17)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jdxmail.cli.exitcodes import ExitCode


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A listening socket that never says anything."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(30)
    try:
        yield listener
    finally:
        listener.close()


def _interrupt_once_connected(args: list[str], listener: socket.socket) -> tuple[int, str, str]:
    """Start ``jdxmail ARGS``, send SIGINT once it has connected to *listener*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDXMAIL_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jdxmail", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    connection, _ = listener.accept()  # the command is now waiting for the banner
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the command did not stop within 5 s of Ctrl-C (its timeout is 20 s)")
    finally:
        connection.close()
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("command", ["test-relay", "send-test"])
@pytest.mark.parametrize("json_output", [False, True])
def test_ctrl_c_stops_a_wait_at_once(
    command: str, json_output: bool, silent_listener: socket.socket
) -> None:
    """SIGINT during a 20 s wait for the banner ends the command well before the
    timeout, with the stages done so far printed and exit 130."""
    port = silent_listener.getsockname()[1]
    if command == "test-relay":
        args = ["test-relay", "--host", "127.0.0.1", "--port", str(port), "--tls", "none"]
    else:
        args = ["send-test", "--to", "a@example.com", "--server", f"127.0.0.1:{port}"]
    args += ["--timeout", "20"] + (["--json"] if json_output else [])
    code, out, err = _interrupt_once_connected(args, silent_listener)
    assert code == ExitCode.INTERRUPTED, (out, err)
    assert "interrupted" in err
    assert "internal error" not in out + err
    assert "Traceback" not in out + err
    if json_output:
        data = json.loads(out)
        assert data["interrupted"] is True
        assert "DNS" in json.dumps(data)
    else:
        assert "DNS" in out
        assert "127.0.0.1 is an IP address" in out


@pytest.mark.parametrize("command", ["check-port", "doctor"])
def test_ctrl_c_stops_check_port_and_doctor(
    command: str, silent_listener: socket.socket, tmp_path: Path
) -> None:
    """check-port --listening and doctor, waiting on a silent server, stop at Ctrl-C
    with a message and exit 130."""
    port = silent_listener.getsockname()[1]
    if command == "check-port":
        args = ["check-port", "--listening", "--bind", "127.0.0.1", "--port", str(port)]
        args += ["--timeout", "20"]
    else:
        config = tmp_path / "appsettings.json"
        config.write_text(
            json.dumps(
                {
                    "SmtpServer": {"Port": port, "TrustedNetworks": ["127.0.0.0/8"]},
                    "RelayServer": {"Host": "127.0.0.1", "Port": port, "UseTls": False},
                }
            )
        )
        args = ["doctor", "--config", str(config), "--timeout", "20"]
    code, out, err = _interrupt_once_connected(args, silent_listener)
    assert code == ExitCode.INTERRUPTED, (out, err)
    assert "interrupted (Ctrl-C)" in err
    assert "Traceback" not in out + err
