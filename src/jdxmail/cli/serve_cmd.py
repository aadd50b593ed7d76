"""``jdxmail serve``: run the SMTP server until SIGTERM / Ctrl-C."""

from __future__ import annotations

import enum
import ipaddress
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from jdxmail.cli.common import TIMEOUT_MAX, ConfigOption, load_or_exit, port_option
from jdxmail.cli.exitcodes import ExitCode
from jdxmail.cli.render import fail
from jdxmail.eventloop import LoopChoice

if TYPE_CHECKING:
    import socket

    from jdxmail.server.app import DeliveryMode, SmtpServerApp
    from jdxmail.settings.files import LoadedConfig
    from jdxmail.settings.model import Settings

__all__ = ["DeliveryChoice", "certificate_lines", "console_lines", "serve", "status_lines"]


class DeliveryChoice(enum.StrEnum):
    """``serve --delivery``: where queued mail is relayed from."""

    PROCESS = "process"
    INLINE = "inline"


def _check_bind(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        fail(
            "--bind is empty",
            "give the address to listen on: 127.0.0.1 (this machine only) or 0.0.0.0 "
            "(every interface, with TLS and Users)",
            ExitCode.USAGE,
        )
    if value == "*":
        return "0.0.0.0"
    if value.lower() == "localhost":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        fail(
            f"--bind {value!r} is not an IP address",
            "use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or an address "
            "of this machine",
            ExitCode.USAGE,
        )
    return value


def serve(
    config: ConfigOption = None,
    port: Annotated[
        int | None,
        port_option(
            "Listen on this port instead of SmtpServer.Port (0: any free port).", allow_zero=True
        ),
    ] = None,
    bind: Annotated[
        str | None,
        typer.Option(
            "--bind",
            metavar="ADDRESS",
            help="Listen on this address instead of SmtpServer.BindAddress.",
            show_default=False,
        ),
    ] = None,
    tls_port: Annotated[
        int | None,
        typer.Option(
            "--tls-port",
            metavar="PORT",
            min=0,
            max=65535,
            help="Implicit-TLS port instead of SmtpServer.Tls.ImplicitTlsPort (0: any).",
            show_default=False,
        ),
    ] = None,
    self_signed: Annotated[
        bool,
        typer.Option(
            "--self-signed",
            help="Without SmtpServer.Tls, make (once) and use a self-signed dev certificate "
            "for STARTTLS.",
        ),
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            metavar="SECONDS",
            min=0,
            max=TIMEOUT_MAX,
            help="Seconds in-flight mail may take to finish on shutdown.",
        ),
    ] = 10.0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log every SMTP command (DEBUG).")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            metavar="N",
            min=1,
            max=64,
            help="Server processes sharing the port (SO_REUSEPORT) and the spool; "
            "about one per core, one fewer with relays (the delivery process needs one).",
        ),
    ] = 1,
    delivery: Annotated[
        DeliveryChoice,
        typer.Option(
            "--delivery",
            metavar="[process|inline]",
            help="Where queued mail is relayed from: a process of its own (uses a second "
            "core) or the server's own event loop.",
        ),
    ] = DeliveryChoice.PROCESS,
    loop: Annotated[
        LoopChoice,
        typer.Option(
            "--loop",
            metavar="[auto|asyncio|uvloop]",
            envvar="JDXMAIL_LOOP",  # so a benchmark can run both without new arguments
            help="Event loop of every serve process: uvloop (pip install 'jdxmail[fast]'), "
            "asyncio's own, or auto (uvloop when installed).",
        ),
    ] = LoopChoice.AUTO,
    web_port: Annotated[
        int | None,
        typer.Option(
            "--web-port",
            metavar="PORT",
            min=0,
            max=65535,
            help="Web console port instead of WebUI.Port (0: any free port).",
            show_default=False,
        ),
    ] = None,
    no_web: Annotated[
        bool, typer.Option("--no-web", help="Do not run the web console (WebUI).")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            metavar="PORT",
            min=0,
            max=65535,
            help="Serve /metrics, /healthz and /readyz on this port (Metrics listener; "
            "0: any free port) instead of Metrics.Port.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the SMTP server: accept mail, store it durably, deliver or relay it.

    With no config file this is a dev inbox on 127.0.0.1:2525 that stores every
    message under data/smtp/mailbox/, with the web console on
    http://127.0.0.1:5001. Stops cleanly on SIGTERM or Ctrl-C; SIGHUP, or any
    change of the config file (looked at every second), reloads users, policy and
    relays.
    """
    import logging  # noqa: PLC0415

    from jdxmail.eventloop import LoopUnavailableError, resolve, run  # noqa: PLC0415
    from jdxmail.logs import LogSetupError, configure_logging  # noqa: PLC0415
    from jdxmail.server.app import FROM_SETTINGS, SmtpServerApp  # noqa: PLC0415
    from jdxmail.server.config_watch import ConfigWatcher, state_dir  # noqa: PLC0415
    from jdxmail.settings.files import load_settings  # noqa: PLC0415

    bind_address = _check_bind(bind)
    try:
        loop = resolve(loop)
    except LoopUnavailableError as exc:
        fail(str(exc), exc.fix, ExitCode.USAGE)
    loaded = load_or_exit(config)
    settings = loaded.settings
    if not settings.smtp_server.enabled:
        line = loaded.source.line_of(("SmtpServer", "Enabled"))
        where = f"{loaded.source.name}" + (f", line {line}" if line else "")
        fail(
            f"the SMTP server is disabled: SmtpServer.Enabled is false ({where}) [JDX-A3]",
            'set "Enabled": true under "SmtpServer" in that file',
            ExitCode.FAILED,
        )
    _refuse_unusable_paths(loaded)
    try:
        log_file = configure_logging(
            settings.paths.logs,
            level=logging.DEBUG if verbose else logging.INFO,
            log_format=settings.logging.format,
        )
    except LogSetupError as exc:
        fail(str(exc), "make the folder writable or set Paths.Logs", ExitCode.FAILED)

    def reload() -> Settings:
        return load_settings(config).settings

    def make_app(
        sockets: Sequence[socket.socket] = (),
        tls_sockets: Sequence[socket.socket] = (),
        before_listen: Callable[[], Awaitable[None]] | None = None,
        index: int = 0,
    ) -> SmtpServerApp:
        mode: DeliveryMode = "inline"
        if delivery is DeliveryChoice.PROCESS and loaded.source.path is not None:
            # one delivery process relays for every worker
            mode = "process" if index == 0 else "none"
        app = SmtpServerApp(
            settings,
            bind_address=bind_address,
            port=port,
            implicit_tls_port=tls_port if tls_port is not None else FROM_SETTINGS,
            self_signed=self_signed,
            reload_settings=reload,
            grace=grace,
            sockets=sockets,
            tls_sockets=tls_sockets,
            before_listen=before_listen,
            delivery=mode,
            config_path=loaded.source.path,
            config_text=loaded.source.text,
        )
        if loaded.source.path is not None:
            # a changed config file is reloaded as SIGHUP would (docs/serve.md)
            app.add_component(ConfigWatcher(loaded.source.path, state_dir(settings), app.reload))
        if index == 0 and settings.web_ui.enabled and not no_web:
            # one console, in the first worker, for all of them
            from jdxmail.web.console import WebConsole  # noqa: PLC0415

            app.add_component(WebConsole(app, port=web_port, config_path=loaded.source.path))
        if index == 0 and (settings.metrics.enabled or metrics_port is not None):
            from jdxmail.web.metrics import MetricsListener  # noqa: PLC0415

            app.add_component(MetricsListener(app, port=metrics_port))
        return app

    if workers > 1:
        code = _serve_workers(
            workers,
            make_app,
            host=bind_address or settings.smtp_server.bind_address,
            port=settings.smtp_server.port if port is None else port,
            tls_port=settings.smtp_server.tls.implicit_tls_port if tls_port is None else tls_port,
            trailer=_trailer(loaded.source.name, log_file, settings.paths.mailbox),
            loop=loop,
        )
        raise typer.Exit(int(code))
    app = make_app()
    code = run(_run(app, loaded.source.name, log_file, settings.paths.mailbox), loop)
    raise typer.Exit(int(code))


def _refuse_unusable_paths(loaded: LoadedConfig) -> None:
    """Exit 1, as validate-config would report, when a Paths folder cannot be used."""
    from jdxmail.cli.render import err_console, render_findings  # noqa: PLC0415
    from jdxmail.findings import has_errors  # noqa: PLC0415
    from jdxmail.settings.checks import check_paths  # noqa: PLC0415

    findings = check_paths(loaded.settings, loaded.source)
    if has_errors(findings):
        render_findings(f"{loaded.source.name}: serve cannot start", findings, err_console)
        raise typer.Exit(ExitCode.FAILED)


def _serve_workers(
    count: int,
    make_app: Callable[
        [Sequence[socket.socket], Sequence[socket.socket], Callable[[], Awaitable[None]], int],
        SmtpServerApp,
    ],
    *,
    host: str,
    port: int,
    tls_port: int | None,
    trailer: str,
    loop: LoopChoice,
) -> ExitCode:
    from jdxmail.server.app import BoundAddress  # noqa: PLC0415
    from jdxmail.server.errors import ServerError  # noqa: PLC0415
    from jdxmail.server.workers import bind_shared, run_workers  # noqa: PLC0415

    def fail_with(exc: ServerError) -> NoReturn:
        row = f" [JDX-{exc.row}]" if exc.row else ""
        fail(f"{exc}{row}", exc.fix, ExitCode.FAILED)

    try:
        sockets = bind_shared(host, port, count, "SmtpServer.Port")
        tls_sockets: list[list[socket.socket]] = [[] for _ in range(count)]
        if tls_port is not None:
            tls_sockets = bind_shared(host, tls_port, count, "SmtpServer.Tls.ImplicitTlsPort")
    except ServerError as exc:
        fail_with(exc)
    addresses = [
        BoundAddress(str(s.getsockname()[0]), int(s.getsockname()[1]), implicit)
        for group, implicit in ((sockets[0], False), (tls_sockets[0], True))
        for s in group
    ]

    def started(lines: list[str]) -> None:
        for address in addresses:
            sys.stdout.write(f"jdxmail serve: listening on {address}\n")
        sys.stdout.writelines(lines)
        sys.stdout.write(f"jdxmail serve: {count} server processes share the port\n")
        sys.stdout.write(trailer)
        sys.stdout.flush()

    try:
        code = run_workers(
            count,
            make_app,
            sockets=sockets,
            tls_sockets=tls_sockets,
            started=started,
            report=status_lines,
            loop=loop,
        )
    except ServerError as exc:
        fail_with(exc)
    return ExitCode.OK if code == 0 else ExitCode.FAILED


def _trailer(source: str, log_file: Path | None, mailbox: Path) -> str:
    return (
        f"jdxmail serve: config {source}; mailboxes in {mailbox}; "
        f"log {log_file if log_file else '(console only)'}\n"
    )


def status_lines(app: SmtpServerApp) -> list[str]:
    """What serve prints after it listens: the certificate, the delivery process, the
    web console."""
    lines = certificate_lines(app)
    pid = app.delivery_pid
    if pid is not None:
        relays = ", ".join(relay.display_name for relay in app.settings.relays)
        lines.append(f"jdxmail serve: a delivery process (PID {pid}) relays to {relays}\n")
    elif app.settings.relays and app.delivery == "inline":
        lines.append("jdxmail serve: relaying from the server process (--delivery inline)\n")
    lines.extend(console_lines(app))
    return lines


def console_lines(app: SmtpServerApp) -> list[str]:
    """What serve prints about the web console: its URL, or why it does not run."""
    from jdxmail.web.console import WebConsole  # noqa: PLC0415
    from jdxmail.web.metrics import MetricsListener  # noqa: PLC0415

    lines = []
    for component in app.components:
        if isinstance(component, MetricsListener) and component.url:
            lines.append(f"jdxmail serve: metrics and health checks on {component.url}/metrics\n")
        if isinstance(component, WebConsole):
            if component.url:
                lines.append(f"jdxmail serve: web console on {component.url}/\n")
            elif component.unavailable:
                lines.append(f"jdxmail serve: web console not started: {component.unavailable}\n")
    return lines


def certificate_lines(app: SmtpServerApp) -> list[str]:
    """What serve prints about the STARTTLS certificate (none without TLS)."""
    if app.certificate is None:
        return []
    kind = "self-signed dev certificate" if app.certificate_self_signed else "certificate"
    lines = [f"jdxmail serve: STARTTLS with the {kind} {app.certificate}\n"]
    if app.certificate_self_signed:
        port = next((a.port for a in app.addresses if not a.implicit_tls), None)
        url = f"smtp://localhost:{port}" if port is not None else "smtp://localhost"
        lines.append(
            "jdxmail serve: clients must trust that file, e.g. "
            f"curl --ssl-reqd --cacert {app.certificate} {url} ...\n"
        )
    return lines


async def _run(app: SmtpServerApp, source: str, log_file: Path | None, mailbox: Path) -> ExitCode:
    from jdxmail.process import settle_heap  # noqa: PLC0415
    from jdxmail.server.errors import ServerError  # noqa: PLC0415

    app.install_signal_handlers()
    try:
        addresses = await app.start()
    except ServerError as exc:
        row = f" [JDX-{exc.row}]" if exc.row else ""
        fail(f"{exc}{row}", exc.fix, ExitCode.FAILED)
    for address in addresses:
        sys.stdout.write(f"jdxmail serve: listening on {address}\n")
    sys.stdout.writelines(status_lines(app))
    sys.stdout.write(_trailer(source, log_file, mailbox))
    sys.stdout.flush()
    settle_heap()
    await app.serve()
    # Stopped: what is left is the event loop's teardown. A second SIGTERM or Ctrl-C now
    # (systemd, an impatient user) would kill the process with the default action and
    # exit 143 after a clean stop; the process is on its way out anyway.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    return ExitCode.OK if app.failure is None else ExitCode.FAILED
