"""The log viewer against a real serve writing its daily log file."""

from __future__ import annotations

import asyncio
import io
import logging
import smtplib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

from jdxmail.logs import configure_logging
from tests.web.conftest import Console
from tests.web.shots import screenshot


@pytest.fixture
def logged(console: Console) -> Iterator[Console]:
    """The console's server logging into its Paths.Logs folder, as serve sets it up."""
    root = logging.getLogger("jdxmail")
    level, propagate = root.level, root.propagate
    configure_logging(console.app.settings.paths.logs, console=io.StringIO())
    yield console
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    root.propagate = propagate


def send(port: int, sender: str) -> None:
    """Send one message from *sender* to bob@localhost."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(sender, ["bob@localhost"], b"Subject: hi\r\n\r\nhello\r\n")


async def test_filter_finds_the_line_of_a_message(logged: Console) -> None:
    """Text and category find the 'accepted' line of a sent message; a level above hides it."""
    await asyncio.to_thread(send, logged.smtp_port, "needle@example.com")
    async with httpx.AsyncClient(base_url=logged.url) as http:
        found = (await http.get("/api/v1/logs", params={"q": "needle@", "category": "SMTP"})).json()
        messages = [line["message"] for line in found["lines"]]
        assert len(messages) == 1
        assert messages[0].startswith("accepted <")
        assert found["lines"][0]["level"] == "INFO"
        assert found["day"]["current"] is True
        hidden = await http.get("/api/v1/logs", params={"q": "needle@", "level": "WARNING"})
        assert hidden.json()["lines"] == []
        bad = await http.get("/api/v1/logs", params={"level": "LOUD"})
        assert bad.status_code == 400
        assert "unknown level" in bad.json()["error"]
        missing = await http.get("/api/v1/logs", params={"day": "2001-01-01"})
        assert missing.status_code == 404
        days = (await http.get("/api/v1/logs/days")).json()["days"]
        assert [d["current"] for d in days] == [True]


async def test_logs_page_filters_and_follows_new_lines(logged: Console, page: Any) -> None:
    """The page shows the filtered lines, then a new message's line arrives live."""
    await asyncio.to_thread(send, logged.smtp_port, "first@example.com")
    await page.goto(logged.url + "/logs?category=SMTP&q=accepted")
    await page.wait_for_selector("#log-lines tbody tr")
    rows = page.locator("#log-lines tbody tr")
    assert await rows.count() == 1, await rows.all_text_contents()
    await page.wait_for_selector("#jdx-live.on", timeout=10000)
    await asyncio.to_thread(send, logged.smtp_port, "second@example.com")
    await expect(page.locator("#log-lines tbody tr")).to_have_count(2, timeout=10000)
    last = await page.locator("#log-lines tbody tr").last.text_content()
    assert "second@example.com" in (last or "")
    await page.goto(logged.url + "/logs")
    await page.wait_for_selector("#log-lines tbody tr")
    await screenshot(page, "logs", logged.tmp)
