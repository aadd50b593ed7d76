"""The delivery of one message: claim and read it, try the relays in order, record
each recipient's outcome, then reschedule it, bounce what failed, or remove it.

The engine's workers call :meth:`MessageDelivery.deliver` with a queue id the
:class:`~jdxmail.queue.scheduler.Scheduler` says is due. The queue file stays locked
(an exclusive ``flock``) from the claim until it is removed or closed, so several
processes and the ``queue`` CLI can share the spool.

Crash safety: the queue file is removed only after every recipient is resolved and
any bounce is durably stored, so a SIGKILL at any moment loses nothing; a message
that was being handed over when the process died is sent again (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from jdxmail.queue.batching import CallThread
from jdxmail.queue.bounce import EXPIRED_STATUS, human_duration, move_to_failed, store_bounce
from jdxmail.queue.claimed import (
    ClaimedMessage,
    claim_message,
    move_corrupt,
    quarantine,
    read_claimed,
)
from jdxmail.queue.eightbit import has_8bit
from jdxmail.queue.pool import RelayPool
from jdxmail.queue.quota import QuotaBook, next_utc_midnight
from jdxmail.queue.relay import (
    AttemptResult,
)
from jdxmail.queue.relay_attempt import (
    attempt_at,
    needs_7bit_copy,
    record_result,
    spooled_has_8bit,
)
from jdxmail.queue.relay_choice import CircuitBreaker, DeliveryOptions, RelayChoice, backoff_delay
from jdxmail.queue.scheduler import Scheduler
from jdxmail.queue.spool import (
    QueuedMessage,
    Spool,
    SpoolError,
)
from jdxmail.queue.state import (
    FAILED,
    DeliveryState,
    RecipientState,
    write_json_atomic,
)
from jdxmail.settings.model import Settings
from jdxmail.stats import LATENCY_BUCKETS, Counters

__all__ = ["MessageDelivery"]

logger = logging.getLogger("jdxmail.queue")
relay_log = logging.getLogger("jdxmail.relay")

#: seconds before trying again a queue file that another holds locked
_LOCKED_RETRY = 1.0
#: unexpected errors on one message before it is moved to corrupt/
_MAX_CRASHES = 3


#: failure statuses of a relay lacking what the message needs → the bounce's status
#: and reason when no relay has it
_LACKING = {
    "4.6.7": ("5.6.7", "the message needs SMTPUTF8 and no relay offers it"),
    "4.6.3": (
        "5.6.3",
        "the message has 8-bit content and no relay offers 8BITMIME "
        "(Delivery.EightBitDowngrade is Bounce, or no 7bit copy could be made)",
    ),
}


def _io_reason(exc: OSError) -> str:
    """What an I/O error means, for the log (``the disk is full: /path``)."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}.get(
        exc.errno or 0, exc.strerror or str(exc)
    )
    return f"{reason}: {exc.filename}" if exc.filename else reason


def _discard_loaded(result: object) -> None:
    """Close the descriptor of a claimed message nobody waits for any more."""
    if isinstance(result, ClaimedMessage) and result.fd >= 0:
        os.close(result.fd)
        result.fd = -1


@dataclass(slots=True)
class _RelayTries:
    """What trying the relays for one message came to."""

    #: an attempt reached a relay (else every relay was skipped)
    tried: bool = False
    #: until when, and why, the relays that were skipped wait
    waits: list[tuple[float, str]] = field(default_factory=list)
    #: the failure statuses of relays lacking what the message needs (SMTPUTF8, or
    #: 8BITMIME when a 7bit copy is not made)
    lacking: list[str] = field(default_factory=list)


