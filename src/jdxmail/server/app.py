"""The server's lifecycle: ``start()`` binds, ``serve()`` runs until a signal, ``stop()``.

Order of things: the spool opens, the extra components start (the delivery engine),
then the listeners bind. Stopping runs backwards: listeners close, idle clients get
``421`` and in-flight transactions may finish within the grace period, components
stop, the spool closes. SIGTERM/SIGINT stop, SIGHUP reloads users, policy and
(through the delivery engine or process) relays; so does a change of the config
file, through server.config_watch when serve adds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from jdxmail.eventloop import describe_running_loop
from jdxmail.inbox.index import MailboxIndex, RetentionLimits
from jdxmail.logs import register_secret
from jdxmail.queue._aiosmtplib_compat import AiosmtplibMismatch
from jdxmail.queue.spool import Spool, SpoolError
from jdxmail.server.chaos import Chaos
from jdxmail.server.config_watch import describe_changes
from jdxmail.server.domaincheck import DomainCheck, system_resolver
from jdxmail.server.errors import ServerDisabledError, ServerError, StorageError, bind_error
from jdxmail.server.policy import AuthThrottle, Policy
from jdxmail.server.smtp import MessageStore, Runtime, SmtpSession
from jdxmail.server.tls import TlsSetupError, ensure_self_signed, server_context
from jdxmail.settings.model import Settings, parse_resolver
from jdxmail.settings.save import restart_needed
from jdxmail.stats import Counters, ProcessStats, StatsRecorder

if TYPE_CHECKING:
    from jdxmail.health import Readiness

__all__ = ["FROM_SETTINGS", "BoundAddress", "Component", "DeliveryMode", "SmtpServerApp"]

logger = logging.getLogger("jdxmail.smtp")

#: where queued mail is relayed from (see SmtpServerApp)
DeliveryMode = Literal["inline", "process", "none"]

#: ``implicit_tls_port`` value meaning "as SmtpServer.Tls.ImplicitTlsPort says"
FROM_SETTINGS: int = -1


class Component(Protocol):
    """Something that runs alongside the listeners (the delivery engine)."""

    async def start(self) -> None:
        """Start; raise a ServerError to abort the server's start."""
        ...

    async def stop(self, grace: float) -> None:
        """Stop, finishing current work within *grace* seconds."""
        ...


