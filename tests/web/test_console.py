"""The console as a serve component: it starts, answers, shows the nav, stops."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.web.conftest import Console, MakeConsole
from tests.web.test_security import ADMIN, ADMIN_PASSWORD, users_config

NAV = ["Dashboard", "Inbox", "Queue", "Users", "Settings", "Backup", "Logs", "Diagnostics"]
CONSOLE_URL = re.compile(r"web console on (http://127\.0\.0\.1:\d+)/")


def test_serve_without_config_prints_the_console_url_and_serves_it(tmp_path: Path) -> None:
    """`jdxmail serve` with no config prints the console URL and `/` answers 200 there."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "jdxmail", "serve", "--port", "0", "--web-port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if found := CONSOLE_URL.search(line):
                url = found.group(1)
                break
        assert url, "serve printed no console URL"
        answer = httpx.get(url + "/", timeout=10)
        assert answer.status_code == 200
        assert "Dashboard" in answer.text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


async def test_home_page_has_the_nav_bar(console: Console, http: httpx.AsyncClient) -> None:
    """`/` is a page with every area in its navigation bar, Dashboard marked current."""
    answer = await http.get("/")
    assert answer.status_code == 200
    for label in NAV:
        assert f">{label}</a>" in answer.text
    assert re.search(r'href="/" class="active" aria-current="page"', answer.text)


async def test_page_loads_in_chromium_with_no_console_errors(console: Console, page: Any) -> None:
    """In a real browser the page loads its CSS and JS under the CSP and goes live."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(console.url + "/")
    assert await page.title() == "Dashboard · jdxmail"
    assert await page.evaluate("typeof window.JDX.api") == "function"
    await page.wait_for_selector("#jdx-live.on")
    nav = await page.locator("nav a").all_inner_texts()
    assert nav == NAV
    await page.screenshot(path=str(console.tmp / "base.png"), full_page=True)
    assert errors == []


async def test_jdx_api_sends_the_token_and_reports_server_errors(
    area_console: Console, page: Any
) -> None:
    """In chromium JDX.api's POST passes the CSRF check, a bare fetch POST does not, and
    an API error surfaces as the server's message."""
    await page.goto(area_console.url + "/")
    bare = await page.evaluate(
        "fetch('/api/v1/test/echo', {method: 'POST', body: '{}'}).then(r => r.status)"
    )
    assert bare == 403
    echoed = await page.evaluate(
        "JDX.api('POST', '/api/v1/test/echo', {a: 1}).then(d => d.a, e => e.message)"
    )
    assert echoed == 1
    error = await page.evaluate(
        "JDX.api('GET', '/api/v1/no-such').then(() => null, e => [e.message, e.fix, e.status])"
    )
    assert error == ["no such API resource: /api/v1/no-such", "docs/api.md lists them", 404]


async def test_toast_shows_a_message(console: Console, page: Any) -> None:
    """JDX.toast puts a visible message on the page."""
    await page.goto(console.url + "/")
    await page.evaluate("JDX.toast('Saved', 'ok')")
    toast = page.locator("#jdx-toasts .toast.ok")
    assert await toast.inner_text() == "Saved"


async def test_login_and_logout_in_chromium(make_console: MakeConsole, page: Any) -> None:
    """With console users a browser is sent to the login form, gets in, and logs out."""
    console = await make_console(users_config())
    await page.goto(console.url + "/")
    assert "/login" in page.url
    await page.fill("input[name=username]", ADMIN)
    await page.fill("input[name=password]", ADMIN_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#jdx-live.on")
    assert await page.locator(".who").inner_text() == ADMIN
    await page.click(".logout button")
    await page.wait_for_selector("input[name=username]")
    assert "/login" in page.url


def _serve_lines(cwd: Path, *args: str) -> tuple[list[str], subprocess.Popen[str]]:
    """Start `jdxmail serve --port 0 ARGS`; return its start-up lines (up to the config
    line) and the process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "jdxmail", "serve", "--port", "0", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "jdxmail serve: config " in line:
            break
    return lines, proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def test_workers_run_one_console(tmp_path: Path) -> None:
    """With --workers 2 serve prints one console URL, and the console answers."""
    lines, proc = _serve_lines(tmp_path, "--workers", "2", "--web-port", "0")
    try:
        urls = [found.group(1) for line in lines if (found := CONSOLE_URL.search(line))]
        assert len(urls) == 1, lines
        assert httpx.get(urls[0] + "/", timeout=10).status_code == 200
    finally:
        err = _stop(proc)
    assert "Traceback" not in err


def test_taken_console_port_leaves_smtp_running(tmp_path: Path) -> None:
    """When the console's port is taken serve still takes mail and says how to fix it."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        lines, proc = _serve_lines(tmp_path, "--web-port", str(port))
        try:
            text = "".join(lines)
            assert "web console not started" in text
            assert "already in use" in text
            assert "--web-port" in text
            smtp_port = int(re.search(r"smtp://127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                assert client.noop()[0] == 250
        finally:
            _stop(proc)


def test_no_web_runs_no_console(tmp_path: Path) -> None:
    """serve --no-web prints no console line and listens only for SMTP."""
    lines, proc = _serve_lines(tmp_path, "--no-web")
    try:
        assert not any("web console" in line for line in lines)
        listening = {c.laddr.port for c in psutil.Process(proc.pid).net_connections("tcp")}
        assert len(listening) == 1
    finally:
        _stop(proc)
