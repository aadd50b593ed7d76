"""Which relay a message is tried at, and when again: the relays in order with their
session pools and circuit breakers, the retry schedule (backoff with jitter) and the
options of the ``Delivery`` section.

The delivery of one message (:mod:`jdxmail.queue.delivery`) walks
:attr:`RelayChoice.pools` in order and asks each relay's breaker whether it may be
tried; the engine asks :meth:`RelayChoice.resting` before it claims a message at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from jdxmail.queue.pool import RelayPool
from jdxmail.settings.model import DeliverySettings, RelaySettings, Settings
from jdxmail.stats import RelayHealth

__all__ = [
    "CircuitBreaker",
    "DeliveryOptions",
    "RelayChoice",
    "backoff_delay",
]

relay_log = logging.getLogger("jdxmail.relay")


def backoff_delay(attempts: int, first: float, cap: float, rng: Callable[[], float]) -> float:
    """Seconds before the next try after *attempts* tries: doubling from *first* up to
    *cap*, with ±20 % jitter so that many waiting messages do not retry in lockstep."""
    base = min(cap, first * (2 ** max(0, attempts - 1)))
    return max(1.0, float(base * (0.8 + 0.4 * rng())))


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """Retry schedule and session counts of the delivery engine."""

    #: seconds a message may wait for a relay before it bounces (5 days)
    message_lifetime: float = 5 * 24 * 3600
    #: seconds before the first retry; doubled each attempt, with jitter
    retry_delay: float = 60
    #: the longest wait between two attempts
    retry_max_delay: float = 3600
    #: parallel sessions per relay (reused for consecutive messages)
    connections_per_relay: int = 4
    #: send with the relay account (its Username, when an address) as envelope sender,
    #: for relays that refuse other senders (row C7); bounces still come from <>
    rewrite_sender: bool = False
    #: also replace the From: header with the relay account (the original From
    #: becomes Reply-To unless the message has one)
    rewrite_from: bool = False
    #: 8-bit content for a relay without 8BITMIME: "Convert" (a 7bit copy) or "Bounce"
    eight_bit_downgrade: str = "Convert"

    @classmethod
    def from_settings(cls, delivery: DeliverySettings) -> DeliveryOptions:
        """The options the config's ``Delivery`` section asks for."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in delivery.model_dump().items() if k in names})


@dataclass(slots=True)
class CircuitBreaker:
    """Skips a relay that keeps failing, for a cool-down that grows while it fails."""

    name: str
    threshold: int = 3
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    failures: int = 0
    open_until: float = 0.0
    #: the last failure's text and when the relay last failed / worked (for the console)
    last_reply: str = ""
    last_failure_at: float = 0.0
    last_success_at: float = 0.0

    def allows(self, now: float) -> bool:
        """True when the relay may be tried (closed, or the cool-down is over)."""
        return now >= self.open_until

    def success(self, now: float = 0.0) -> None:
        """The relay worked (at *now*): close the breaker."""
        if self.failures >= self.threshold:
            relay_log.info("relay %s works again; no longer skipped", self.name)
        self.failures = 0
        self.open_until = 0.0
        self.last_success_at = now

    def refused(self, now: float, reply: str) -> None:
        """The relay answered but did not take the message (*reply*): it works, so the
        breaker closes as on success; the console shows the reply."""
        self.success()
        self.last_reply = reply
        self.last_failure_at = now

    def failure(self, now: float, reply: str = "") -> None:
        """The relay failed (*reply*: what it said or what went wrong); open the breaker
        after *threshold* failures in a row."""
        self.failures += 1
        self.last_reply = reply
        self.last_failure_at = now
        if self.failures >= self.threshold:
            wait = min(self.max_cooldown, self.cooldown * 2 ** (self.failures - self.threshold))
            self.open_until = now + wait
            relay_log.warning(
                "relay %s failed %d times in a row; skipping it for %.0f s",
                self.name,
                self.failures,
                wait,
            )


