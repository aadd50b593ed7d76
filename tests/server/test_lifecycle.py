"""``jdxmail serve`` as a process: startup errors, signals, reload, crash safety."""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jdxmail.server.errors import PortPermissionError, bind_error
from tests.server.conftest import PASSWORD, USER, user_entry

ADDRESS = re.compile(r"listening on smtp://(127\.0\.0\.1|\[::1\]):(\d+)")


class ServeProcess:
    """A ``jdxmail serve`` subprocess and the port it printed."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jdxmail", "serve", "--port", "0", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port = 0
        self.host = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            found = ADDRESS.search(line)
            if found:
                self.host = found.group(1).strip("[]")
                self.port = int(found.group(2))
                break
        if not self.port:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"serve did not start: {err}")

    def wait_for_log(self, text: str) -> str:
        """Read console log lines (stderr) until one contains *text*; return it."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if text in line:
                return line
        raise AssertionError(f"the server ended without logging {text!r}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        """Send *sig*, wait for the exit; return (exit code, rest of stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[ServeProcess]]:
    """Started serve processes, killed at the end of the test if still running."""
    started: list[ServeProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.communicate(timeout=10)


def write_json(path: Path, data: object) -> Path:
    """Write *data* as JSON to *path*."""
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def run_serve(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``jdxmail serve ARGS`` expecting it to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "jdxmail", "serve", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def smtp_client(port: int) -> smtplib.SMTP:
    """An smtplib client connected to the server."""
    return smtplib.SMTP("127.0.0.1", port, timeout=10)


def test_serve_without_config_is_a_dev_inbox(tmp_path: Path, serve: list[ServeProcess]) -> None:
    """With no config file mail to any address lands in a mailbox; SIGINT exits 0."""
    server = ServeProcess(tmp_path)
    serve.append(server)
    with smtp_client(server.port) as client:
        refused = client.sendmail(
            "app@localhost", ["someone@gmail.com"], "Subject: dev\r\n\r\nhi\r\n"
        )
    assert refused == {}
    code, _ = server.stop(signal.SIGINT)
    assert code == 0
    files = list((tmp_path / "data" / "smtp" / "mailbox" / "someone@gmail.com").glob("*.eml"))
    assert len(files) == 1
    log = (tmp_path / "logs" / "jdxmail.log").read_text()
    smtp_lines = [line for line in log.splitlines() if " SMTP " in line]
    assert any("accepted" in line and "someone@gmail.com" in line for line in smtp_lines)
    assert " ERROR " not in log


def test_sigkill_right_after_250_keeps_the_message(
    tmp_path: Path, serve: list[ServeProcess]
) -> None:
    """A message acknowledged with 250 survives SIGKILL and is in the spool after restart."""
    config = write_json(
        tmp_path / "appsettings.json",
        {
            "SmtpServer": {"TrustedNetworks": ["127.0.0.0/8"]},
            "RelayServers": [{"Host": "127.0.0.1", "Port": 9, "UseTls": False}],
        },
    )
    server = ServeProcess(tmp_path, "--config", str(config))
    serve.append(server)
    client = smtp_client(server.port)
    client.ehlo()
    client.mail("app@localhost")
    client.rcpt("far@example.org")
    code, reply = client.data(b"Subject: crash test\r\n\r\nkeep me\r\n")
    assert code == 250
    server.proc.kill()
    server.proc.wait(10)
    client.close()
    queue_id = reply.decode().rsplit(" ", 1)[-1]
    queued = tmp_path / "data" / "smtp" / "spool" / "queue" / f"{queue_id}.msg"
    assert queued.is_file()
    assert b"keep me" in queued.read_bytes()
    restarted = ServeProcess(tmp_path, "--config", str(config))
    serve.append(restarted)
    code, err = restarted.stop()
    assert code == 0
    assert "1 queued" in err + (tmp_path / "logs" / "jdxmail.log").read_text()


def test_sigterm_finishes_the_transaction_in_flight(
    tmp_path: Path, serve: list[ServeProcess]
) -> None:
    """On SIGTERM idle clients get 421 at once; a transaction in flight may finish; exit 0."""
    server = ServeProcess(tmp_path)
    serve.append(server)
    busy = smtp_client(server.port)
    busy.ehlo()
    busy.mail("app@localhost")
    busy.rcpt("dev@localhost")
    idle = smtp_client(server.port)
    idle.ehlo()
    server.proc.send_signal(signal.SIGTERM)
    code, text = idle.getreply()
    assert code == 421
    assert text.startswith(b"4.3.2 ")
    assert text.endswith(b" Service shutting down, try again later")
    code, reply = busy.data(b"Subject: late\r\n\r\nstill accepted\r\n")
    assert code == 250, reply
    assert busy.noop()[0] == 421
    exit_code, err = server.stop()
    assert exit_code == 0
    assert "Traceback" not in err
    assert len(list((tmp_path / "data" / "smtp" / "mailbox" / "dev@localhost").glob("*"))) == 1


def test_sighup_reloads_users_without_dropping_connections(
    tmp_path: Path, serve: list[ServeProcess]
) -> None:
    """After SIGHUP a newly added user can log in on a connection opened before it."""
    config = write_json(
        tmp_path / "appsettings.json", {"SmtpServer": {"Users": [user_entry("old@example.com")]}}
    )
    server = ServeProcess(tmp_path, "--config", str(config))
    serve.append(server)
    client = smtp_client(server.port)
    client.ehlo()
    write_json(config, {"SmtpServer": {"Users": [user_entry(USER)]}})
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("settings reloaded: 1 users")
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert client.docmd("AUTH", f"PLAIN {token}")[0] == 235
    assert client.noop()[0] == 250
    client.quit()
    assert server.stop()[0] == 0


def test_enabled_false_names_the_key_and_line(tmp_path: Path) -> None:
    """Enabled: false stops serve with the key, its line and the fix; no traceback."""
    config = tmp_path / "appsettings.json"
    config.write_text('{\n  "SmtpServer": {\n    "Port": 2525,\n    "Enabled": false\n  }\n}\n')
    result = run_serve(tmp_path, "--config", str(config))
    assert result.returncode == 1
    assert "SmtpServer.Enabled is false" in result.stderr
    assert "line 4" in result.stderr
    assert '"Enabled": true' in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_message(tmp_path: Path) -> None:
    """A taken port gives one message naming the owner and the fix, exit 1, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(tmp_path, "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.stderr
    assert "--port" in result.stderr
    assert "JDX-A1" in result.stderr
    assert f"PID {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_config_is_one_clear_message(tmp_path: Path) -> None:
    """A config that does not parse gives its line and column, exit 2, no traceback."""
    config = tmp_path / "appsettings.json"
    config.write_text('{ "SmtpServer": { "Port": 2525, } ')
    result = run_serve(tmp_path, "--config", str(config))
    assert result.returncode == 2
    assert "appsettings.json:1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_certificate_is_one_clear_message(tmp_path: Path) -> None:
    """A missing CertFile is named with the fix, exit 1."""
    config = write_json(
        tmp_path / "appsettings.json",
        {"SmtpServer": {"Tls": {"CertFile": "nope.pem", "KeyFile": "nope.key"}}},
    )
    result = run_serve(tmp_path, "--config", str(config))
    assert result.returncode == 1
    assert "SmtpServer.Tls.CertFile" in result.stderr
    assert "--self-signed" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_bind_option_is_refused(tmp_path: Path) -> None:
    """--bind with something that is not an address is a usage error."""
    result = run_serve(tmp_path, "--bind", "my-laptop")
    assert result.returncode == 2
    assert "--bind 'my-laptop' is not an IP address" in result.stderr


def test_empty_bind_option_is_refused_with_the_choices(tmp_path: Path) -> None:
    """--bind "" is refused (exit 2) and names 127.0.0.1 and 0.0.0.0, not silently every interface."""
    result = run_serve(tmp_path, "--bind", "")
    assert result.returncode == 2
    assert "--bind is empty" in result.stderr
    assert "127.0.0.1" in result.stderr
    assert "0.0.0.0" in result.stderr


def test_privileged_port_error_explains_the_three_fixes() -> None:
    """EACCES on a port below 1024 names setcap, AmbientCapabilities and port 2525."""
    error = bind_error(OSError(errno.EACCES, "Permission denied"), "0.0.0.0", 25)
    assert isinstance(error, PortPermissionError)
    assert error.row == "A2"
    assert "ports below 1024 need privileges" in str(error)
    assert "setcap 'cap_net_bind_service=+ep'" in error.fix
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in error.fix
    assert "--port 2525" in error.fix


def test_bind_option_overrides_the_config(tmp_path: Path, serve: list[ServeProcess]) -> None:
    """--bind ::1 listens on IPv6 loopback, where IPv6 clients can send."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    server = ServeProcess(tmp_path, "--bind", "::1")
    serve.append(server)
    assert server.host == "::1"
    with smtplib.SMTP("::1", server.port, timeout=10) as client:
        assert client.noop()[0] == 250
    assert server.stop()[0] == 0


def test_self_signed_option_serves_starttls(tmp_path: Path, serve: list[ServeProcess]) -> None:
    """--self-signed prints the certificate to trust; smtplib verifies it over STARTTLS."""
    import ssl

    server = ServeProcess(tmp_path, "--self-signed")
    serve.append(server)
    cert = tmp_path / "data" / "smtp" / "tls" / "selfsigned-cert.pem"
    context = ssl.create_default_context(cafile=str(cert))
    with smtplib.SMTP("localhost", server.port, timeout=10) as client:
        client.starttls(context=context)
        assert client.ehlo()[0] == 250
        assert client.sendmail("a@localhost", ["b@localhost"], "Subject: tls\r\n\r\nx\r\n") == {}
    assert server.proc.stdout is not None
    server.proc.send_signal(signal.SIGTERM)
    out = server.proc.stdout.read()
    assert server.proc.wait(30) == 0
    assert f"STARTTLS with the self-signed dev certificate {cert}" in out
    assert f"--cacert {cert} smtp://localhost:{server.port} " in out
    assert "PORT" not in out


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("Spool", "cannot create the spool directories"),
        ("Logs", "cannot write the log file"),
    ],
)
def test_unusable_folder_is_one_clear_message(tmp_path: Path, key: str, message: str) -> None:
    """A spool or log folder that cannot be made is named, exit 1, no traceback."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    config = write_json(
        tmp_path / "appsettings.json", {"Paths": {key: str(tmp_path / "blocker" / "sub")}}
    )
    result = run_serve(tmp_path, "--config", str(config), "--port", "0")
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert f"Paths.{key}" in result.stderr
    assert "Traceback" not in result.stderr


_AS_NOBODY = """
import asyncio, os, sys
from jdxmail.server.app import SmtpServerApp
from jdxmail.server.errors import ServerError
from jdxmail.settings.model import Settings

class Store:
    async def store(self, message):
        return "unused"

settings = Settings.model_validate({"SmtpServer": {"Port": 25, "BindAddress": "127.0.0.1"}})
app = SmtpServerApp(settings, store=Store())
os.setgid(65534)
os.setuid(65534)
try:
    asyncio.run(app.start())
except ServerError as exc:
    print(f"{exc}|{exc.fix}|{exc.row}")
    sys.exit(1)
"""


@pytest.mark.skipif(not hasattr(os, "setuid") or os.geteuid() != 0, reason="needs root")
def test_privileged_port_as_an_unprivileged_user() -> None:
    """Binding port 25 as uid 65534 gives the A2 message with its fixes."""
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= 25:
        pytest.skip("this host lets every user bind port 25")
    done = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    message, fix, row = done.stdout.strip().split("|")
    assert message == "cannot listen on 127.0.0.1:25: ports below 1024 need privileges"
    assert "cap_net_bind_service" in fix
    assert row == "A2"
