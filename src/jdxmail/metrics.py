"""The Prometheus figures of a server and every process sharing its spool.

Each process counts in memory (:class:`jdxmail.stats.Counters`) and writes its counts
about once a second to ``<spool>/stats/``; :func:`metric_families` sums them
(:func:`jdxmail.stats.collect`), so the workers of ``serve --workers N`` and the
delivery process add up in one scrape of any of them. The queue comes from the
spool's folders and each relay's quota from ``quota.json``, read at scrape time.
Names follow Prometheus' conventions: ``jdxmail_..._total`` for counters, seconds
and bytes as units. docs/operations.md lists every metric.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from jdxmail.queue.quota import QuotaBook
from jdxmail.queue.spool import spool_stats
from jdxmail.settings.model import Settings
from jdxmail.stats import (
    COMMIT_BUCKETS,
    LATENCY_BUCKETS,
    ProcessStats,
    RelayHealth,
    Totals,
    collect,
    parse_series_key,
)

__all__ = ["metric_families", "render"]

#: rejection reasons, as Counters.reject() names them
REJECTION_REASONS = ("size", "recipients", "policy", "smuggling", "throttled", "content", "storage")
#: the relay states RelayHealth.state() names
RELAY_STATES = ("ok", "failing", "resting", "unused")


def metric_families(
    settings: Settings, live: Iterable[ProcessStats] = (), *, now: float | None = None
) -> list[Metric]:
    """Every metric of the server whose settings are *settings*, *live* being this
    process's own current figures. Blocking file reads: call it in a thread."""
    now = time.time() if now is None else now
    spool = settings.paths.spool
    totals = collect(spool, live=live, now=now)
    families = _counters(totals)
    families.extend(_histograms(totals))
    families.extend(_queue(settings, now))
    families.extend(_relays(settings, totals, now))
    return families


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _counters(totals: Totals) -> list[Metric]:
    total = totals.total
    connections = total["connections"]
    implicit, starttls = total["tls_implicit"], total["tls_starttls"]
    refused = CounterMetricFamily(
        "jdxmail_connections_refused_total",
        "Connections turned away with 421 because a connection limit was reached.",
        labels=["limit"],
    )
    refused.add_metric(["MaxConnections"], total["refused_max_connections"])
    refused.add_metric(["MaxConnectionsPerClient"], total["refused_per_client"])
    sessions = CounterMetricFamily(
        "jdxmail_sessions_total",
        "SMTP sessions by TLS mode: none, starttls (upgraded), implicit (TLS port).",
        labels=["tls"],
    )
    sessions.add_metric(["none"], max(0, connections - implicit - starttls))
    sessions.add_metric(["starttls"], starttls)
    sessions.add_metric(["implicit"], implicit)
    auth = CounterMetricFamily(
        "jdxmail_auth_attempts_total", "AUTH attempts by result.", labels=["result"]
    )
    auth.add_metric(["success"], total["auth_successes"])
    auth.add_metric(["failure"], total["auth_failures"])
    rejected = CounterMetricFamily(
        "jdxmail_messages_rejected_total",
        "Senders, recipients, messages or clients refused, by reason.",
        labels=["reason"],
    )
    for reason in REJECTION_REASONS:
        rejected.add_metric([reason], total[f"rejected_{reason}"])
    attempts = CounterMetricFamily(
        "jdxmail_delivery_attempts_total",
        "Hand-offs to a relay by outcome: delivered, refused (the relay said no), "
        "failed (connection, TLS or login).",
        labels=["relay", "outcome"],
    )
    for key, value in sorted(totals.series.items()):
        metric, labels = parse_series_key(key)
        if metric == "jdxmail_delivery_attempts_total":
            attempts.add_metric([labels.get("relay", ""), labels.get("outcome", "")], value)
    open_now = GaugeMetricFamily(
        "jdxmail_connections_open", "SMTP sessions open now.", value=totals.sessions
    )
    return [
        open_now,
        _counter("jdxmail_connections_total", "SMTP sessions admitted.", connections),
        refused,
        sessions,
        auth,
        _counter(
            "jdxmail_messages_accepted_total",
            "Messages stored (queued for a relay or put in a local mailbox).",
            total["accepted"],
        ),
        rejected,
        _counter(
            "jdxmail_received_bytes_total",
            "Bytes of message data accepted (before the Received: header).",
            total["received_bytes"],
        ),
        _counter(
            "jdxmail_messages_relayed_total",
            "Messages every recipient of which a relay accepted.",
            total["relayed"],
        ),
        _counter(
            "jdxmail_messages_deferred_total",
            "Delivery attempts that left recipients waiting for a retry.",
            total["deferred"],
        ),
        _counter(
            "jdxmail_bounces_total",
            "Messages given up on (kept in failed/, a bounce sent to the sender).",
            total["bounced"],
        ),
        attempts,
    ]


