"""The console as a serve component: it starts, answers, shows the nav, stops."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.web.conftest import Console

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
