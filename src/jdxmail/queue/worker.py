"""The delivery engine: takes due messages from the spool and hands them to relays.

Inside ``serve`` it runs as a component (``start()`` / ``stop(grace)``) and
coordinates four parts, each in its own module:

- :mod:`~jdxmail.queue.scheduler`: when each queued message is due (the heap,
  rescans, recovery at start, ``queue flush``), handing due ids to the workers;
- :mod:`~jdxmail.queue.message_delivery`: the delivery of one message (claim, read,
  the relays in order, the outcomes, reschedule / bounce / remove);
- :mod:`~jdxmail.queue.relay_choice`: the relays with their session pools and
  circuit breakers, the retry backoff and the ``Delivery`` options;
- :mod:`~jdxmail.queue.bounce`: the DSN to the sender and failed/.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from jdxmail.queue._aiosmtplib_compat import check_aiosmtplib
from jdxmail.queue.message_delivery import MessageDelivery
from jdxmail.queue.pool import RelayPool
from jdxmail.queue.relay_choice import CircuitBreaker, DeliveryOptions, RelayChoice, backoff_delay
from jdxmail.queue.scheduler import Scheduler
from jdxmail.queue.spool import Spool
from jdxmail.settings.model import Settings
from jdxmail.stats import Counters, RelayHealth

__all__ = [
    "CircuitBreaker",
    "DeliveryEngine",
    "DeliveryOptions",
    "backoff_delay",
]

logger = logging.getLogger("jdxmail.queue")
relay_log = logging.getLogger("jdxmail.relay")


class DeliveryEngine:
    """Delivers queued mail to the configured relays; a component of ``serve``."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        *,
        options: DeliveryOptions | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        counters: Counters | None = None,
    ) -> None:
        self.settings = settings
        #: relayed / deferred / bounced (shared with the server when it runs inline)
        self.counters = counters if counters is not None else Counters()
        self.spool = spool
        self.clock = clock
        delivery = options or DeliveryOptions.from_settings(settings.delivery)
        self.relays = RelayChoice(settings, delivery)
        #: delivered messages whose files are being removed (not to be picked up again)
        removing: set[str] = set()
        self.scheduler = Scheduler(
            spool, clock, being_removed=removing, on_flush=self.flush, on_retry=self.retry
        )
        self.delivery = MessageDelivery(
            settings,
            spool,
            options=delivery,
            relays=self.relays,
            scheduler=self.scheduler,
            removing=removing,
            clock=clock,
            rng=rng,
            counters=self.counters,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def pools(self) -> list[RelayPool]:
        """The relays' session pools, in the order they are tried."""
        return self.relays.pools

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Each relay's circuit breaker by name."""
        return self.relays.breakers

    @property
    def options(self) -> DeliveryOptions:
        """The ``Delivery`` section's options in use."""
        return self.delivery.options

    @property
    def lifetime(self) -> float:
        """Seconds a message may wait for a relay before it bounces."""
        return self.delivery.lifetime

    @property
    def retry_delay(self) -> float:
        """Seconds before the first retry."""
        return self.delivery.retry_delay

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Scan the spool (logging what a previous run left), start the workers.

        Raises AiosmtplibMismatch when the installed aiosmtplib lacks a member the
        relay uses, before any message is tried.
        """
        check_aiosmtplib()
        self.relays.warn_insecure()
        counts = await self.scheduler.recover()
        logger.info(
            "delivery engine: %d queued (%d being retried, %d due now), %d failed kept; relays: %s",
            counts["queued"],
            counts["retrying"],
            counts["due"],
            counts["failed"],
            ", ".join(p.name for p in self.pools) or "none",
        )
        self.spool.on_queued = self.enqueue
        self.delivery.start()
        # Twice as many workers as sessions: a message waiting for a busy session has
        # its commands sent right after the data of the message before (RelayPool.line_up)
        workers = max(1, 2 * self.relays.sessions())
        self._tasks = [asyncio.create_task(self.scheduler.run(), name="jdxmail-scheduler")]
        self._tasks += [
            asyncio.create_task(self._worker(), name=f"jdxmail-delivery-{n}")
            for n in range(workers)
        ]

    def reload(self, settings: Settings) -> None:
        """Relay the next attempts with *settings*' relays and Delivery section (SIGHUP).

        Attempts in progress finish with the relay they started with; a relay whose
        settings did not change keeps its sessions and its breaker. Nothing queued is
        touched: every message is tried at its next due time with the new relays
        (``queue flush`` makes that now).
        """
        delivery = DeliveryOptions.from_settings(settings.delivery)
        retired = self.relays.reload(settings, delivery)
        self.settings = settings
        self.delivery.configure(settings, delivery)
        if self._tasks and not self._stopping:
            workers = max(1, 2 * self.relays.sessions())
            self._tasks += [
                asyncio.create_task(self._worker(), name=f"jdxmail-delivery-{n}")
                for n in range(len(self._tasks) - 1, workers)
            ]
        relay_log.info(
            "relays reloaded: %s (%d retired)",
            ", ".join(f"{p.name} ({p.relay.host}:{p.relay.port})" for p in self.pools) or "none",
            retired,
        )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking messages; let attempts in progress finish within *grace* seconds."""
        self._stopping = True
        if self.spool.on_queued == self.enqueue:
            self.spool.on_queued = None
        self.scheduler.stop()
        tasks, self._tasks = self._tasks, []
        running = await self.scheduler.drain(grace)
        if running:
            logger.warning(
                "%d deliveries still running after %.0f s; they will be retried at the next start",
                running,
                grace,
            )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.relays.close()
        await self.delivery.close()

    def relay_health(self) -> list[RelayHealth]:
        """Each relay's breaker and last outcome, for the stats file."""
        return self.relays.health()

    def enqueue(self, queue_id: str) -> None:
        """A new message is in the spool: deliver it as soon as a worker is free.

        Announcing a message twice, or one being delivered, is harmless.
        """
        self.scheduler.enqueue(queue_id)

    def rescan(self) -> None:
        """Look for queued messages this engine was not told about, now."""
        self.scheduler.rescan_now()

    def retry(self, queue_ids: list[str]) -> None:
        """Deliver these messages now (``queue retry``), skipping breaker waits."""
        self.relays.reset_breakers()
        for queue_id in queue_ids:
            self.scheduler.enqueue(queue_id)

    def flush(self) -> None:
        """Make every queued message due now (``queue flush``), skipping breaker waits."""
        self.relays.reset_breakers()
        self.scheduler.all_due_now()

    async def wait_idle(self) -> None:
        """Return once nothing is being delivered and nothing is due now (for tests)."""
        await self.scheduler.wait_idle()

    @property
    def rescan_interval(self) -> float:
        """Seconds between scans of queue/ for messages nobody announced."""
        return self.scheduler.rescan_interval

    @rescan_interval.setter
    def rescan_interval(self, seconds: float) -> None:
        self.scheduler.rescan_interval = seconds

    async def _worker(self) -> None:
        while True:
            queue_id = await self.scheduler.next_message()
            try:
                if not self._stopping:
                    await self.delivery.deliver(queue_id)
            finally:
                self.scheduler.done(queue_id)
