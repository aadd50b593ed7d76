"""The console's Starlette app: the area modules' routes behind one security layer.

Each area module (dashboard, inbox, queue, ...) exports ``routes``; listing the module
in :data:`AREAS` mounts them. Core routes (the event stream, login, static files, a
fallback home page) come after the areas, so an area's ``/`` wins over the fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from jdxmail.web import (
    auth,
    backup,
    dashboard,
    diagnostics,
    inbox,
    logs,
    metrics,
    queue,
    settings,
    users,
)
from jdxmail.web.context import ConsoleContext, context
from jdxmail.web.events import event_stream
from jdxmail.web.responses import ApiError, error_page, page, wants_json
from jdxmail.web.security import SecurityMiddleware

__all__ = ["AREAS", "NAV", "build_app", "make_templates"]

logger = logging.getLogger("jdxmail.web")

HERE = Path(__file__).parent

#: the area modules whose ``routes`` are mounted (each helper adds its own, one line)
AREAS: list[ModuleType] = [
    dashboard,
    inbox,
    queue,
    users,
    settings,
    backup,
    logs,
    diagnostics,
    metrics,
]

#: the navigation bar of every page: (area key for ``active``, label, link)
NAV: list[tuple[str, str, str]] = [
    ("dashboard", "Dashboard", "/"),
    ("inbox", "Inbox", "/inbox"),
    ("queue", "Queue", "/queue"),
    ("users", "Users", "/users"),
    ("settings", "Settings", "/settings"),
    ("backup", "Backup", "/backup"),
    ("logs", "Logs", "/logs"),
    ("diagnostics", "Diagnostics", "/diagnostics"),
]


def _page_globals(request: Request) -> dict[str, Any]:
    """Values every template sees: the CSRF token, the user, the nav bar."""
    state = request.scope.get("state", {})
    return {
        "csrf_token": state.get("csrf_token", ""),
        "console_user": state.get("user"),
        "nav": NAV,
    }


def make_templates() -> Jinja2Templates:
    """The console's Jinja2 templates (autoescaped), with the shared page values."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )
    env.globals["static_url"] = lambda name: f"/static/{name}"
    return Jinja2Templates(env=env, context_processors=[_page_globals])


async def home(request: Request) -> Response:
    """``/``: the server at a glance (replaced by the dashboard area when present)."""
    ctx = context(request)
    server = ctx.server
    return page(
        request,
        "home.html",
        {
            "addresses": [str(a) for a in server.addresses],
            "sessions": server.session_count,
            "config": ctx.config_path or "(built-in default)",
            "mailbox": server.settings.paths.mailbox,
        },
        active="dashboard",
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        if wants_json(request.url.path):
            message, fix = "no such API resource", "docs/api.md lists them"
        else:
            message, fix = "no such page", "the navigation bar above leads to every page"
        return error_page(request, 404, f"{message}: {request.url.path}", fix)
    if exc.status_code == 405:
        return error_page(request, 405, f"{request.method} is not allowed on {request.url.path}")
    return error_page(request, exc.status_code, str(exc.detail))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_page(request, exc.status, exc.message, exc.fix)


def build_app(ctx: ConsoleContext) -> Starlette:
    """The console app for *ctx*: every area's routes behind the security middleware."""
    routes: list[BaseRoute] = []
    for area in AREAS:
        routes.extend(area.routes)
    routes.extend(
        [
            Route("/api/v1/events", event_stream, methods=["GET"]),
            *auth.routes,
            Route("/", home, methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
    )
    app = Starlette(
        routes=routes,
        # other exceptions: SecurityMiddleware logs them and answers 500 without details
        exception_handlers={HTTPException: _http_error, ApiError: _api_error},
    )
    app.state.console = ctx
    for area in AREAS:  # an area may hook into the running server (e.g. to publish events)
        setup = getattr(area, "setup", None)
        if setup is not None:
            setup(ctx)
    app.add_middleware(SecurityMiddleware, ctx=ctx)
    return app
