"""The console as a serve component: it starts, answers, shows the nav, stops."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

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
    console: Console, page: Any
) -> None:
    """In chromium JDX.api's POST passes the CSRF check, a bare fetch POST does not, and
    an API error surfaces as the server's message."""
    await page.goto(console.url + "/")
    bare = await page.evaluate("fetch('/logout', {method: 'POST'}).then(r => r.status)")
    assert bare == 403
    with_token = await page.evaluate("JDX.api('POST', '/logout').then(() => 'ok', e => e.message)")
    assert with_token == "ok"
    error = await page.evaluate(
        "JDX.api('GET', '/api/v1/no-such').then(() => 'ok', e => e.message)"
    )
    assert error.startswith("no such API resource: /api/v1/no-such")


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