@dataclass(frozen=True, slots=True)
class BoundAddress:
    """A listening socket: its address, port, and whether it is implicit TLS."""

    host: str
    port: int
    implicit_tls: bool = False
    #: connections start with a PROXY protocol header (SmtpServer.ProxyPort)
    proxy: bool = False

    def __str__(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        if self.proxy:
            scheme += "+proxy"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _where(sock: Any) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _capped_per_client(client_ip: str) -> bool:
    """True when MaxConnectionsPerClient applies to *client_ip*: not to loopback.

    Every local app shares 127.0.0.1 (and ::1), so a cap per address there would only
    be a second, smaller MaxConnections for the apps jdxmail mostly serves; a local
    process could take every slot anyway. The cap keeps one host of the network
    from holding all of them.
    """
    try:
        return not ipaddress.ip_address(client_ip).is_loopback
    except ValueError:
        return True


class SmtpServerApp:
    """The SMTP server: listeners, sessions, the spool and the components around them."""

    def __init__(
        self,
        settings: Settings,
        *,
        bind_address: str | None = None,
        port: int | None = None,
        implicit_tls_port: int | None = FROM_SETTINGS,
        proxy_port: int | None = FROM_SETTINGS,
        self_signed: bool = False,
        store: MessageStore | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        auth_failure_delay: float = 1.0,
        grace: float = 10.0,
        sockets: Sequence[socket.socket] = (),
        tls_sockets: Sequence[socket.socket] = (),
        before_listen: Callable[[], Awaitable[None]] | None = None,
        delivery: DeliveryMode = "inline",
        config_path: Path | None = None,
        config_text: str | None = None,
    ) -> None:
        """Prepare a server for *settings*; nothing is opened before start().

        *bind_address*, *port* and *implicit_tls_port* override the settings (port 0:
        any free port; *implicit_tls_port* None: no implicit-TLS listener). *store*
        replaces the spool built from ``Paths`` (the app then does not open or close
        it). *reload_settings* is called on SIGHUP. *auth_failure_delay* is the wait
        per failed login so far (up to 5 of them) before the 535 reply. *grace* is
        what serve() gives transactions in flight when it stops.

        *sockets* and *tls_sockets* are listening sockets bound already (``serve
        --workers``: one per process, SO_REUSEPORT); when given they replace binding
        the port or the implicit-TLS port. *before_listen* is awaited after the spool
        and the components started and before the listeners accept.

        *delivery* says where queued mail is relayed (when relays are configured):
        ``inline`` by a delivery engine on this event loop, ``process`` by a child
        process given *config_text* as read from *config_path* (the CLI's default),
        ``none`` by another process (``serve --workers``: one worker runs it for all).
        """
        self.settings = settings
        server = settings.smtp_server
        self.bind_address = bind_address or server.bind_address
        self.port = server.port if port is None else port
        self.implicit_tls_port = (
            server.tls.implicit_tls_port
            if implicit_tls_port == FROM_SETTINGS
            else implicit_tls_port
        )
        self.proxy_port = server.proxy_port if proxy_port == FROM_SETTINGS else proxy_port
        self.self_signed = self_signed
        self.auth_failure_delay = auth_failure_delay
        self.grace = grace
        self._own_spool: Spool | None = None
        if store is None:
            self._own_spool = Spool(settings.paths.spool, settings.paths.mailbox)
            store = self._own_spool
        self.store: MessageStore = store
        self._reload_settings = reload_settings
        self.tls_context: ssl.SSLContext | None = None
        #: the certificate clients are shown (set by start() when TLS is on)
        self.certificate: Path | None = None
        #: True when that certificate is the self-signed dev certificate
        self.certificate_self_signed = False
        self.throttle = AuthThrottle(server.auth_failure_limit, server.auth_failure_window)
        #: injected failures (off by default), kept across reloads
        self.chaos = Chaos(settings.paths.spool / "chaos.json")
        #: the index of the local mailboxes (the dev inbox), made by start() in the
        #: process that relays (one per ``serve --workers``), else None
        self.inbox: MailboxIndex | None = None
        self.runtime = self._runtime(settings)
        self.components: list[Component] = []
        self.addresses: list[BoundAddress] = []
        #: what this process's sessions (and an inline delivery engine) counted
        self.counters = Counters()
        #: writes the counters to <spool>/stats/ (None without an own spool)
        self.stats_recorder: StatsRecorder | None = None
        #: when the listeners started accepting (None while stopped)
        self.listening_since: float | None = None
        #: True while pause_listeners() has the listeners closed
        self.paused = False
        self._servers: list[asyncio.Server] = []
        #: each listener's scheme as BoundAddress shows it (for readiness)
        self._schemes: dict[asyncio.Server, str] = {}
        #: listeners bound by _start that accept once everything else has started
        self._bound: list[tuple[asyncio.Server, int, str]] = []
        self._sessions: set[SmtpSession] = set()
        #: open sessions per client address (addresses under MaxConnectionsPerClient)
        self._per_client: dict[str, int] = {}
        self._started_components: list[Component] = []
        self._stopping = False
        self._stop_requested = asyncio.Event()
        #: why the server stopped on its own (serve then exits non-zero), else None
        self.failure: str | None = None
        self._stopped = False
        self._signals: list[signal.Signals] = []
        self._sockets = list(sockets)
        self._tls_sockets = list(tls_sockets)
        self._before_listen = before_listen
        self.delivery: DeliveryMode = (
            "inline" if config_path is None and delivery == "process" else delivery
        )
        self.config_path = config_path
        self.config_text = config_text

    # -- what sessions ask -------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once stop() has begun."""
        return self._stopping

    def session_opened(self, session: SmtpSession) -> str | None:
        """Admit *session*, or name the limit that is reached (the settings key)."""
        server = self.runtime.server
        if self._stopping or len(self._sessions) >= server.max_connections:
            self.counters.refused_max_connections += 1
            return "MaxConnections"
        ip = session.client_ip
        if _capped_per_client(ip):
            count = self._per_client.get(ip, 0)
            if count >= server.max_connections_per_client:
                self.counters.refused_per_client += 1
                return "MaxConnectionsPerClient"
            self._per_client[ip] = count + 1
        self._sessions.add(session)
        self.counters.connections += 1
        if session.implicit_tls:
            self.counters.tls_implicit += 1
        return None

    def session_closed(self, session: SmtpSession) -> None:
        """Forget *session*."""
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        ip = session.client_ip
        count = self._per_client.get(ip)
        if count is not None:
            if count > 1:
                self._per_client[ip] = count - 1
            else:
                del self._per_client[ip]

    @property
    def delivery_pid(self) -> int | None:
        """The process id of the delivery process relaying for this server, if any."""
        from jdxmail.server.delivery import DeliveryProcess  # noqa: PLC0415

        for component in self._started_components:
            if isinstance(component, DeliveryProcess):
                return component.pid
        return None

    async def readiness(self) -> Readiness:
        """Whether this server should get traffic: listeners, spool, delivery process."""
        from jdxmail.health import readiness  # noqa: PLC0415
        from jdxmail.process import process_alive  # noqa: PLC0415

        listeners = [
            (f"{self._schemes.get(server, 'smtp')}://{_where(sock)}", self._accepting(server))
            for server in self._servers
            for sock in server.sockets
        ]
        delivery: tuple[bool, str] | None = None
        if self.settings.relays and self.delivery == "process":
            pid = self.delivery_pid
            alive = pid is not None and process_alive(pid)
            delivery = (
                alive,
                f"the delivery process (PID {pid}) runs"
                if alive
                else "the delivery process is not running",
            )
        elif self.settings.relays and self.delivery == "inline":
            delivery = (True, "relaying from the server process")
        paths = self.settings.paths
        return await asyncio.to_thread(
            readiness,
            paths.spool,
            self.settings.health.min_free_bytes,
            listeners=listeners,
            delivery=delivery,
        )

    def _accepting(self, server: asyncio.Server) -> bool:
        return server.is_serving() and not self._stopping and not self._stop_requested.is_set()

    @property
    def session_count(self) -> int:
        """Open client sessions."""
        return len(self._sessions)

    # -- settings --------------------------------------------------------------------

    def _runtime(self, settings: Settings) -> Runtime:
        server = settings.smtp_server
        for user in server.users:
            register_secret(user.password.get_secret_value())
        for relay in settings.relays:
            if relay.password is not None:
                register_secret(relay.password.get_secret_value())
        tls_available = self.tls_context is not None or server.tls.configured or self.self_signed
        policy = Policy(
            server, relays_configured=bool(settings.relays), tls_available=tls_available
        )
        return Runtime(
            server=server,
            host_name=server.effective_host_name,
            policy=policy,
            domain_check=self._domain_check(settings),
            chaos=self.chaos,
        )

    def _domain_check(self, settings: Settings) -> DomainCheck | None:
        """The recipient-domain check when ``Delivery.CheckRecipientDomain`` is on."""
        delivery = settings.delivery
        if not delivery.check_recipient_domain or not settings.relays:
            return None
        if delivery.dns_resolver is not None:
            resolver = parse_resolver(delivery.dns_resolver)
        else:
            found = system_resolver()
            if found is None:
                logger.warning(
                    "Delivery.CheckRecipientDomain is on, but no DNS server is known "
                    "(no nameserver in /etc/resolv.conf): recipient domains are not "
                    "checked; set Delivery.DnsResolver"
                )
                return None
            resolver = found
        return DomainCheck(resolver)

    def _default_components(self) -> list[Component]:
        """Components started with every server besides those added with add_component.

        The delivery engine (or the process running it) is created and returned here
        when relays are configured.
        """
        if self._own_spool is None:
            return []
        recorder = StatsRecorder(
            self.settings.paths.spool,
            "smtp",
            self.counters,
            sessions=lambda: self.session_count,
        )
        self.stats_recorder = recorder
        components: list[Component] = [recorder]
        if self.delivery != "none":  # one inbox per serve (the worker that relays)
            self.inbox = MailboxIndex(
                self.settings.paths.mailbox, limits=self._mailbox_limits, filed_here=True
            )
            self._own_spool.on_filed = self.inbox.filed
            components.append(self.inbox)
        if not self.settings.relays or self.delivery == "none":
            return components
        if self.delivery == "process" and self.config_path is not None:
            from jdxmail.server.delivery import DeliveryProcess  # noqa: PLC0415

            return [
                *components,
                DeliveryProcess(
                    self.config_path,
                    grace=self.grace,
                    on_exit=lambda: self.component_failed("the delivery process ended"),
                    server_stopping=lambda: self._stopping or self._stop_requested.is_set(),
                    config_text=self.config_text,
                ),
            ]
        from jdxmail.queue.worker import DeliveryEngine  # noqa: PLC0415

        engine = DeliveryEngine(self.settings, self._own_spool, counters=self.counters)
        recorder.relays = engine.relay_health
        return [*components, engine]

    #: the Mailbox section (frozen; a reload replaces it) and the limits made from it
    _limits_made: tuple[object, RetentionLimits] | None = None

    def _mailbox_limits(self) -> RetentionLimits:
        # (asked once per stored mailbox file: made again only when a reload changed them)
        mailbox = self.settings.mailbox
        made = self._limits_made
        if made is not None and made[0] is mailbox:
            return made[1]
        max_age = None if mailbox.max_age is None else float(mailbox.max_age)
        limits = RetentionLimits(max_messages=mailbox.max_messages, max_age=max_age)
        self._limits_made = (mailbox, limits)
        return limits

    def add_component(self, component: Component) -> None:
        """Run *component* with the server: started before the listeners, stopped after."""
        self.components.append(component)

    def _make_tls_context(self) -> ssl.SSLContext | None:
        tls = self.settings.smtp_server.tls
        if tls.cert_file is not None and tls.key_file is not None:
            if self.self_signed:
                logger.info("--self-signed ignored: SmtpServer.Tls names a certificate")
            self.certificate = tls.cert_file
            return server_context(tls.cert_file, tls.key_file)
        if tls.cert_file is not None or tls.key_file is not None:
            raise TlsSetupError(
                "SmtpServer.Tls needs both CertFile and KeyFile",
                "set both keys, or remove both (and use --self-signed for a dev certificate)",
            )
        if self.self_signed:
            directory = self.settings.paths.spool.parent / "tls"
            cert, key = ensure_self_signed(directory, self.runtime.host_name)
            logger.info("using the self-signed dev certificate %s", cert)
            self.certificate, self.certificate_self_signed = cert, True
            return server_context(cert, key)
        return None

    def reload(self) -> bool:
        """Read the settings again and apply users and policy to new commands (SIGHUP).

        Open connections stay; a bad config is logged and the current settings kept.
        """
        if self._reload_settings is None:
            logger.warning("reload requested, but this server has no config to reload")
            return False
        try:
            settings = self._reload_settings()
        except Exception as exc:  # any failure keeps the running settings
            logger.error("reload failed, keeping the current settings: %s", exc)
            return False
        old_settings = self.settings
        new = settings.smtp_server
        for change in describe_changes(self.settings, settings):
            logger.info("config change: %s", change)
        self.settings = settings
        self.runtime = self._runtime(settings)
        self.throttle.configure(new.auth_failure_limit, new.auth_failure_window)
        restart_keys = restart_needed(old_settings, settings)
        if restart_keys:
            logger.warning("changes to %s take effect after a restart", ", ".join(restart_keys))
        for component in self._started_components:
            # the delivery engine, or the process running it, takes the new relays
            relays = getattr(component, "reload", None)
            if callable(relays):
                relays(settings)
        logger.info(
            "settings reloaded: %d users, %d trusted networks, local domains %s",
            len(new.users),
            len(new.trusted_networks),
            ", ".join(self.runtime.policy.local_domains),
        )
        return True

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> list[BoundAddress]:
        """Bind the listeners, open the spool, start components, accept; return addresses.

        Raises ServerDisabledError, TlsSetupError, StorageError or BindError (each
        with ``fix``); nothing is left running when it raises.
        """
        if not self.settings.smtp_server.enabled:
            raise ServerDisabledError(
                "the SMTP server is disabled (SmtpServer.Enabled is false)",
                'set "Enabled": true under SmtpServer',
                row="A3",
            )
        logger.info("event loop: %s", describe_running_loop())
        self.tls_context = self._make_tls_context()
        self.runtime = self._runtime(self.settings)
        if self.implicit_tls_port is not None and self.tls_context is None:
            raise TlsSetupError(
                "SmtpServer.Tls.ImplicitTlsPort needs a certificate",
                "set SmtpServer.Tls.CertFile and KeyFile, or run `jdxmail serve --self-signed`",
            )
        try:
            await self._start()
        except BaseException:
            await self._shutdown(0.0)
            raise
        self.listening_since = time.time()
        for address in self.addresses:
            logger.info("listening on %s", address)
        return list(self.addresses)

    @property
    def listeners_shared(self) -> bool:
        """True when the listening sockets were handed over (``serve --workers``): they
        are shared with other processes and pause_listeners() cannot stop them."""
        return bool(self._sockets or self._tls_sockets)

    def live_stats(self) -> list[ProcessStats]:
        """This process's figures now (fresher than its stats file), for stats.collect."""
        if self.stats_recorder is None:
            return []
        return [self.stats_recorder.snapshot()]

    async def pause_listeners(self) -> bool:
        """Stop taking connections, as JumboDogX's dashboard stops a server.

        The listening sockets close (new clients get "connection refused"); open
        sessions finish normally; the spool, delivery and the other components (the
        web console) keep running. False when the listeners are stopped already.
        Raises ServerError for listeners handed over as sockets (``serve --workers``:
        they could not be bound again).
        """
        if self._stopping:
            raise ServerError("the server is stopping")
        if self.paused:
            return False
        if self.listeners_shared:
            raise ServerError(
                "with serve --workers the listeners are shared by every worker process "
                "and cannot be stopped from here",
                "stop the whole server (SIGTERM), or run serve without --workers",
            )
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        self.paused = True
        self.listening_since = None
        logger.info(
            "listeners stopped: %s refuse connections (%d sessions still open)",
            ", ".join(str(a) for a in self.addresses),
            len(self._sessions),
        )
        return True

    def _session_factory(self, implicit: bool, proxy: bool) -> Callable[[], SmtpSession]:
        return lambda: SmtpSession(self, implicit_tls=implicit, proxy=proxy)

    async def resume_listeners(self) -> bool:
        """Listen again on the addresses pause_listeners() closed; False if listening.

        Raises BindError (with its fix) when an address was taken meanwhile; the
        listeners then stay stopped.
        """
        if self._stopping:
            raise ServerError("the server is stopping")
        if not self.paused:
            return False
        loop = asyncio.get_running_loop()
        servers: list[asyncio.Server] = []
        try:
            for address in self.addresses:
                context = self.tls_context if address.implicit_tls else None
                timeout = float(self.settings.smtp_server.time_out) if context else None
                implicit = address.implicit_tls
                try:
                    server = await loop.create_server(
                        self._session_factory(implicit, address.proxy),
                        address.host,
                        address.port,
                        ssl=context,
                        ssl_handshake_timeout=timeout,
                        reuse_address=True,
                    )
                except OSError as exc:
                    key = "SmtpServer.Tls.ImplicitTlsPort" if implicit else "SmtpServer.Port"
                    if address.proxy:
                        key = "SmtpServer.ProxyPort"
                    raise bind_error(exc, address.host, address.port, key) from None
                servers.append(server)
                self._schemes[server] = (
                    "smtp+proxy" if address.proxy else "smtps" if implicit else "smtp"
                )
        except BaseException:
            for server in servers:
                server.close()
            raise
        self._servers = servers
        self.paused = False
        self.listening_since = time.time()
        logger.info("listeners started again: %s", ", ".join(str(a) for a in self.addresses))
        return True

    async def _start(self) -> None:
        # Bind first: a taken port is the commonest failure, and finding it before the
        # spool is opened (and cleaned up) and a delivery process started means a
        # second `serve` by mistake touches nothing. Listeners accept only at the end.
        loop = asyncio.get_running_loop()
        await self._listen(loop, self.port, None, "SmtpServer.Port", self._sockets)
        if self.implicit_tls_port is not None:
            await self._listen(
                loop,
                self.implicit_tls_port,
                self.tls_context,
                "SmtpServer.Tls.ImplicitTlsPort",
                self._tls_sockets,
            )
        if self.proxy_port is not None:
            await self._listen(loop, self.proxy_port, None, "SmtpServer.ProxyPort", proxy=True)
        if self._own_spool is not None:
            try:
                await self._own_spool.open(make_ahead=True)
            except SpoolError as exc:
                raise StorageError(
                    str(exc),
                    f"make {self.settings.paths.spool} writable for this user, or set "
                    "Paths.Spool to a folder it may write",
                ) from None
        for component in [*self._default_components(), *self.components]:
            try:
                await component.start()
            except AiosmtplibMismatch as exc:
                raise ServerError(str(exc), "pip install --upgrade aiosmtplib") from None
            self._started_components.append(component)
        await self.chaos.start(reset=self.inbox is not None)
        if self._before_listen is not None:
            await self._before_listen()
        for server, port, key in self._bound:
            try:
                await server.start_serving()
            except OSError as exc:
                raise bind_error(exc, self.bind_address, port, key) from None
        self._bound.clear()

    async def _listen(
        self,
        loop: asyncio.AbstractEventLoop,
        port: int,
        context: ssl.SSLContext | None,
        key: str,
        bound: Sequence[socket.socket] = (),
        *,
        proxy: bool = False,
    ) -> None:
        implicit = context is not None
        timeout = float(self.settings.smtp_server.time_out) if implicit else None
        servers: list[asyncio.Server] = []
        try:
            if bound:
                for sock in bound:
                    servers.append(
                        await loop.create_server(
                            lambda: SmtpSession(self, implicit_tls=implicit, proxy=proxy),
                            sock=sock,
                            ssl=context,
                            ssl_handshake_timeout=timeout,
                            start_serving=False,
                        )
                    )
            else:
                servers.append(
                    await loop.create_server(
                        lambda: SmtpSession(self, implicit_tls=implicit, proxy=proxy),
                        self.bind_address,
                        port,
                        ssl=context,
                        ssl_handshake_timeout=timeout,
                        reuse_address=True,
                        # serve --workers: every worker binds the PROXY port itself
                        reuse_port=bool(self._sockets) or None,
                        start_serving=False,
                    )
                )
        except OSError as exc:
            for server in servers:
                server.close()
            raise bind_error(exc, self.bind_address, port, key) from None
        for server in servers:
            self._servers.append(server)
            self._schemes[server] = "smtp+proxy" if proxy else "smtps" if implicit else "smtp"
            self._bound.append((server, port, key))
            for sock in server.sockets:
                host, bound_port = sock.getsockname()[:2]
                self.addresses.append(
                    BoundAddress(str(host), int(bound_port), implicit, proxy=proxy)
                )

    def request_stop(self) -> None:
        """Ask serve() to stop the server (safe to call from a signal handler)."""
        self._stop_requested.set()

    def component_failed(self, reason: str) -> None:
        """A component can no longer work (the delivery process ended): stop, failed."""
        if self.failure is None:
            self.failure = reason
        self.request_stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads (main thread only; serve() does it too).

        Call before start() so that a signal during startup is not lost.
        """
        if self._signals or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig, action in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, action)
                self._signals.append(sig)

    async def serve(self) -> None:
        """Run until request_stop(), SIGTERM or SIGINT, then stop; SIGHUP reloads."""
        self.install_signal_handlers()
        try:
            await self._stop_requested.wait()
            logger.info("stopping: no new connections; in-flight mail may finish")
            await self.stop(self.grace)
        finally:
            loop = asyncio.get_running_loop()
            for sig in self._signals:
                loop.remove_signal_handler(sig)
            self._signals.clear()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let transactions finish within *grace* seconds, close all."""
        await self._shutdown(grace)

    async def _shutdown(self, grace: float) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping = True
        for server in self._servers:
            server.close()
        for session in list(self._sessions):
            session.wake()
        tasks = [s.task for s in self._sessions if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                logger.warning(
                    "%d sessions still busy after %.0fs, closing them", len(pending), grace
                )
                for session in list(self._sessions):
                    session.abort()
                await asyncio.wait(pending, timeout=5)
        for component in reversed(self._started_components):
            try:
                await component.stop(grace)
            except Exception:
                logger.exception("a component failed to stop")
        self._started_components.clear()
        await self.chaos.stop()
        if self._own_spool is not None:
            await self._own_spool.close()
        self._servers.clear()
        logger.info("stopped")
