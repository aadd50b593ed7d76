"""The dashboard (``/``): listeners, sessions, today's mail, the queue, each relay.

Figures come from :func:`jdxmail.server.status.server_status` (the same core a
Prometheus endpoint will use); the page renders them once and then follows the
``stats`` and ``listeners`` events. Stopping the listeners is JumboDogX's "stop
server": new connections are refused, everything else keeps running.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jdxmail.server.errors import ServerError
from jdxmail.server.status import server_status
from jdxmail.web.context import ConsoleContext, context
from jdxmail.web.live import background
from jdxmail.web.responses import ApiError, page

__all__ = ["background", "listeners_json", "routes", "status_json"]


async def status_json(ctx: ConsoleContext) -> dict[str, Any]:
    """The dashboard's figures as JSON (file reads in a thread)."""
    status = await asyncio.to_thread(server_status, ctx.server)
    data = status.to_json()
    data["console_started"] = ctx.started
    return data


def listeners_json(ctx: ConsoleContext) -> dict[str, Any]:
    """The listeners' state, addresses and TLS modes (cheap: no file read)."""
    server = ctx.server
    tls = "starttls" if server.tls_context is not None else "none"
    return {
        "state": "stopped" if server.paused else "listening",
        "since": server.listening_since,
        "addresses": [
            {
                "address": str(a),
                "host": a.host,
                "port": a.port,
                "tls": "implicit" if a.implicit_tls else tls,
                "proxy": a.proxy,
            }
            for a in server.addresses
        ],
        "sessions": server.session_count,
        #: False with serve --workers (the sockets are shared by the processes)
        "can_stop": not server.listeners_shared,
    }


async def dashboard_page(request: Request) -> Response:
    """``GET /``: the dashboard."""
    ctx = context(request)
    data = await status_json(ctx)
    return page(request, "dashboard.html", {"status": data}, active="dashboard")


async def get_status(request: Request) -> Response:
    """``GET /api/v1/status``: every figure of the dashboard."""
    return JSONResponse(await status_json(context(request)))


async def get_listeners(request: Request) -> Response:
    """``GET /api/v1/listeners``: listening or stopped, and where."""
    return JSONResponse(listeners_json(context(request)))


async def _switch(request: Request, start: bool) -> Response:
    ctx = context(request)
    try:
        if start:
            await ctx.server.resume_listeners()
        else:
            await ctx.server.pause_listeners()
    except ServerError as exc:
        raise ApiError(409, str(exc), exc.fix or None) from None
    data = listeners_json(ctx)
    ctx.events.publish("listeners", data)
    return JSONResponse(data)


async def stop_listeners(request: Request) -> Response:
    """``POST /api/v1/listeners/stop``: refuse new SMTP connections (sessions finish)."""
    return await _switch(request, start=False)


async def start_listeners(request: Request) -> Response:
    """``POST /api/v1/listeners/start``: take SMTP connections again."""
    return await _switch(request, start=True)


routes: list[BaseRoute] = [
    Route("/", dashboard_page, methods=["GET"]),
    Route("/api/v1/status", get_status, methods=["GET"]),
    Route("/api/v1/listeners", get_listeners, methods=["GET"]),
    Route("/api/v1/listeners/stop", stop_listeners, methods=["POST"]),
    Route("/api/v1/listeners/start", start_listeners, methods=["POST"]),
]