class RelayChoice:
    """The configured relays in the order they are tried, each with its session pool
    and its circuit breaker; a reload swaps them in place, so every holder sees it."""

    def __init__(self, settings: Settings, options: DeliveryOptions) -> None:
        self.pools = [_new_pool(settings, relay, options) for relay in settings.relays]
        self.breakers = {p.name: CircuitBreaker(p.name) for p in self.pools}
        #: each relay's host by name, also of relays a reload removed (for bounces)
        self.hosts = {p.name: p.relay.host for p in self.pools}
        #: closing the sessions of relays a reload removed
        self._retiring: set[asyncio.Task[None]] = set()

    def reload(self, settings: Settings, options: DeliveryOptions) -> int:
        """Use *settings*' relays from now on; returns how many pools were retired.

        A relay whose settings did not change keeps its sessions and its breaker; a
        retired pool finishes the attempts it has and closes (call in the loop).
        """
        kept = list(self.pools)
        before = {id(p) for p in kept}
        pools = [_reused_pool(kept, settings, relay, options) for relay in settings.relays]
        for retired in kept:
            retired.retire()
            task = asyncio.get_running_loop().create_task(retired.close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self.pools = pools
        # a relay that changed starts with a closed breaker; an attempt in progress at
        # a relay that is gone still finds its own
        self.breakers = {
            **self.breakers,
            **{
                p.name: self.breakers[p.name] if id(p) in before else CircuitBreaker(p.name)
                for p in pools
            },
        }
        self.hosts.update({p.name: p.relay.host for p in pools})
        return len(kept)

    def sessions(self) -> int:
        """How many sessions the relays may have open at once, all together."""
        return sum(p.size for p in self.pools)

    def resting(self, now: float) -> float | None:
        """When the first breaker reopens, if every relay's breaker is open; else None."""
        breakers = self.breakers
        first: float | None = None
        for pool in self.pools:
            breaker = breakers[pool.name]
            if breaker.allows(now):
                return None
            if first is None or breaker.open_until < first:
                first = breaker.open_until
        return first

    def reset_breakers(self) -> None:
        """Let every relay be tried now (``queue flush``)."""
        for breaker in self.breakers.values():
            breaker.open_until = 0.0

    def health(self) -> list[RelayHealth]:
        """Each relay's breaker and last outcome, for the stats file."""
        return [
            RelayHealth(
                b.name, b.failures, b.open_until, b.last_reply, b.last_failure_at, b.last_success_at
            )
            for b in self.breakers.values()
        ]

    def warn_insecure(self) -> None:
        """Log each relay that sends mail or its password where anyone may read it."""
        for pool in self.pools:
            if not pool.relay.verify_certificate:
                relay_log.warning(
                    "relay %s: VerifyCertificate is false; its certificate is not checked "
                    "(anyone on the path can read the mail and the password)",
                    pool.name,
                )
            if not pool.relay.use_tls and pool.relay.username:
                relay_log.warning(
                    "relay %s: UseTls is false; the password crosses the network in clear",
                    pool.name,
                )

    async def close(self) -> None:
        """Close every session, also those of retired relays."""
        await asyncio.gather(
            *self._retiring, *(p.close() for p in self.pools), return_exceptions=True
        )


def _new_pool(settings: Settings, relay: RelaySettings, options: DeliveryOptions) -> RelayPool:
    server = settings.smtp_server
    return RelayPool(
        relay,
        local_hostname=server.effective_host_name,
        step_timeout=float(relay.time_out or server.time_out),
        size=options.connections_per_relay,
    )


def _reused_pool(
    kept: list[RelayPool], settings: Settings, relay: RelaySettings, options: DeliveryOptions
) -> RelayPool:
    """The pool in *kept* with exactly *relay*'s settings (taken out of it), or a new one."""
    server = settings.smtp_server
    step_timeout = float(relay.time_out or server.time_out)
    wanted = (relay, options.connections_per_relay, step_timeout, server.effective_host_name)
    for index, pool in enumerate(kept):
        if wanted == (pool.relay, pool.size, pool.step_timeout, pool.local_hostname):
            return kept.pop(index)
    return _new_pool(settings, relay, options)
