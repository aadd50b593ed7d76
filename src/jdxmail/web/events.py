"""Live updates: an in-process hub and the one Server-Sent-Events stream.

Publishing is a loop over the open streams with ``put_nowait``: with no browser open
it costs next to nothing, so the SMTP path may publish freely. A stream that cannot
keep up loses events (its queue is bounded) rather than holding memory or the sender.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

__all__ = ["EVENT_KINDS", "EventHub", "event_stream"]

logger = logging.getLogger("jdxmail.web")

#: the kinds of event the console publishes (see docs/web.md)
EVENT_KINDS = ("message", "removed", "stats", "queue", "log", "listeners")

#: events a slow stream may have waiting before newer ones are dropped
_BACKLOG = 256

#: seconds between keep-alive comments, so proxies and browsers keep the stream open
KEEPALIVE = 15.0

_CLOSED = object()


class EventHub:
    """Fan-out of console events to every open event stream."""

    def __init__(self) -> None:
        self._streams: set[asyncio.Queue[object]] = set()
        self._closed = False
        #: set when the console stops: a long poll awaits it beside its own wait and
        #: answers at once, so stopping serve does not wait for the poll's timeout
        self.closing = asyncio.Event()

    @property
    def listeners(self) -> int:
        """Open event streams."""
        return len(self._streams)

    def publish(self, kind: str, data: dict[str, object]) -> None:
        """Send event *kind* with JSON-able *data* to every open stream (never blocks)."""
        if not self._streams:
            return
        item = (kind, data)
        for queue in self._streams:
            if not queue.full():  # a stalled browser misses events; it reloads to catch up
                queue.put_nowait(item)

    def subscribe(self) -> asyncio.Queue[object]:
        """A new stream's queue (closed at once when the hub is closed)."""
        queue: asyncio.Queue[object] = asyncio.Queue(_BACKLOG)
        if self._closed:
            queue.put_nowait(_CLOSED)
        else:
            self._streams.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[object]) -> None:
        """Forget a stream's queue."""
        self._streams.discard(queue)

    def close(self) -> None:
        """End every open stream (the console is stopping) and set ``closing``."""
        self._closed = True
        self.closing.set()
        for queue in self._streams:
            while True:
                try:
                    queue.put_nowait(_CLOSED)
                    break
                except asyncio.QueueFull:
                    queue.get_nowait()
        self._streams.clear()

    async def stream(self, keepalive: float = KEEPALIVE) -> AsyncIterator[str]:
        """The text of an SSE stream: ``event:``/``data:`` blocks until the hub closes."""
        queue = self.subscribe()
        try:
            yield "retry: 2000\n: connected\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), keepalive)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if not isinstance(item, tuple):  # _CLOSED
                    return
                kind, data = item
                yield f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"
        finally:
            self.unsubscribe(queue)


async def event_stream(request: Request) -> StreamingResponse:
    """``GET /api/v1/events``: the console's live updates as Server-Sent Events."""
    hub: EventHub = request.app.state.console.events
    return StreamingResponse(
        hub.stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
