"""``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` for load balancers and
orchestrators: on the console's listener (an area of it), and on a ``Metrics``
listener of their own where the console is off.

``/healthz`` and ``/readyz`` need no login (a load balancer has none) and say nothing
secret. ``/metrics`` on the console follows the console's rules: open on loopback
without console users, HTTP Basic with a console user otherwise (Prometheus's
``basic_auth``). The ``Metrics`` listener has no users: bind it to loopback or a
private interface.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

import uvicorn
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from jdxmail.server.errors import bind_error

if TYPE_CHECKING:
    from jdxmail.server.app import SmtpServerApp

__all__ = ["MetricsListener", "build_probe_app", "routes"]

logger = logging.getLogger("jdxmail.web")


def _server(request: Request) -> SmtpServerApp:
    """The server behind *request*: the console's, or the Metrics listener's."""
    console = getattr(request.app.state, "console", None)
    server: SmtpServerApp = console.server if console is not None else request.app.state.server
    return server


async def metrics(request: Request) -> Response:
    """``GET /metrics``: every figure in Prometheus' text format (docs/operations.md)."""
    from jdxmail.metrics import metric_families, render  # noqa: PLC0415

    server = _server(request)
    live = server.live_stats()  # this process's figures now, read on the loop
    body = await asyncio.to_thread(lambda: render(metric_families(server.settings, live)))
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


async def healthz(request: Request) -> Response:
    """``GET /healthz``: 200 ``ok`` while the process answers."""
    return PlainTextResponse("ok\n", headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when listeners, spool and delivery are fine; 503 with reasons."""
    result = await _server(request).readiness()
    return JSONResponse(
        result.to_json(),
        status_code=200 if result.ready else 503,
        headers={"Cache-Control": "no-store"},
    )


routes: list[BaseRoute] = [
    Route("/metrics", metrics, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET", "HEAD"]),
    Route("/readyz", readyz, methods=["GET", "HEAD"]),
]


def build_probe_app(server: SmtpServerApp) -> Starlette:
    """The Metrics listener's app: only these routes, no pages, no state changes."""
    app = Starlette(routes=list(routes))
    app.state.server = server
    return app


class MetricsListener:
    """``Metrics.Enabled``: /metrics, /healthz and /readyz on a port of their own (a
    serve component, uvicorn on serve's loop like the console)."""

    def __init__(self, server: SmtpServerApp, *, port: int | None = None) -> None:
        self.server = server
        metrics = server.settings.metrics
        self.bind_address = metrics.bind_address
        self.port = metrics.port if port is None else port
        #: ``http://HOST:PORT`` once it listens
        self.url = ""
        self._uvicorn: uvicorn.Server | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> None:
        """Bind and serve; raise BindError (with the fix) when the port is taken."""
        host = "127.0.0.1" if self.bind_address.lower() == "localhost" else self.bind_address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, self.port), family=family, backlog=100)
        except OSError as exc:
            raise bind_error(exc, self.bind_address, self.port, "Metrics.Port") from None
        sock.setblocking(False)
        config = uvicorn.Config(
            build_probe_app(self.server),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,
            ws="none",
            timeout_graceful_shutdown=1,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._uvicorn, self._socket = server, sock
        bound, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{bound}]' if ':' in bound else bound}:{port}"
        logger.info("metrics and health checks on %s", self.url)

    async def stop(self, grace: float) -> None:
        """Close the listener."""
        server, self._uvicorn = self._uvicorn, None
        if server is not None:
            server.should_exit = True
            await server.shutdown(sockets=[self._socket] if self._socket else None)
        self._socket = None
