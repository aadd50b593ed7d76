"""What a running server is doing, in one value: the web console's dashboard.

Listeners and this process's sessions come from the :class:`SmtpServerApp` itself;
today's message counts and each relay's health from the stats files every process
using the spool writes (:mod:`jdxmail.stats`: the SMTP workers of ``serve --workers``
and the delivery process included); the queue from the spool's folders; quotas from
``quota.json``. Reading files blocks: :func:`server_status` runs in a thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jdxmail.queue.quota import QuotaBook, next_utc_midnight
from jdxmail.queue.spool import spool_stats
from jdxmail.stats import RelayHealth, collect

if TYPE_CHECKING:
    from jdxmail.server.app import SmtpServerApp

__all__ = ["ListenerStatus", "RelayStatus", "ServerStatus", "server_status"]


@dataclass(frozen=True, slots=True)
class ListenerStatus:
    """One listening address and how it offers TLS."""

    address: str
    host: str
    port: int
    #: ``implicit`` (TLS from the first byte), ``starttls`` (offered) or ``none``
    tls: str
    #: connections start with a PROXY protocol header (SmtpServer.ProxyPort)
    proxy: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "address": self.address,
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "proxy": self.proxy,
        }


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """A configured relay: where it is, how it fared lately, its quota today."""

    name: str
    host: str
    port: int
    #: ``ok``, ``failing``, ``resting`` (breaker open) or ``unused`` (not tried yet)
    state: str
    failures: int
    last_reply: str
    last_failure_at: float | None
    last_success_at: float | None
    resting_until: float | None
    quota_used: int
    quota_limit: int | None
    #: when today's quota starts over (00:00 UTC)
    quota_resets_at: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (no credentials: the relay's account is not in it)."""
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "state": self.state,
            "failures": self.failures,
            "last_reply": self.last_reply,
            "last_failure_at": self.last_failure_at,
            "last_success_at": self.last_success_at,
            "resting_until": self.resting_until,
            "quota": {
                "used": self.quota_used,
                "limit": self.quota_limit,
                "resets_at": self.quota_resets_at,
            },
        }


@dataclass(slots=True)
class ServerStatus:
    """The dashboard's figures."""

    now: float
    host_name: str
    pid: int
    #: ``listening`` or ``stopped`` (pause_listeners)
    listener_state: str
    listening_since: float | None
    listeners: list[ListenerStatus]
    sessions: int
    day: str
    today: dict[str, int]
    queued: int
    failed: int
    corrupt: int
    oldest_queued_age: float | None
    #: where queued mail is relayed: inline, process, none (another process), or
    #: "" when no relay is configured (a dev inbox)
    delivery: str
    relays: list[RelayStatus]
    processes: list[dict[str, Any]] = field(default_factory=list)
    #: False when the listeners are shared by several processes (serve --workers)
    can_stop: bool = True

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "now": self.now,
            "host_name": self.host_name,
            "pid": self.pid,
            "listeners": {
                "state": self.listener_state,
                "can_stop": self.can_stop,
                "since": self.listening_since,
                "addresses": [item.to_json() for item in self.listeners],
            },
            "sessions": self.sessions,
            "today": {"day": self.day, **self.today},
            "queue": {
                "queued": self.queued,
                "failed": self.failed,
                "corrupt": self.corrupt,
                "oldest_age_seconds": None
                if self.oldest_queued_age is None
                else round(self.oldest_queued_age, 1),
            },
            "delivery": self.delivery,
            "relays": [r.to_json() for r in self.relays],
            "processes": self.processes,
        }


def _tls_mode(app: SmtpServerApp, implicit: bool) -> str:
    if implicit:
        return "implicit"
    return "starttls" if app.tls_context is not None else "none"


def server_status(app: SmtpServerApp, *, now: float | None = None) -> ServerStatus:
    """The figures of *app* and of every process sharing its spool (blocking: a thread)."""
    now = time.time() if now is None else now
    settings = app.settings
    spool_dir = settings.paths.spool
    totals = collect(spool_dir, live=app.live_stats(), now=now)
    queue = spool_stats(spool_dir)
    sent = QuotaBook(spool_dir).sent_today(now) if settings.relays else {}
    relays = []
    for relay in settings.relays:
        name = relay.display_name
        health = totals.relays.get(name) or RelayHealth(name)
        relays.append(
            RelayStatus(
                name=name,
                host=relay.host,
                port=relay.port,
                state=health.state(now),
                failures=health.failures,
                last_reply=health.last_reply,
                last_failure_at=health.last_failure_at or None,
                last_success_at=health.last_success_at or None,
                resting_until=health.open_until if health.open_until > now else None,
                quota_used=sent.get(name, 0),
                quota_limit=relay.daily_quota,
                quota_resets_at=next_utc_midnight(now),
            )
        )
    sessions = totals.sessions if totals.processes else app.session_count
    return ServerStatus(
        now=now,
        host_name=app.runtime.host_name,
        pid=os.getpid(),
        listener_state="stopped" if app.paused else "listening",
        listening_since=app.listening_since,
        listeners=[
            ListenerStatus(str(a), a.host, a.port, _tls_mode(app, a.implicit_tls), a.proxy)
            for a in app.addresses
        ],
        sessions=sessions,
        day=totals.day,
        today=totals.today,
        queued=queue.queued,
        failed=queue.failed,
        corrupt=queue.corrupt,
        oldest_queued_age=queue.oldest_queued_age,
        delivery=app.delivery if settings.relays else "",
        relays=relays,
        processes=totals.processes,
        can_stop=not app.listeners_shared,
    )
