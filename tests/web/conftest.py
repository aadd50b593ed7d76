"""Fixtures for the web console: a real serve with its console, an HTTP client, a browser.

``console`` is an SmtpServerApp with the WebConsole on port 0 in the test's event loop,
in a folder of its own with a config file written there (a dev inbox: no relay), so
pages that edit the config have a file. ``make_console`` starts others (own config
text, TLS, users). ``http`` is an httpx client on the console; ``page`` a Playwright
page on the system chromium (tests using it are skipped when there is none).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from jdxmail.server.app import SmtpServerApp
from jdxmail.settings.files import load_settings
from jdxmail.web import app as web_app
from jdxmail.web.console import WebConsole
from jdxmail.web.responses import json_body

#: the system browser the page tests drive (Debian's `chromium`), or None
CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")

#: the config the ``console`` fixture writes: a dev inbox for this machine
DEV_INBOX_CONFIG = """\
// written by the console test fixture: a dev inbox on 127.0.0.1
{
  "SmtpServer": {
    "BindAddress": "127.0.0.1",
    "Port": 2525,
    "HostName": "mx.test",
    "TrustedNetworks": ["127.0.0.0/8", "::1/128"],
    "Users": []
  }
}
"""


@dataclass
class Console:
    """A running server with its web console."""

    app: SmtpServerApp
    web: WebConsole
    url: str
    smtp_port: int
    config_path: Path
    tmp: Path


MakeConsole = Callable[..., Awaitable[Console]]


@pytest.fixture
async def make_console(tmp_path: Path) -> AsyncIterator[MakeConsole]:
    """Start a server and its console from *config_text* (default: a dev inbox).

    Keyword arguments: ``name`` (the config file, default appsettings.json),
    ``web_bind`` (WebUI.BindAddress override), and SmtpServerApp options
    (``self_signed``...). Each console runs in its own folder under tmp_path.
    """
    started: list[SmtpServerApp] = []

    async def make(
        config_text: str = DEV_INBOX_CONFIG,
        *,
        name: str = "appsettings.json",
        web_bind: str | None = None,
        **options: Any,
    ) -> Console:
        folder = tmp_path / f"console{len(started)}"
        folder.mkdir()
        path = folder / name
        path.write_text(config_text, encoding="utf-8")
        path.chmod(0o600)
        loaded = load_settings(path)
        app_options: dict[str, Any] = {
            "port": 0,
            "implicit_tls_port": None,
            "auth_failure_delay": 0.0,
            "grace": 2.0,
            "delivery": "inline",
            "reload_settings": lambda: load_settings(path).settings,
            "config_path": path,
            "config_text": loaded.source.text,
            **options,
        }
        app = SmtpServerApp(loaded.settings, **app_options)
        web = WebConsole(app, port=0, bind_address=web_bind, config_path=path, grace=1.0)
        app.add_component(web)
        await app.start()
        started.append(app)
        smtp_port = next(a.port for a in app.addresses if not a.implicit_tls)
        return Console(app, web, web.url, smtp_port, path, folder)

    yield make
    for app in started:
        await app.stop(1.0)


@pytest.fixture
async def console(make_console: MakeConsole) -> Console:
    """A dev-inbox server with its console on 127.0.0.1, port 0."""
    return await make_console()


async def _echo(request: Request) -> Response:
    return JSONResponse(await json_body(request))


async def _form(request: Request) -> Response:
    return PlainTextResponse("done")


async def _crash(request: Request) -> Response:
    raise RuntimeError("internal detail /etc/secret")


#: routes of a test-only area: a form target, a JSON echo, and two handlers that crash
TEST_AREA = SimpleNamespace(
    routes=[
        Route("/test/form", _form, methods=["POST"]),
        Route("/api/v1/test/echo", _echo, methods=["POST"]),
        Route("/api/v1/test/crash", _crash),
        Route("/test/crash", _crash),
    ]
)


@pytest.fixture
async def area_console(make_console: MakeConsole, monkeypatch: pytest.MonkeyPatch) -> Console:
    """A dev-inbox console with TEST_AREA mounted (state-changing routes to attack)."""
    monkeypatch.setattr(web_app, "AREAS", [*web_app.AREAS, TEST_AREA])
    return await make_console()


@pytest.fixture
async def http(console: Console) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the console (a plain API client: no Origin, no cookie)."""
    async with httpx.AsyncClient(base_url=console.url, timeout=10) as client:
        yield client


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    """A Playwright page in headless system chromium (skipped when there is none)."""
    if CHROMIUM is None:
        pytest.skip("no chromium at /usr/bin/chromium (Debian package `chromium`)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox"],
            headless=True,
        )
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(10_000)
        browser_page = await context.new_page()
        try:
            yield browser_page
        finally:
            await context.close()
            await browser.close()