class MessageDelivery:
    """Delivers one due message at a time (each worker calls :meth:`deliver`)."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        *,
        options: DeliveryOptions,
        relays: RelayChoice,
        scheduler: Scheduler,
        removing: set[str],
        clock: Callable[[], float],
        rng: Callable[[], float],
        counters: Counters,
    ) -> None:
        self.spool = spool
        self.relays = relays
        self.scheduler = scheduler
        self.clock = clock
        self.rng = rng
        #: relayed / deferred / bounced (shared with the server when it runs inline)
        self.counters = counters
        self.configure(settings, options)
        #: delivered messages whose files are being removed (by the file thread)
        self._removing = removing
        self._crashes: dict[str, int] = {}
        #: claims, reads and removals of spool files, batched (None when stopped)
        self._files: CallThread | None = None
        self.quota = QuotaBook(spool.spool_dir)

    def configure(self, settings: Settings, options: DeliveryOptions) -> None:
        """Take the retry schedule, rewriting and host names of *settings* / *options*."""
        self.options = options
        self.lifetime = float(options.message_lifetime)
        self.retry_delay = float(options.retry_delay)
        self.retry_max_delay = float(options.retry_max_delay)
        server = settings.smtp_server
        self.host_name = server.effective_host_name
        self.local_domains = {d.lower() for d in server.effective_local_domains}

    @property
    def pools(self) -> list[RelayPool]:
        """The relays' session pools, in the order they are tried."""
        return self.relays.pools

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Each relay's circuit breaker by name."""
        return self.relays.breakers

    def start(self) -> None:
        """Start the file thread (in the running loop)."""
        self._files = CallThread(
            asyncio.get_running_loop(), "jdxmail-delivery-files", _discard_loaded
        )
        self.spool.files.offload = self._files.submit

    async def close(self) -> None:
        """Finish the file work submitted, then stop the file thread."""
        if self._files is not None:
            files, self._files = self._files, None
            self.spool.files.offload = None
            await asyncio.to_thread(files.close)

    def _signal_idle(self) -> None:
        self.scheduler.signal_idle()

    async def deliver(self, queue_id: str) -> None:
        """Deliver *queue_id* once, or schedule it for later: when every relay rests,
        when the disk fails, when it crashed (the third crash moves it to corrupt/)."""
        try:
            resting = self.relays.resting(self.clock())
            if resting is None:
                await self._claim_and_attempt(queue_id)
            else:
                # Every relay is being skipped after repeated failures: the message
                # waits in memory, its file untouched, so a big queue behind a dead
                # relay costs no file work and no log lines per cool-down.
                self.scheduler.schedule(queue_id, resting)
        except asyncio.CancelledError:
            raise
        except OSError as exc:
            # The disk is full, a write failed: the message and what it was told
            # so far stay as they were on disk (at worst a recipient is sent to
            # twice), and it is tried again later — not a crash to quarantine for.
            logger.error(
                "%s: could not write the delivery state (%s); trying again in %.0f s",
                queue_id,
                _io_reason(exc),
                self.retry_delay,
            )
            self.scheduler.schedule(queue_id, self.clock() + self.retry_delay)
        except Exception:
            crashes = self._crashes.get(queue_id, 0) + 1
            self._crashes[queue_id] = crashes
            if crashes < _MAX_CRASHES:
                logger.exception("%s: delivery failed unexpectedly; retrying later", queue_id)
                self.scheduler.schedule(queue_id, self.clock() + self.retry_delay)
            else:
                logger.exception(
                    "%s: delivery failed unexpectedly %d times; moving it to %s",
                    queue_id,
                    crashes,
                    self.spool.corrupt_dir,
                )
                del self._crashes[queue_id]
                await asyncio.to_thread(quarantine, self.spool, queue_id)

    # -- one message -----------------------------------------------------------------

    async def _claim_and_attempt(self, queue_id: str) -> None:
        """Claim, read and attempt *queue_id*; a corrupt one is moved aside."""
        # A small file is claimed and read right here: a few short system calls cost
        # less than a thread hop; a big message is read off the event loop.
        loaded = claim_message(self.spool, queue_id)
        if loaded is None:
            if os.access(self.spool.queue_file(queue_id), os.F_OK):
                # Locked by another for now (a delivery process sharing the spool,
                # the queue command): look again soon rather than at the next rescan.
                self.scheduler.schedule(queue_id, self.clock() + _LOCKED_RETRY)
            return
        if loaded.message is None and not loaded.corrupt:
            claimed, files = loaded, self._files
            if files is None:
                await asyncio.to_thread(read_claimed, self.spool, claimed, queue_id)
            else:
                await files.submit(lambda: read_claimed(self.spool, claimed, queue_id))
        try:
            if loaded.corrupt:
                await asyncio.to_thread(move_corrupt, self.spool, queue_id)
                logger.error(
                    "%s: spool file is corrupt (%s); moved to %s",
                    queue_id,
                    loaded.corrupt,
                    self.spool.corrupt_dir,
                )
                return
            assert loaded.message is not None
            assert loaded.state is not None
            for note in loaded.notes:
                logger.warning("%s: %s", queue_id, note)
            await self._attempt_message(loaded.message, loaded.state, loaded)
        finally:
            if loaded.fd >= 0:
                os.close(loaded.fd)

    async def _attempt_message(
        self, message: QueuedMessage, state: DeliveryState, loaded: ClaimedMessage
    ) -> None:
        """Try the relays for *message*'s pending recipients, then give up on what
        cannot be sent, and reschedule the rest or finish the message."""
        now = self.clock()
        if not state.first_try:
            state.first_try = now
        tries = await self._try_relays(message, state, now)
        now = self.clock()
        if not tries.tried and (resting := self.relays.resting(now)) is not None:
            # Every relay's breaker opened while this one waited for a turn: it waits in
            # memory like the messages behind it (see deliver), its files untouched.
            self.scheduler.schedule(message.queue_id, resting)
            return
        if tries.tried:
            state.attempts += 1
            state.last_try = now
        if state.has_pending():  # (else nothing is left to fail or expire)
            self._fail_what_no_relay_can_carry(state, tries.lacking, now)
            self._expire(message, state, now)
        if state.has_pending():
            await self._reschedule(message, state, tries.tried, tries.waits, now)
        elif state.has_failed():
            await self._bounce_and_keep(message, state)
        else:
            self._finish(message, loaded)

    async def _try_relays(
        self, message: QueuedMessage, state: DeliveryState, now: float
    ) -> _RelayTries:
        """Try the relays in order until the pending recipients are resolved or a
        failure says not to go on; skip those resting or out of quota."""
        tries = _RelayTries()
        spooled = message.spooled
        eight_bit = has_8bit(message.data) if spooled is None else await spooled_has_8bit(spooled)
        breakers = self.relays.breakers
        for pool in self.relays.pools:
            pending = state.pending()
            if not pending:
                break
            breaker = breakers[pool.name]
            if not breaker.allows(now):
                tries.waits.append(
                    (breaker.open_until, f"{pool.name} skipped after repeated failures")
                )
                continue
            if pool.relay.daily_quota is not None and not await self._take_quota(
                pool, message, now, tries
            ):
                continue
            result = await self._attempt(pool, message, pending, eight_bit)
            if needs_7bit_copy(result, pool, eight_bit, self.options):
                # the relay's EHLO said no 8BITMIME on this first session: a 7bit copy
                result = await self._attempt(pool, message, pending, eight_bit)
            if result is None:  # the breaker opened while it waited for a turn
                await self._give_quota_back(pool, now)
                tries.waits.append(
                    (breaker.open_until, f"{pool.name} skipped after repeated failures")
                )
                continue
            tries.tried = True
            delivered = record_result(
                message, state, result, self.clock(), more_relays=len(self.relays.pools) > 1
            )
            if not delivered:
                await self._give_quota_back(pool, now)
            if not self._judge(pool, breaker, result, tries):
                break
        return tries

    def _attempt(
        self, pool: RelayPool, message: QueuedMessage, recipients: list[str], eight_bit: bool
    ) -> Coroutine[None, None, AttemptResult | None]:
        return attempt_at(
            pool,
            message,
            recipients,
            eight_bit,
            options=self.options,
            relays=self.relays,
            clock=self.clock,
        )

    async def _take_quota(
        self, pool: RelayPool, message: QueuedMessage, now: float, tries: _RelayTries
    ) -> bool:
        """Count one message against *pool*'s daily quota (it has one); False (and a
        wait noted in *tries*) when it is spent."""
        quota = pool.relay.daily_quota
        assert quota is not None
        if await asyncio.to_thread(self.quota.take, pool.name, quota, now):
            return True
        tries.waits.append((next_utc_midnight(now), f"{pool.name} daily quota of {quota} spent"))
        relay_log.info(
            "%s: %s daily quota of %d spent; next relay",
            message.queue_id,
            pool.name,
            quota,
            extra={"session": message.session_id},
        )
        return False

    async def _give_quota_back(self, pool: RelayPool, now: float) -> None:
        """Nothing went out through *pool*: the message no longer counts in its quota."""
        if pool.relay.daily_quota is not None:
            await asyncio.to_thread(self.quota.give_back, pool.name, now)

    def _judge(
        self, pool: RelayPool, breaker: CircuitBreaker, result: AttemptResult, tries: _RelayTries
    ) -> bool:
        """Count *result* and tell the relay's breaker (its outcome was recorded with
        record_result); True when the next relay is to be tried."""
        failure = result.failure
        outcome = (
            "delivered" if failure is None else "failed" if failure.trips_breaker else "refused"
        )
        self.counters.count(
            "jdxmail_delivery_attempts_total", (("relay", pool.name), ("outcome", outcome))
        )
        if failure is None:
            breaker.success(self.clock())
            return False
        if failure.status in _LACKING:
            tries.lacking.append(failure.status)
        if failure.trips_breaker:
            breaker.failure(self.clock(), failure.text)
        else:
            breaker.refused(self.clock(), failure.text)
        return failure.failover

    def _fail_what_no_relay_can_carry(
        self, state: DeliveryState, lacking: list[str], now: float
    ) -> None:
        """When every relay lacks what the message needs, its pending recipients fail."""
        pending = state.pending()
        if not (pending and lacking and len(lacking) == len(self.pools)):
            return
        # RFC 6531 §3.2 / RFC 6152: no relay can carry it, so it bounces now rather
        # than in 5 days
        code, reply = _LACKING["4.6.7" if "4.6.7" in lacking else "4.6.3"]
        for recipient in pending:
            state.recipients[recipient] = RecipientState(
                status=FAILED, code=code, reply=reply, relay=state.last_relay, at=now
            )

    def _expire(self, message: QueuedMessage, state: DeliveryState, now: float) -> None:
        """When the message outlived its lifetime, its pending recipients fail."""
        pending = state.pending()
        if not pending or now - message.received_at < self.lifetime:
            return
        lifetime = human_duration(self.lifetime)
        for recipient in pending:
            last = state.recipients[recipient]
            reply = last.reply or state.last_reply or "no relay could be reached"
            state.recipients[recipient] = RecipientState(
                status=FAILED,
                code=EXPIRED_STATUS,
                reply=f"message expired after {lifetime} in the queue; last reply: {reply}",
                relay=last.relay,
                at=now,
            )

    async def _reschedule(
        self,
        message: QueuedMessage,
        state: DeliveryState,
        tried: bool,
        waits: list[tuple[float, str]],
        now: float,
    ) -> None:
        if tried:
            self.counters.deferred += 1
            delay = backoff_delay(state.attempts, self.retry_delay, self.retry_max_delay, self.rng)
            state.next_try = now + delay
            state.waiting_for = ""
        elif waits:
            until = min(waits)[0]
            state.next_try = max(until, now + 1.0)
            state.waiting_for = "; ".join(w for _, w in waits)
        else:
            state.next_try = now + self.retry_delay
            state.waiting_for = "no relay available" if state.pending() else "storing the bounce"
        path = self.spool.state_path(message.queue_id)
        await asyncio.to_thread(write_json_atomic, path, state.to_json())
        self.scheduler.schedule(message.queue_id, state.next_try)
        logger.info(
            "%s: %d recipient(s) still pending after %d attempt(s); next try in %.0f s%s",
            message.queue_id,
            len(state.pending()),
            state.attempts,
            state.next_try - now,
            f" ({state.waiting_for})" if state.waiting_for else "",
            extra={"session": message.session_id},
        )

    def _finish(self, message: QueuedMessage, loaded: ClaimedMessage) -> None:
        """Every recipient is delivered: count it and remove the message."""
        self.counters.relayed += 1
        self.counters.observe(
            "jdxmail_delivery_latency_seconds",
            max(0.0, self.clock() - message.received_at),
            LATENCY_BUCKETS,
        )
        self._remove_later(message.queue_id, loaded)

    async def _bounce_and_keep(self, message: QueuedMessage, state: DeliveryState) -> None:
        """Bounce the failed recipients not bounced yet, then keep the message in
        failed/; if the bounce cannot be stored, the message is tried again later."""
        failed = state.failed()
        if not await self._bounce(message, state):
            await self._reschedule(message, state, False, [], self.clock())
            return
        state.bounced = sorted(set(state.bounced) | set(failed))
        await asyncio.to_thread(move_to_failed, self.spool, message, state, self.clock())
        self.counters.bounced += 1
        logger.warning(
            "%s: kept in %s (%d failed, %d delivered)",
            message.queue_id,
            self.spool.failed_dir,
            len(failed),
            len(state.delivered()),
            extra={"session": message.session_id},
        )

    async def _bounce(self, message: QueuedMessage, state: DeliveryState) -> bool:
        """Store the bounce the sender is owed, if any; False if it could not be stored."""
        queue_id = message.queue_id
        extra = {"session": message.session_id}
        unbounced = state.unbounced()
        if message.mail_from and unbounced:
            try:
                await store_bounce(
                    self.spool,
                    message,
                    unbounced,
                    reporting_host=self.host_name,
                    local_domains=self.local_domains,
                    relay_hosts=self.relays.hosts,
                    clock=self.clock,
                )
            except SpoolError as exc:
                logger.error(
                    "%s: could not store the bounce (%s); trying again later",
                    queue_id,
                    exc,
                    extra=extra,
                )
                return False
        elif not message.mail_from:
            logger.warning(
                "%s: %d recipient(s) failed; no bounce for a message from <>",
                queue_id,
                len(state.failed()),
                extra=extra,
            )
        else:
            logger.warning(
                "%s: %d recipient(s) failed again; the sender had a bounce for them already",
                queue_id,
                len(state.failed()),
                extra=extra,
            )
        return True

    def _remove_later(self, queue_id: str, loaded: ClaimedMessage) -> None:
        """Hand the delivered message's queue file back to the spool's recycler, or have
        the file thread remove it (the worker does not wait for that).

        A file the recycler keeps is renamed right here (microseconds), so its lock is
        gone before the server can reuse it for a new message that this engine would
        then find locked. Removing a file frees its blocks, which waits for the disk:
        a pause of the whole event loop, so that goes to the file thread. The queue
        file stays locked until it is moved or gone, so no other process picks it up,
        and a crash before that only means the message is sent again (at least once).
        """
        files = self._files
        fd, loaded.fd = loaded.fd, -1
        had_state, size = loaded.had_state, loaded.size
        if files is None or self.spool.files.keeps(size):
            self._remove(queue_id, fd, had_state=had_state, size=size)
            return
        self._removing.add(queue_id)
        future = files.submit(lambda: self._remove(queue_id, fd, had_state=had_state, size=size))
        future.add_done_callback(lambda _: self._removed(queue_id))

    def _removed(self, queue_id: str) -> None:
        self._removing.discard(queue_id)
        self._signal_idle()

    def _remove(self, queue_id: str, fd: int, *, had_state: bool, size: int) -> None:
        """Remove a delivered message's files, its queue file through the recycler."""
        try:
            self.spool.files.give(self.spool.queue_file(queue_id), size)
            if had_state:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spool.state_file(queue_id))
        except OSError as exc:
            logger.warning(
                "%s: delivered, but its spool file could not be removed (%s); it will be "
                "sent again after a restart",
                queue_id,
                exc,
            )
        finally:
            # (for an unlinked file this close frees its blocks: the caller runs
            # those on the file thread)
            os.close(fd)
