"""The queue page and API against a real serve relaying to a real failing upstream."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

from jdxmail.queue.worker import DeliveryEngine
from tests.web.conftest import Console, MakeConsole
from tests.web.shots import screenshot
from tests.web.upstream import Upstream, relay_config


def send(port: int, rcpt: str = "carol@example.net") -> str:
    """Send one message to *rcpt* through smtplib; return the queue id from the reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("alice@example.com")
        smtp.rcpt(rcpt)
        code, reply = smtp.data(b"Subject: report\r\n\r\nthe numbers\r\n")
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


def engine_of(console: Console) -> DeliveryEngine:
    """The inline delivery engine of the console's server."""
    return next(c for c in console.app._started_components if isinstance(c, DeliveryEngine))


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """An upstream that answers MAIL with 451 until told otherwise."""
    server = await Upstream().start()
    yield server
    await server.close()


@pytest.fixture
async def relaying(make_console: MakeConsole, upstream: Upstream) -> Console:
    """A console whose server relays to the failing upstream."""
    return await make_console(relay_config(upstream.port))


async def test_queue_shows_the_waiting_message_and_retry_delivers_it(
    relaying: Console, upstream: Upstream
) -> None:
    """A 451 leaves the message queued with its reply; retry now delivers it once the
    upstream accepts."""
    queue_id = await asyncio.to_thread(send, relaying.smtp_port)
    await engine_of(relaying).wait_idle()
    async with httpx.AsyncClient(base_url=relaying.url) as http:
        listing = (await http.get("/api/v1/queue")).json()
        assert listing["queued"]["count"] == 1
        (entry,) = listing["queued"]["entries"]
        assert entry["id"] == queue_id
        assert entry["attempts"] == 1
        assert entry["relay"] == "upstream"
        assert entry["last_reply"].startswith("451")
        assert entry["next_try"] > listing["now"]
        assert entry["pending"] == ["carol@example.net"]
        one = (await http.get(f"/api/v1/queue/{queue_id}")).json()
        assert "Subject: report" in one["header"]
        status = (await http.get("/api/v1/status")).json()
        (relay,) = status["relays"]
        assert relay["state"] == "failing"
        assert relay["last_reply"].startswith("451")
        assert status["queue"]["queued"] == 1
        upstream.mail_reply = None
        retried = await http.post(f"/api/v1/queue/{queue_id}/retry")
        assert retried.json() == {"id": queue_id, "retrying": True, "requeued": False}
        await upstream.wait_for(1)
        await engine_of(relaying).wait_idle()
        assert upstream.received == [["carol@example.net"]]
        assert (await http.get("/api/v1/queue")).json()["queued"]["count"] == 0
        status = (await http.get("/api/v1/status")).json()
        assert status["today"]["relayed"] == 1
        assert status["today"]["deferred"] == 1
        assert status["relays"][0]["state"] == "ok"


async def test_retry_of_one_message_leaves_the_others_waiting(
    relaying: Console, upstream: Upstream
) -> None:
    """Retrying one of two waiting messages delivers that one only: the other keeps
    its attempt count and its next try (it is not made due with it)."""
    first = await asyncio.to_thread(send, relaying.smtp_port)
    second = await asyncio.to_thread(send, relaying.smtp_port)
    await engine_of(relaying).wait_idle()
    async with httpx.AsyncClient(base_url=relaying.url) as http:
        before = (await http.get(f"/api/v1/queue/{second}")).json()
        upstream.mail_reply = None
        retried = await http.post(f"/api/v1/queue/{first}/retry")
        assert retried.json() == {"id": first, "retrying": True, "requeued": False}
        await upstream.wait_for(1)
        await engine_of(relaying).wait_idle()
        listing = (await http.get("/api/v1/queue")).json()
        (entry,) = listing["queued"]["entries"]
        assert entry["id"] == second
        assert entry["attempts"] == before["attempts"] == 1
        assert entry["next_try"] == before["next_try"] > listing["now"]
    assert len(upstream.received) == 1


