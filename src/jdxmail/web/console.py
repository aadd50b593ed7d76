"""The web console as a component of ``serve``: uvicorn on serve's own event loop.

The console binds its socket itself (so ``--web-port 0`` works and the URL is known
when start() returns) and hands it to uvicorn's ``Server.startup``; no thread, no
second loop, no signal handlers of uvicorn's (serve has its own). A console that
cannot listen (its port taken) does not stop the SMTP server: ``unavailable`` says
why and serve prints it. A console that would be unsafe (off loopback without console
users and TLS) refuses to start, and so does serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette

from jdxmail.logs import register_secret
from jdxmail.server.errors import ServerError, bind_error
from jdxmail.server.tls import TlsSetupError, ensure_self_signed, server_context
from jdxmail.settings.checks import local_addresses, web_exposure_problems
from jdxmail.web.app import AREAS, build_app, make_templates
from jdxmail.web.context import ConsoleContext
from jdxmail.web.events import EventHub
from jdxmail.web.sessions import ConsoleAuth

if TYPE_CHECKING:
    from jdxmail.server.app import SmtpServerApp

__all__ = ["ConsoleSetupError", "WebConsole", "is_loopback"]

logger = logging.getLogger("jdxmail.web")

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class ConsoleSetupError(ServerError):
    """The console must not or cannot start (off loopback unprotected, bad certificate)."""


def is_loopback(address: str) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class WebConsole:
    """The web console and HTTP API of one server (a serve component)."""

    def __init__(
        self,
        server: SmtpServerApp,
        *,
        port: int | None = None,
        bind_address: str | None = None,
        config_path: Path | None = None,
        grace: float = 5.0,
    ) -> None:
        """Prepare the console of *server*; *port* and *bind_address* override WebUI's.

        Port 0 takes any free port. Nothing is opened before start().
        """
        self.server = server
        web = server.settings.web_ui
        self.port = web.port if port is None else port
        self.bind_address = bind_address or web.bind_address
        self.config_path = config_path
        self.grace = grace
        #: the console's base URL once it listens (``http://127.0.0.1:5001``), else ""
        self.url = ""
        #: why the console does not listen (its port taken), with the fix; else None
        self.unavailable: str | None = None
        self.context: ConsoleContext | None = None
        #: the Starlette app once started
        self.app: Starlette | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        #: the areas' background tasks (an area module's ``background(ctx)``)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Bind and serve; set ``url`` (or ``unavailable``). Raise ConsoleSetupError."""
        settings = self.server.settings
        web = settings.web_ui
        problems = web_exposure_problems(settings, self.bind_address)
        if problems:
            raise ConsoleSetupError(
                f"the web console would listen on {self.bind_address}, off loopback, but "
                + " and ".join(problems),
                "configure console users and TLS under WebUI (see docs/web.md), set "
                'WebUI.BindAddress to "127.0.0.1", or run `jdxmail serve --no-web`',
            )
        for user in web.users:
            register_secret(user.password.get_secret_value())
        tls = self._tls_context()
        try:
            sock = self._bind()
        except OSError as exc:
            error = bind_error(exc, self.bind_address, self.port, "WebUI.Port")
            self.unavailable = (
                f"{error} (fix: `jdxmail serve --web-port 5002`, set WebUI.Port, or --no-web)"
            )
            logger.warning("web console not started: %s", self.unavailable)
            return
        port = int(sock.getsockname()[1])
        scheme = "https" if tls is not None else "http"
        loopback = is_loopback(self.bind_address)
        ctx = ConsoleContext(
            server=self.server,
            config_path=self.config_path,
            events=EventHub(),
            templates=make_templates(),
            started=time.time(),
            web=web,
            hosts=self._hosts(),
            url=f"{scheme}://{_url_host(self._shown_host())}:{port}",
            port=port,
            tls=tls is not None,
            auth=ConsoleAuth(
                settings.smtp_server.auth_failure_limit, settings.smtp_server.auth_failure_window
            ),
            loopback=loopback,
        )
        app = build_app(ctx)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,  # X-Forwarded-For must not fool the login throttle
            ws="none",
            limit_concurrency=256,  # beyond it: 503 rather than unbounded connections
            timeout_graceful_shutdown=max(int(self.grace), 1),
        )
        config.load()
        config.ssl = tls
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._uvicorn, self._socket, self.context, self.app = server, sock, ctx, app
        self.url = ctx.url
        for area in AREAS:
            background = getattr(area, "background", None)
            if background is not None:
                self._tasks.append(
                    asyncio.create_task(background(ctx), name=f"jdxmail-web-{area.__name__}")
                )
        logger.info("web console on %s", self.url)

    async def stop(self, grace: float) -> None:
        """End the event streams, let requests finish within *grace* seconds, close."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.context is not None:
            self.context.events.close()
        server, self._uvicorn = self._uvicorn, None
        if server is not None:
            server.config.timeout_graceful_shutdown = max(int(grace), 1)
            server.should_exit = True
            await server.shutdown(sockets=[self._socket] if self._socket else None)
        self._socket = None

    def _bind(self) -> socket.socket:
        host = self.bind_address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if host.lower() == "localhost":
            host = "127.0.0.1"
        sock = socket.create_server((host, self.port), family=family, reuse_port=False, backlog=100)
        sock.setblocking(False)
        return sock

    def _tls_context(self) -> ssl.SSLContext | None:
        settings = self.server.settings
        web = settings.web_ui
        if web.tls.cert_file is not None or web.tls.key_file is not None:
            if web.tls.cert_file is None or web.tls.key_file is None:
                raise ConsoleSetupError(
                    "WebUI.Tls needs both CertFile and KeyFile",
                    "set both keys, or remove both",
                )
            return _context(web.tls.cert_file, web.tls.key_file)
        if not web.use_smtp_certificate:
            return None
        smtp_tls = settings.smtp_server.tls
        if smtp_tls.cert_file is not None and smtp_tls.key_file is not None:
            return _context(smtp_tls.cert_file, smtp_tls.key_file)
        if self.server.self_signed:
            cert, key = ensure_self_signed(
                settings.paths.spool.parent / "tls", self.server.runtime.host_name
            )
            return _context(cert, key)
        raise ConsoleSetupError(
            "WebUI.UseSmtpCertificate is true but SmtpServer.Tls names no certificate",
            "set SmtpServer.Tls.CertFile and KeyFile, give WebUI.Tls its own, or run "
            "`jdxmail serve --self-signed`",
        )

    def _hosts(self) -> set[str]:
        """The host names a browser may use to reach this console."""
        hosts = set(_LOOPBACK_NAMES)
        bind = self.bind_address.lower()
        if is_loopback(bind):
            return hosts
        hosts.add(bind)
        hosts.add(self.server.runtime.host_name.lower())
        if bind in ("0.0.0.0", "::"):
            hosts |= {a.lower() for a in local_addresses()}
            hosts.add(socket.gethostname().lower())
        return hosts

    def _shown_host(self) -> str:
        bind = self.bind_address
        if bind in ("0.0.0.0", "::"):
            return socket.gethostname() or "127.0.0.1"
        return bind


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    try:
        return server_context(cert, key)
    except TlsSetupError as exc:
        raise ConsoleSetupError(f"web console: {exc}", exc.fix) from None
