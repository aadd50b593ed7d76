"""The dashboard against a real serve: exact counts, listeners stopped and started."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

from tests.web.conftest import DEV_INBOX_CONFIG, Console, MakeConsole
from tests.web.shots import screenshot


def send(port: int, body: bytes = b"Subject: hi\r\n\r\nhello\r\n") -> None:
    """Send one message to bob@localhost through smtplib."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("alice@example.com", ["bob@localhost"], body)


async def test_status_counts_accepted_and_rejected_mail(make_console: MakeConsole) -> None:
    """Two messages accepted and one refused as too big show as exactly 2 and 1."""
    config = DEV_INBOX_CONFIG.replace('"Users": []', '"Users": [], "MaxMessageSize": 2000')
    console = await make_console(config)
    async with httpx.AsyncClient(base_url=console.url) as http:
        before = (await http.get("/api/v1/status")).json()
        assert before["today"]["accepted"] == 0
        await asyncio.to_thread(send, console.smtp_port)
        await asyncio.to_thread(send, console.smtp_port)
        with pytest.raises(smtplib.SMTPException):
            await asyncio.to_thread(send, console.smtp_port, b"Subject: big\r\n\r\n" + b"x" * 5000)
        response = await http.get("/api/v1/status")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    status = response.json()
    assert status["today"]["accepted"] == 2
    assert status["today"]["rejected"] == 1
    assert status["today"]["connections"] == 3
    assert status["sessions"] == 0
    assert status["listeners"]["state"] == "listening"
    assert status["listeners"]["addresses"][0]["port"] == console.smtp_port
    assert status["queue"] == {"queued": 0, "failed": 0, "corrupt": 0, "oldest_age_seconds": None}
    assert status["relays"] == []


async def test_listeners_stop_and_start_through_the_api(
    console: Console, http: httpx.AsyncClient
) -> None:
    """POST stop refuses SMTP connections while the console answers; start accepts again."""
    stopped = await http.post("/api/v1/listeners/stop")
    assert stopped.status_code == 200
    assert stopped.json()["state"] == "stopped"
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", console.smtp_port)
    assert (await http.get("/api/v1/status")).json()["listeners"]["state"] == "stopped"
    again = await http.post("/api/v1/listeners/stop")
    assert again.json().get("state") == "stopped", again.text
    started = await http.post("/api/v1/listeners/start")
    assert started.json()["state"] == "listening"
    await asyncio.to_thread(send, console.smtp_port)
    assert (await http.get("/api/v1/status")).json()["today"]["accepted"] == 1


async def test_dashboard_stops_and_starts_smtp_in_the_browser(console: Console, page: Any) -> None:
    """Clicking Stop refuses SMTP, clicking Start takes mail again; the figures follow live."""
    await page.goto(console.url + "/")
    await page.wait_for_selector("#jdx-live.on", timeout=10000)
    await asyncio.to_thread(send, console.smtp_port)
    await expect(page.locator("#t-accepted")).to_have_text("1", timeout=10000)
    await page.click("#listeners-stop")
    await page.wait_for_selector("#listeners-start:not([hidden])")
    assert await page.text_content("#listener-state") == "SMTP stopped"
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", console.smtp_port)
    await page.click("#listeners-start")
    await page.wait_for_selector("#listeners-stop:not([hidden])")
    await asyncio.to_thread(send, console.smtp_port)
    await expect(page.locator("#t-accepted")).to_have_text("2", timeout=10000)
    await screenshot(page, "dashboard", console.tmp)
