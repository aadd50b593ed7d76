"""The log viewer (``/logs``): today's file and earlier days, filters, follow live.

Reading is :mod:`jdxmail.logview` (the files every serve process and the delivery
process append to); new lines of today's file reach the page as ``log`` events
(see :mod:`jdxmail.web.live`), filtered in the page like the first lines.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from jdxmail.logview import LEVELS, LogQuery, UnknownLogDay, log_days, read_log
from jdxmail.web.context import ConsoleContext, context
from jdxmail.web.responses import ApiError, page

__all__ = ["CATEGORIES", "logs_json", "routes"]

#: the categories offered in the filter (any other is accepted too)
CATEGORIES = ("SMTP", "Auth", "Queue", "Relay", "Web")
_DEFAULT_LIMIT = 500


def _query(request: Request) -> tuple[str | None, LogQuery, int]:
    params = request.query_params
    day = params.get("day") or None
    try:
        query = LogQuery(
            level=params.get("level") or None,
            category=params.get("category") or None,
            text=params.get("q") or None,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    raw_limit = params.get("limit") or str(_DEFAULT_LIMIT)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 5000:
        raise ApiError(400, f"limit must be a number from 1 to 5000, not {raw_limit!r}")
    return day, query, int(raw_limit)


async def logs_json(
    ctx: ConsoleContext, day: str | None, query: LogQuery, limit: int
) -> dict[str, Any]:
    """The matching lines of *day* and the days there are (file reads in a thread)."""
    logs_dir = ctx.server.settings.paths.logs

    def read() -> dict[str, Any]:
        data = read_log(logs_dir, day, query, limit=limit).to_json()
        data["days"] = [d.to_json() for d in log_days(logs_dir)]
        return data

    try:
        data = await asyncio.to_thread(read)
    except UnknownLogDay as exc:
        raise ApiError(404, str(exc), "GET /api/v1/logs/days lists the days there are") from None
    data["filter"] = {
        "day": day,
        "level": query.level,
        "category": query.category,
        "q": query.text,
        "limit": limit,
    }
    return data


async def logs_page(request: Request) -> Response:
    """``GET /logs``: the newest lines, filtered by the form's values."""
    ctx = context(request)
    day, query, limit = _query(request)
    try:
        data = await logs_json(ctx, day, query, limit)
    except ApiError as exc:
        if exc.status != 404:
            raise
        raise ApiError(404, exc.message, "open Logs again and pick a day from its list") from None
    return page(
        request,
        "logs.html",
        {"logs": data, "levels": LEVELS, "categories": CATEGORIES},
        active="logs",
    )


async def get_logs(request: Request) -> Response:
    """``GET /api/v1/logs?day=&level=&category=&q=&limit=``: filtered lines, oldest first."""
    ctx = context(request)
    day, query, limit = _query(request)
    return JSONResponse(await logs_json(ctx, day, query, limit))


async def get_days(request: Request) -> Response:
    """``GET /api/v1/logs/days``: the days with a log file, newest first."""
    logs_dir = context(request).server.settings.paths.logs
    days = await asyncio.to_thread(log_days, logs_dir)
    return JSONResponse({"days": [d.to_json() for d in days]})


routes: list[BaseRoute] = [
    Route("/logs", logs_page, methods=["GET"]),
    Route("/api/v1/logs", get_logs, methods=["GET"]),
    Route("/api/v1/logs/days", get_days, methods=["GET"]),
]
