"""``serve --loop``: asyncio's loop or uvloop, the same in every process of one serve."""

from __future__ import annotations

import base64
import logging
import re
import signal
import socket
import ssl
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

import jdxmail.web
from jdxmail.eventloop import LoopChoice, LoopUnavailableError, resolve
from tests.conftest import BOTH_LOOPS, HAVE_UVLOOP, invoke
from tests.server.conftest import PASSWORD, USER, StartServer, user_entry
from tests.server.test_lifecycle import ServeProcess, serve, smtp_client, write_json

__all__ = ["serve"]  # the fixture, shared with test_lifecycle

STATIC = Path(jdxmail.web.__file__).parent / "static"
CONSOLE_URL = re.compile(r"web console on (http://127\.0\.0\.1:\d+)/")
PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()

both = pytest.mark.parametrize(
    "loop",
    [
        "asyncio",
        pytest.param(
            "uvloop",
            marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed"),
        ),
    ],
)


def _reply(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """Read one whole SMTP reply (possibly multi-line) from a blocking socket."""
    data = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


@BOTH_LOOPS
async def test_the_log_names_the_loop_that_runs(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server logs one line saying which event loop it runs on."""
    import asyncio

    caplog.set_level(logging.INFO, logger="jdxmail.smtp")
    await start_server()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event loop:")]
    assert len(lines) == 1
    running = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else ""
    assert lines[0].startswith("event loop: uvloop " if running else "event loop: asyncio (")


@both
def test_serve_on_each_loop_starttls_auth_console_reload_and_stop(
    tmp_path: Path, serve: list[ServeProcess], loop: str
) -> None:
    """On either loop: STARTTLS drops pipelined plaintext, AUTH works, mail is stored, the
    console answers, SIGHUP reloads and SIGTERM stops with exit 0."""
    config = write_json(tmp_path / "appsettings.json", {"SmtpServer": {"Users": [user_entry()]}})
    server = ServeProcess(
        tmp_path, "--config", str(config), "--self-signed", "--web-port", "0", "--loop", loop
    )
    serve.append(server)
    assert f"event loop: {loop} " in server.wait_for_log("event loop:")
    assert server.proc.stdout is not None
    url = next(found.group(1) for line in server.proc.stdout if (found := CONSOLE_URL.search(line)))
    cert = tmp_path / "data" / "smtp" / "tls" / "selfsigned-cert.pem"
    context = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        assert _reply(raw).startswith(b"220 ")
        raw.sendall(b"EHLO client.test\r\n")
        assert b"STARTTLS" in _reply(raw)
        # the injection: plaintext commands in the same packet as STARTTLS
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\nRCPT TO:<x@localhost>\r\n")
        assert _reply(raw).startswith(b"220 2.0.0 Ready to start TLS")
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"EHLO client.test\r\n")
            assert b"AUTH PLAIN LOGIN" in _reply(tls)
            tls.sendall(b"RCPT TO:<x@localhost>\r\n")
            assert _reply(tls) == b"503 5.5.1 Send MAIL first\r\n"  # the injected MAIL never ran
            tls.sendall(f"AUTH PLAIN {PLAIN}\r\n".encode())
            assert _reply(tls).startswith(b"235 ")
            for command, expected in (
                (b"MAIL FROM:<me@localhost>", b"250 "),
                (b"RCPT TO:<bob@localhost>", b"250 "),
                (b"DATA", b"354 "),
            ):
                tls.sendall(command + b"\r\n")
                assert _reply(tls).startswith(expected)
            tls.sendall(f"Subject: on {loop}\r\n\r\nhello\r\n.\r\n".encode())
            assert _reply(tls).startswith(b"250 ")
    stored = list((tmp_path / "data" / "smtp" / "mailbox" / "bob@localhost").glob("*.eml"))
    assert len(stored) == 1
    assert f"Subject: on {loop}" in stored[0].read_text()
    answer = httpx.get(url + "/", timeout=10)
    assert answer.status_code == 200
    assert "Dashboard" in answer.text
    # a static file: Starlette's FileResponse (no loop.sendfile, which uvloop lacks)
    static = httpx.get(url + "/static/console.css", timeout=10)
    assert static.status_code == 200
    assert static.content == (STATIC / "console.css").read_bytes()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("settings reloaded: 1 users")
    code, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err


@both
def test_workers_run_the_chosen_loop(tmp_path: Path, serve: list[ServeProcess], loop: str) -> None:
    """With --workers 2 each worker runs the loop asked for, takes mail, and SIGTERM ends all."""
    server = ServeProcess(tmp_path, "--workers", "2", "--no-web", "--loop", loop)
    serve.append(server)
    workers = psutil.Process(server.proc.pid).children()
    assert len(workers) == 2
    assert f"event loop: {loop} " in server.wait_for_log("event loop:")
    assert f"event loop: {loop} " in server.wait_for_log("event loop:")
    for number in range(4):
        with smtp_client(server.port) as client:
            client.sendmail("a@localhost", ["bob@localhost"], f"Subject: {number}\r\n\r\nx\r\n")
    mailbox = tmp_path / "data" / "smtp" / "mailbox" / "bob@localhost"
    assert len(list(mailbox.glob("*.eml"))) == 4
    code, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err


def test_loop_uvloop_without_uvloop_is_a_clear_error(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --loop uvloop` where uvloop cannot be imported: one message, the fix, exit 2."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    code, out, err = invoke(runner, "serve", "--port", "0", "--loop", "uvloop")
    assert code == 2
    assert "uvloop is not installed" in err
    assert "pip install 'jdxmail[fast]'" in err
    assert "Traceback" not in out + err


def test_loop_from_the_environment(
    tmp_path: Path, serve: list[ServeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """JDXMAIL_LOOP=asyncio chooses the loop as --loop asyncio would (a benchmark's switch)."""
    monkeypatch.setenv("JDXMAIL_LOOP", "asyncio")
    server = ServeProcess(tmp_path, "--no-web")
    serve.append(server)
    assert "event loop: asyncio " in server.wait_for_log("event loop:")
    assert server.stop()[0] == 0


def test_unknown_loop_is_refused_with_the_choices(runner: CliRunner) -> None:
    """`serve --loop trio` is refused with the three choices, exit 2."""
    code, _, err = invoke(runner, "serve", "--port", "0", "--loop", "trio")
    assert code == 2
    for choice in ("auto", "asyncio", "uvloop"):
        assert choice in err


def test_auto_without_uvloop_is_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    """--loop auto falls back to asyncio's loop where uvloop cannot be imported."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert resolve(LoopChoice.AUTO) is LoopChoice.ASYNCIO
    with pytest.raises(LoopUnavailableError):
        resolve(LoopChoice.UVLOOP)
