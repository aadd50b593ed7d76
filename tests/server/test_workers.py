"""``serve --workers N``: several processes share the port and the spool."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import psutil

from tests.server.test_lifecycle import ServeProcess, run_serve, serve, smtp_client

__all__ = ["serve"]  # the fixture, shared with test_lifecycle

MESSAGE_ID = re.compile(r"(?im)^Message-ID: <[0-9]+\.[0-9a-f]{8}([0-9a-f]+)\.[0-9]+@")


def test_two_workers_both_accept_mail_and_sigterm_stops_all(
    tmp_path: Path, serve: list[ServeProcess]
) -> None:
    """With --workers 2 both processes take mail on one port; SIGTERM ends all, exit 0."""
    server = ServeProcess(tmp_path, "--workers", "2")
    serve.append(server)
    workers = psutil.Process(server.proc.pid).children()
    assert len(workers) == 2
    pids = {f"{worker.pid:x}" for worker in workers}
    mailbox = tmp_path / "data" / "smtp" / "mailbox" / "someone@example.org"
    seen: set[str] = set()
    for number in range(200):  # the kernel spreads connections by a hash of the port
        with smtp_client(server.port) as client:
            client.sendmail(
                "app@localhost", ["someone@example.org"], f"Subject: {number}\r\n\r\nhi\r\n"
            )
        seen = {
            found.group(1)
            for path in mailbox.glob("*.eml")
            if (found := MESSAGE_ID.search(path.read_text()))
        }
        if seen >= pids:
            break
    assert seen == pids
    code, _ = server.stop(signal.SIGTERM)
    assert code == 0
    assert not any(worker.is_running() and worker.status() != "zombie" for worker in workers)


def test_sighup_reaches_every_worker(tmp_path: Path, serve: list[ServeProcess]) -> None:
    """SIGHUP to serve makes each worker reload its settings."""
    config = tmp_path / "appsettings.json"
    config.write_text('{"SmtpServer": {"TrustedNetworks": ["127.0.0.0/8"]}}', encoding="utf-8")
    server = ServeProcess(tmp_path, "--config", str(config), "--workers", "2")
    serve.append(server)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("settings reloaded")
    server.wait_for_log("settings reloaded")
    code, _ = server.stop()
    assert code == 0


def test_busy_port_is_one_clear_error(tmp_path: Path) -> None:
    """A port in use is reported once, with the fix, before any worker starts."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_serve(tmp_path, "--port", str(port), "--workers", "2")
    assert result.returncode == 1
    assert result.stderr.count("error:") == 1
    assert "already in use" in result.stderr
    assert "fix:" in result.stderr


def test_worker_startup_error_is_printed_once(tmp_path: Path) -> None:
    """An error found while a worker starts (TLS port without certificate) shows once."""
    result = run_serve(tmp_path, "--port", "0", "--tls-port", "0", "--workers", "2")
    assert result.returncode == 1
    assert result.stderr.count("error:") == 1
    assert "ImplicitTlsPort needs a certificate" in result.stderr
    assert "listening on" not in result.stdout
