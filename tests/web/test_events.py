"""The one live event stream: what is published reaches every open stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from jdxmail.web.events import EventHub
from tests.conftest import BOTH_LOOPS
from tests.web.conftest import Console

pytestmark = BOTH_LOOPS  # uvicorn on serve's loop, uvloop too (serve --loop)


async def _next_event(lines: Any) -> tuple[str, dict[str, Any]]:
    kind = ""
    async for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: ") and kind:
            return kind, json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended")


async def test_published_event_reaches_the_stream(
    console: Console, http: httpx.AsyncClient
) -> None:
    """An event published on the server arrives on GET /api/v1/events as SSE."""
    hub = console.web.context.events  # type: ignore[union-attr]
    async with http.stream("GET", "/api/v1/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-store"
        lines = stream.aiter_lines()
        assert await anext(lines) == "retry: 2000"
        assert hub.listeners == 1
        hub.publish("message", {"id": "m1", "subject": "Hi <b>"})
        kind, data = await asyncio.wait_for(_next_event(lines), 10)
    assert kind == "message"
    assert data == {"id": "m1", "subject": "Hi <b>"}


async def test_stop_ends_open_streams(console: Console, http: httpx.AsyncClient) -> None:
    """Stopping serve with a browser's stream open ends the stream instead of hanging."""
    async with http.stream("GET", "/api/v1/events") as stream:
        lines = stream.aiter_lines()
        await anext(lines)
        await asyncio.wait_for(console.app.stop(5.0), 10)
        rest = [line async for line in lines]
    assert not any(line.startswith("event:") for line in rest)


async def test_slow_stream_drops_events_instead_of_growing() -> None:
    """A stream that never reads keeps at most its backlog; publishing never blocks."""
    hub = EventHub()
    queue = hub.subscribe()
    for number in range(10_000):
        hub.publish("stats", {"n": number})
    assert queue.qsize() < 1000
    hub.close()


async def test_browser_page_gets_events_through_jdx_on(console: Console, page: Any) -> None:
    """console.js delivers a published event to a JDX.on handler in the browser."""
    await page.goto(console.url + "/")
    await page.wait_for_selector("#jdx-live.on")
    # (the server's own queue events may come too: only the published one counts)
    await page.evaluate(
        """JDX.on('queue', function (d) {
            if (d.depth !== 7) return;
            const seen = document.createElement('output');
            seen.id = 'seen';
            seen.textContent = d.depth;
            document.body.appendChild(seen);
        })"""
    )
    console.web.context.events.publish("queue", {"depth": 7})  # type: ignore[union-attr]
    # wait_for_selector, not wait_for_function: its polling evals, which the CSP forbids
    assert await (await page.wait_for_selector("#seen")).inner_text() == "7"


async def test_closing_wakes_a_long_poll(console: Console) -> None:
    """A handler waiting on events.closing is woken when the console stops."""
    hub = console.web.context.events  # type: ignore[union-attr]
    waiter = asyncio.create_task(hub.closing.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    await console.app.stop(5.0)
    await asyncio.wait_for(waiter, 5)
