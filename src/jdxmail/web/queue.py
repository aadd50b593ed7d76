"""The queue (``/queue``): what ``jdxmail queue`` shows, with retry, delete and flush.

Everything goes through :mod:`jdxmail.queue.admin`, the core of the CLI: a message
being delivered at that moment is never changed (409, try again), and a running
delivery engine (here or in the delivery process) notices a retry within a second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jdxmail.queue.admin import (
    MessageBusy,
    MessageNotFound,
    QueueEntry,
    delete_message,
    failed_entries,
    flush_queue,
    list_queue,
    retry_message,
    show_message,
)
from jdxmail.queue.spool import spool_stats
from jdxmail.web.context import ConsoleContext, context
from jdxmail.web.responses import ApiError, page

__all__ = ["queue_counts", "queue_json", "routes"]

#: the most entries one listing returns (the oldest first)
MAX_ENTRIES = 1000


def _entries_json(entries: list[QueueEntry], now: float) -> dict[str, Any]:
    return {
        "count": len(entries),
        "entries": [e.to_json(now) for e in entries[:MAX_ENTRIES]],
        "more": len(entries) > MAX_ENTRIES,
    }


async def queue_json(ctx: ConsoleContext) -> dict[str, Any]:
    """The queued and the failed messages (oldest first), read in a thread."""
    spool = ctx.server.settings.paths.spool

    def read() -> tuple[list[QueueEntry], list[QueueEntry]]:
        return list_queue(spool), failed_entries(spool)

    queued, failed = await asyncio.to_thread(read)
    now = time.time()
    return {
        "now": now,
        "spool": str(spool),
        "relays": [r.display_name for r in ctx.server.settings.relays],
        "queued": _entries_json(queued, now),
        "failed": _entries_json(failed, now),
    }


def _admin_error(exc: Exception) -> ApiError:
    if isinstance(exc, MessageNotFound):
        return ApiError(404, str(exc), "reload the queue: it may have been delivered")
    if isinstance(exc, MessageBusy):
        return ApiError(409, str(exc), "try again in a moment")
    return ApiError(500, str(exc))


async def queue_counts(ctx: ConsoleContext) -> dict[str, Any]:
    """The ``queue`` event: how many messages wait and failed (a folder count)."""
    stats = await asyncio.to_thread(spool_stats, ctx.server.settings.paths.spool)
    return {"queued": stats.queued, "failed": stats.failed}


async def _changed(ctx: ConsoleContext) -> None:
    ctx.events.publish("queue", await queue_counts(ctx))


async def queue_page(request: Request) -> Response:
    """``GET /queue``: queued and failed messages."""
    ctx = context(request)
    data = await queue_json(ctx)
    return page(request, "queue.html", {"queue": data}, active="queue")


async def get_queue(request: Request) -> Response:
    """``GET /api/v1/queue``: queued and failed messages with their delivery state."""
    return JSONResponse(await queue_json(context(request)))


async def get_message(request: Request) -> Response:
    """``GET /api/v1/queue/{id}``: one message: state, outcomes, and its header."""
    ctx = context(request)
    queue_id = request.path_params["queue_id"]
    try:
        entry, header, failed = await asyncio.to_thread(
            show_message, ctx.server.settings.paths.spool, queue_id
        )
    except (MessageNotFound, MessageBusy) as exc:
        raise _admin_error(exc) from None
    return JSONResponse({**entry.to_json(), "failed": failed, "header": header})


async def retry(request: Request) -> Response:
    """``POST /api/v1/queue/{id}/retry``: try now; a failed message goes back in the queue."""
    ctx = context(request)
    queue_id = request.path_params["queue_id"]
    try:
        requeued = await asyncio.to_thread(retry_message, ctx.server.settings.paths.spool, queue_id)
    except (MessageNotFound, MessageBusy) as exc:
        raise _admin_error(exc) from None
    await _changed(ctx)
    return JSONResponse({"id": queue_id, "retrying": True, "requeued": requeued})


async def delete(request: Request) -> Response:
    """``DELETE /api/v1/queue/{id}``: delete a queued or failed message."""
    ctx = context(request)
    queue_id = request.path_params["queue_id"]
    try:
        failed = await asyncio.to_thread(delete_message, ctx.server.settings.paths.spool, queue_id)
    except (MessageNotFound, MessageBusy) as exc:
        raise _admin_error(exc) from None
    await _changed(ctx)
    return JSONResponse({"id": queue_id, "deleted": True, "was_failed": failed})


async def flush(request: Request) -> Response:
    """``POST /api/v1/queue/flush``: make every queued message due now."""
    ctx = context(request)
    done, busy = await asyncio.to_thread(flush_queue, ctx.server.settings.paths.spool)
    await _changed(ctx)
    return JSONResponse({"rescheduled": done, "busy": busy})


routes: list[BaseRoute] = [
    Route("/queue", queue_page, methods=["GET"]),
    Route("/api/v1/queue", get_queue, methods=["GET"]),
    Route("/api/v1/queue/flush", flush, methods=["POST"]),
    Route("/api/v1/queue/{queue_id}", get_message, methods=["GET"]),
    Route("/api/v1/queue/{queue_id}", delete, methods=["DELETE"]),
    Route("/api/v1/queue/{queue_id}/retry", retry, methods=["POST"]),
]
