"""The console's security rules, applied once to every request (handlers do nothing).

In order: the ``Host`` must be one of the console's own names (DNS rebinding); a
present ``Origin`` must be the console's own (cross-site requests); a console off
loopback refuses everything while no console user is configured; bodies are limited
to :data:`MAX_BODY`; with console users every path but the login page and static
files needs a session cookie or HTTP Basic; a state-changing request from a browser
(it sends ``Origin``, the session cookie or ``Sec-Fetch-*``) needs the CSRF token of
its session or cookie in ``X-CSRF-Token`` or the form field ``csrf_token``. Plain API
clients (curl, a test suite) send none of those and need no token.

Every answer gets a strict Content-Security-Policy (unless the handler set its own,
e.g. the sandbox of an HTML mail), ``Cache-Control: no-store`` (unless set),
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: same-origin`` (no
referrer to any other site). An
exception in a handler is logged and answered 500 without details.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from jdxmail.logs import register_secret
from jdxmail.web.auth import client_ip
from jdxmail.web.responses import ApiError, error_page, json_error, wants_json
from jdxmail.web.sessions import SESSION_COOKIE, Session, basic_credentials

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from jdxmail.web.context import ConsoleContext

__all__ = ["CSP", "CSRF_COOKIE", "CSRF_HEADER", "MAX_BODY", "SecurityMiddleware", "host_name"]

logger = logging.getLogger("jdxmail.web")

#: the largest request body the console reads (bigger: 413)
MAX_BODY = 2 * 1024 * 1024
#: the cookie holding the CSRF token of a browser without a session
CSRF_COOKIE = "jdx_csrf"
#: the header that carries the CSRF token (console.js sets it)
CSRF_HEADER = "x-csrf-token"
#: the policy of every page: nothing inline, nothing from elsewhere
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; "
    "form-action 'self'; base-uri 'none'; object-src 'none'"
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: no login needed: the login page, static files, and the health checks of load balancers
_PUBLIC = ("/login", "/logout", "/static/", "/healthz", "/readyz")
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def host_name(value: str) -> str | None:
    """The host part of a Host header (lower case, IPv6 without brackets), or None."""
    try:
        parts = urlsplit("//" + value.strip())
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return None
    return parts.hostname.lower() if parts.hostname else None


class SecurityMiddleware:
    """ASGI middleware enforcing the rules of the module docstring."""

    def __init__(self, app: ASGIApp, ctx: ConsoleContext) -> None:
        self.app = app
        self.ctx = ctx
        self._masked_users: object = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        new_cookie: list[str] = []
        static = scope["path"].startswith("/static/")

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = CSP
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-cache" if static else "no-store"
                headers["X-Content-Type-Options"] = "nosniff"
                # not no-referrer: Chrome then sends "Origin: null" with the console's own
                # form posts; same-origin still tells other sites nothing
                headers["Referrer-Policy"] = "same-origin"
                for cookie in new_cookie:
                    headers.append("Set-Cookie", cookie)
            await send(message)

        request = Request(scope, receive)
        try:
            refusal, receive = await self._admit(request, scope, receive, new_cookie)
            if refusal is not None:
                await refusal(scope, receive, send_secured)
                return
            await self.app(scope, receive, send_secured)
        except ApiError as exc:
            if not started:
                await error_page(request, exc.status, exc.message, exc.fix)(
                    scope, receive, send_secured
                )
        except Exception as exc:
            logger.error(
                "console: %s %s failed: %s", scope["method"], scope["path"], exc, exc_info=exc
            )
            if not started:
                answer = error_page(
                    request, 500, "the console could not answer this request", "see the log"
                )
                await answer(scope, receive, send_secured)

    async def _admit(
        self, request: Request, scope: Scope, receive: Receive, new_cookie: list[str]
    ) -> tuple[Response | None, Receive]:
        """Check *request*; return (a refusal or None, the receive to pass on)."""
        state = scope.setdefault("state", {})
        state["csrf_token"] = ""
        state["user"] = None
        refusal = self._check_site(request)
        if refusal is not None:
            return refusal, receive
        receive = _limited(receive)
        headers = request.headers
        # Every current browser sends Origin with a POST and Sec-Fetch-* with everything;
        # a session cookie is a browser's too. The CSRF cookie alone is not: API clients
        # with a cookie jar (requests.Session, httpx.Client) keep it without being one.
        browser = (
            "origin" in headers
            or SESSION_COOKIE in request.cookies
            or any(key.startswith("sec-fetch-") for key in headers)
        )
        refusal, user, session = await self._authenticate(request, browser)
        if refusal is not None:
            return refusal, receive
        if session is not None:
            expected = session.csrf
        else:
            expected = request.cookies.get(CSRF_COOKIE, "")
            # A plain API client gets no cookie: its cookie jar would send it back, and
            # the cookie would make its next POST count as a browser's (CSRF needed).
            if len(expected) < 32 and (browser or not wants_json(scope["path"])):
                expected = secrets.token_urlsafe(32)
                cookie = f"{CSRF_COOKIE}={expected}; Path=/; HttpOnly; SameSite=Strict"
                new_cookie.append(cookie + ("; Secure" if self.ctx.tls else ""))
        state["csrf_token"] = expected
        state["user"] = user
        if scope["method"] in _SAFE_METHODS or not browser:
            return None, receive
        if scope["path"] == "/logout" and session is None:
            return None, receive  # no session to end: harmless, and no token to check
        token = headers.get(CSRF_HEADER)
        if token is None and headers.get("content-type", "").startswith(_FORMS):
            body = await _read_all(receive)
            form = await Request(scope, _replay(body, receive)).form()
            field = form.get("csrf_token")
            token = field if isinstance(field, str) else None
            await form.close()
            receive = _replay(body, receive)
        if not token or not hmac.compare_digest(token.encode(), expected.encode()):
            return error_page(
                request,
                403,
                "missing or wrong CSRF token",
                "reload the page (scripts send the X-CSRF-Token header from the page's "
                "csrf-token meta tag)",
            ), receive
        return None, receive

    def _check_site(self, request: Request) -> Response | None:
        """Host, Origin, an exposed console without users, the declared body size."""
        ctx = self.ctx
        headers = request.headers
        name = host_name(headers.get("host", ""))
        # Host and Origin refusals are JSON even for pages: no page is rendered for a
        # site that reached the console by DNS rebinding or from another origin.
        if name is None or name not in ctx.hosts:
            return json_error(
                421,
                f"this console does not answer to the host name {headers.get('host', '')!r}",
                f"open it as {ctx.url or 'http://127.0.0.1:5001'} (a page of another site "
                "must not reach it through DNS rebinding)",
            )
        origin = headers.get("origin")
        cross_site = headers.get("sec-fetch-site") == "cross-site"
        if (origin is not None and not self._own_origin(origin)) or (
            cross_site and request.method not in _SAFE_METHODS
        ):
            return json_error(
                403,
                f"cross-site request refused: Origin {origin!r} is not this console",
                "use the console's own pages, or call the API without a browser",
            )
        if not ctx.server.settings.web_ui.users and not ctx.loopback:
            return error_page(
                request,
                503,
                "the console listens off loopback but no console user is configured",
                "add a user under WebUI.Users and reload, or bind WebUI.BindAddress to 127.0.0.1",
            )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return error_page(
                request, 413, f"the request body is larger than {MAX_BODY // 1048576} MiB"
            )
        return None

    async def _authenticate(
        self, request: Request, browser: bool
    ) -> tuple[Response | None, str | None, Session | None]:
        """(a refusal or None, the console user or None, the session or None)."""
        ctx = self.ctx
        settings = ctx.server.settings
        users = settings.web_ui.users
        if users is not self._masked_users:  # new settings (a reload): mask new hashes
            self._masked_users = users
            for entry in users:
                register_secret(entry.password.get_secret_value())
        ctx.auth.throttle.configure(  # as SIGHUP does for SMTP AUTH
            settings.smtp_server.auth_failure_limit, settings.smtp_server.auth_failure_window
        )
        session = ctx.auth.session(request.cookies.get(SESSION_COOKIE))
        if session is not None and session.user not in {u.user_name for u in users}:
            session = None  # the user was removed by a reload
        user = session.user if session is not None else None
        if not users or user is not None:
            return None, user, session
        if "authorization" in request.headers:
            ip = client_ip(request)
            if ctx.auth.throttle.blocked(ip):
                return (
                    json_error(
                        429,
                        "too many failed logins from this address",
                        "wait and try again (SmtpServer.AuthFailureWindow)",
                    ),
                    None,
                    None,
                )
            credentials = basic_credentials(request.headers["authorization"])
            if credentials is not None:
                user = await ctx.auth.verify(users, ip, *credentials)
            if user is None:
                answer = json_error(401, "wrong user name or password", "check WebUI.Users")
                answer.headers["WWW-Authenticate"] = 'Basic realm="jdxmail console"'
                return answer, None, None
            return None, user, None
        if any(request.url.path.startswith(p) for p in _PUBLIC):
            return None, None, None
        return self._unauthorized(request, browser, "log in first"), None, None

    def _own_origin(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        scheme = "https" if self.ctx.tls else "http"
        if parts.scheme != scheme or (parts.hostname or "").lower() not in self.ctx.hosts:
            return False
        own_port = self.ctx.port
        return not own_port or (port or (443 if scheme == "https" else 80)) == own_port

    def _unauthorized(self, request: Request, browser: bool, message: str) -> Response:
        # pages send people to the login form (a form posted after the session ended,
        # too); the API, other scripts and scrapers of /metrics get 401
        machine = request.url.path == "/metrics"
        if wants_json(request.url.path) or (request.method != "GET" and not browser) or machine:
            answer = json_error(401, message, "log in, or send HTTP Basic with a console user")
            if not browser:
                answer.headers["WWW-Authenticate"] = 'Basic realm="jdxmail console"'
            return answer
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _limited(receive: Receive) -> Receive:
    """*receive* that raises ApiError 413 once the body passes MAX_BODY."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise ApiError(413, f"the request body is larger than {MAX_BODY // 1048576} MiB")
        return message

    return limited


async def _read_all(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives *body* once, then waits on *receive* (for the disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
