"""What every console handler may use: the live server, the config file, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection
from starlette.templating import Jinja2Templates

from jdxmail.web.events import EventHub
from jdxmail.web.sessions import ConsoleAuth

if TYPE_CHECKING:
    from jdxmail.server.app import SmtpServerApp
    from jdxmail.settings.model import WebUISettings

__all__ = ["ConsoleContext", "context"]


@dataclass
class ConsoleContext:
    """The console's view of the running server (one per console).

    Settings are read live from ``server.settings``: a reload (SIGHUP, a save from the
    settings page) replaces them.
    """

    server: SmtpServerApp
    config_path: Path | None
    events: EventHub
    templates: Jinja2Templates
    started: float
    #: the console's own settings as it started (changes apply after a restart)
    web: WebUISettings | None = None
    #: host names (lower case, no port) the console answers to (see security.py)
    hosts: set[str] = field(default_factory=set)
    #: the console's base URL once it listens, e.g. ``http://127.0.0.1:5001``
    url: str = ""
    #: the console's bound port (Origin must name it)
    port: int = 0
    #: True when the console serves HTTPS
    tls: bool = False
    #: console users' sessions and the login throttle
    auth: ConsoleAuth = field(default_factory=ConsoleAuth)
    #: True when the console listens on a loopback address only
    loopback: bool = True


def context(request: HTTPConnection) -> ConsoleContext:
    """The ConsoleContext of the app that serves *request*."""
    ctx: ConsoleContext = request.app.state.console
    return ctx
