"""The login and logout pages of the console (sessions: jdxmail.web.sessions)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from jdxmail.web.context import context
from jdxmail.web.responses import page
from jdxmail.web.sessions import SESSION_COOKIE, ConsoleAuth

__all__ = ["client_ip", "routes", "safe_next"]

logger = logging.getLogger("jdxmail.auth")


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this console, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def client_ip(request: Request) -> str:
    """The client's IP address (for the throttle)."""
    return request.client.host if request.client else "unknown"


def _throttled_text(auth: ConsoleAuth) -> str:
    minutes = max(1, round(auth.throttle.window / 60))
    return f"too many failed logins from this address; try again in up to {minutes} minutes"


async def login_form(request: Request) -> Response:
    """``GET /login``: the login page (home when no console users are configured)."""
    ctx = context(request)
    if not ctx.server.settings.web_ui.users:
        return RedirectResponse("/", status_code=303)
    return page(request, "login.html", {"next": safe_next(request.query_params.get("next"))})


async def login(request: Request) -> Response:
    """``POST /login``: check the user and password, open a session, go on."""
    ctx = context(request)
    users = ctx.server.settings.web_ui.users
    form = await request.form()
    target = safe_next(str(form.get("next") or ""))
    if not users:
        return RedirectResponse(target, status_code=303)
    ip = client_ip(request)
    name = str(form.get("username") or "")
    if ctx.auth.throttle.blocked(ip):
        values = {"next": target, "username": name, "message": _throttled_text(ctx.auth)}
        return page(request, "login.html", values, status=429)
    password = str(form.get("password") or "")
    user = await ctx.auth.verify(users, ip, name, password)
    if user is None:
        return page(
            request,
            "login.html",
            {"next": target, "username": name, "message": "wrong user name or password"},
            status=401,
        )
    token, _ = ctx.auth.open_session(user)
    logger.info("console login: %s from %s", user, ip)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="strict", secure=ctx.tls, path="/"
    )
    return response


async def logout(request: Request) -> Response:
    """``POST /logout``: end the session."""
    ctx = context(request)
    ctx.auth.close_session(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login" if ctx.server.settings.web_ui.users else "/", 303)
    response.delete_cookie(
        SESSION_COOKIE, httponly=True, samesite="strict", secure=ctx.tls, path="/"
    )
    return response


routes = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