def _histogram(
    totals: Totals, name: str, doc: str, bounds: Sequence[float]
) -> HistogramMetricFamily:
    series = totals.series
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound in [*(repr(float(b)) for b in bounds), "+Inf"]:
        running += series.get(f'{name}_bucket{{le="{bound}"}}', 0.0)
        buckets.append((bound, running))
    return HistogramMetricFamily(
        name, doc, buckets=buckets, sum_value=series.get(f"{name}_sum", 0.0)
    )


def _histograms(totals: Totals) -> list[Metric]:
    return [
        _histogram(
            totals,
            "jdxmail_delivery_latency_seconds",
            "Seconds from a message's acceptance to its hand-off to a relay.",
            LATENCY_BUCKETS,
        ),
        _histogram(
            totals,
            "jdxmail_spool_commit_seconds",
            "Seconds to make an accepted message durable (the spool's group commit).",
            COMMIT_BUCKETS,
        ),
    ]


def _queue(settings: Settings, now: float) -> list[Metric]:
    stats = spool_stats(settings.paths.spool)
    depth = GaugeMetricFamily(
        "jdxmail_queue_messages",
        "Messages in the spool by state: queued (waiting for a relay), failed, corrupt.",
        labels=["state"],
    )
    depth.add_metric(["queued"], stats.queued)
    depth.add_metric(["failed"], stats.failed)
    depth.add_metric(["corrupt"], stats.corrupt)
    oldest = GaugeMetricFamily(
        "jdxmail_queue_oldest_message_age_seconds",
        "Age of the oldest queued message (0 when the queue is empty).",
        value=stats.oldest_queued_age or 0.0,
    )
    return [depth, oldest]


def _relays(settings: Settings, totals: Totals, now: float) -> list[Metric]:
    relays = settings.relays
    state = GaugeMetricFamily(
        "jdxmail_relay_state",
        "1 for each relay's current state: ok, failing, resting (breaker open), unused.",
        labels=["relay", "state"],
    )
    breaker = GaugeMetricFamily(
        "jdxmail_relay_breaker_open",
        "1 while the relay is skipped after repeated failures (its breaker is open).",
        labels=["relay"],
    )
    used = GaugeMetricFamily(
        "jdxmail_relay_quota_used",
        "Messages handed to the relay today (UTC), counted against DailyQuota.",
        labels=["relay"],
    )
    limit = GaugeMetricFamily(
        "jdxmail_relay_quota_limit", "The relay's DailyQuota (relays with one).", labels=["relay"]
    )
    sent: dict[str, int] = {}
    if relays:
        with contextlib.suppress(OSError):
            sent = QuotaBook(settings.paths.spool).sent_today(now)
    for relay in relays:
        name = relay.display_name
        health = totals.relays.get(name) or RelayHealth(name)
        current = health.state(now)
        for each in RELAY_STATES:
            state.add_metric([name, each], 1.0 if each == current else 0.0)
        breaker.add_metric([name], 1.0 if health.open_until > now else 0.0)
        used.add_metric([name], sent.get(name, 0))
        if relay.daily_quota is not None:
            limit.add_metric([name], relay.daily_quota)
    return [state, breaker, used, limit]


class _Families(Collector):
    """A collector that yields families made beforehand (off the event loop)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def render(families: list[Metric]) -> bytes:
    """*families* in Prometheus' text format, by the standard client."""
    from prometheus_client.exposition import generate_latest  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