async def test_delete_removes_a_queued_message(relaying: Console) -> None:
    """DELETE removes the message for good; a second DELETE is a clear 404."""
    queue_id = await asyncio.to_thread(send, relaying.smtp_port)
    await engine_of(relaying).wait_idle()
    async with httpx.AsyncClient(base_url=relaying.url) as http:
        deleted = await http.delete(f"/api/v1/queue/{queue_id}")
        assert deleted.json() == {"id": queue_id, "deleted": True, "was_failed": False}
        assert (await http.get("/api/v1/queue")).json()["queued"]["count"] == 0
        again = await http.delete(f"/api/v1/queue/{queue_id}")
        assert again.status_code == 404
        assert queue_id in again.json()["error"]
        assert (await http.post("/api/v1/queue/..%2fetc/retry")).status_code == 404


async def test_failed_message_goes_back_into_the_queue(
    relaying: Console, upstream: Upstream
) -> None:
    """A message the upstream refuses for good is in the failed area; retry queues it again."""
    upstream.mail_reply = "550 5.7.1 sender refused"
    queue_id = await asyncio.to_thread(send, relaying.smtp_port)
    engine = engine_of(relaying)
    await engine.wait_idle()
    async with httpx.AsyncClient(base_url=relaying.url) as http:
        listing = (await http.get("/api/v1/queue")).json()
        failed_ids = [e["id"] for e in listing["failed"]["entries"]]
        assert queue_id in failed_ids
        assert (await http.get("/api/v1/status")).json()["today"]["bounced"] >= 1
        upstream.mail_reply = None
        retried = (await http.post(f"/api/v1/queue/{queue_id}/retry")).json()
        assert retried["requeued"] is True
        await upstream.wait_for(1)
        await engine.wait_idle()
        failed_ids = [
            e["id"] for e in (await http.get("/api/v1/queue")).json()["failed"]["entries"]
        ]
        assert queue_id not in failed_ids


async def test_queue_page_lists_the_message_and_its_reply(
    relaying: Console, upstream: Upstream, page: Any
) -> None:
    """The page shows the waiting message with the upstream's reply; Retry now delivers
    that message, and the other one keeps waiting for its own time."""
    queue_id = await asyncio.to_thread(send, relaying.smtp_port)
    await asyncio.to_thread(send, relaying.smtp_port, "dave@example.org")
    await engine_of(relaying).wait_idle()
    await page.goto(relaying.url + "/queue")
    row = page.locator(f"tr[data-id='{queue_id}']")
    await row.wait_for()
    assert "451 4.3.0 upstream busy" in (await row.text_content() or "")
    assert await page.text_content("#count-queued") == "2"
    await screenshot(page, "queue", relaying.tmp)
    await page.goto(relaying.url + "/")
    relay = page.locator("#relays tr[data-relay='upstream']")
    await expect(relay).to_contain_text("451 4.3.0 upstream busy")
    await expect(relay).to_contain_text("failing")
    await screenshot(page, "dashboard-relay", relaying.tmp)
    await page.goto(relaying.url + "/queue")
    await row.wait_for()
    upstream.mail_reply = None
    await row.get_by_role("button", name="Retry now").click()
    await upstream.wait_for(1)
    await row.wait_for(state="detached", timeout=10000)
    await expect(page.locator("#count-queued")).to_have_text("1", timeout=10000)
    assert upstream.received == [["carol@example.net"]]


async def test_delivery_process_figures_reach_the_dashboard(
    make_console: MakeConsole, upstream: Upstream
) -> None:
    """With the delivery process (serve's default) its relayed count and the relay's
    state show on the console, read from the file it writes."""
    upstream.mail_reply = None
    console = await make_console(relay_config(upstream.port), delivery="process")
    await asyncio.to_thread(send, console.smtp_port)
    await asyncio.to_thread(send, console.smtp_port, "dave@example.org")
    await upstream.wait_for(2)
    async with httpx.AsyncClient(base_url=console.url) as http:
        status = (await http.get("/api/v1/status")).json()
        for _ in range(50):  # the delivery process writes its figures once a second
            if status["today"]["relayed"] == 2:
                break
            await asyncio.sleep(0.1)
            status = (await http.get("/api/v1/status")).json()
    assert status["today"]["relayed"] == 2
    assert status["today"]["accepted"] == 2
    assert status["delivery"] == "process"
    assert status["relays"][0]["state"] == "ok"
    roles = sorted(p["role"] for p in status["processes"] if p["running"])
    assert roles == ["delivery", "smtp"]
