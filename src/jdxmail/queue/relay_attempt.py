"""One attempt at one relay: the message as that relay gets it (the sender rewritten
to the relay account, a 7bit copy for a relay without 8BITMIME), a turn at the relay's
session pool, the exchange within the attempt's deadline, and the result recorded in
the message's delivery state.

:class:`~jdxmail.queue.message_delivery.MessageDelivery` calls :func:`attempt_at` for
each relay it tries, in order, and :func:`record_result` with what came back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiosmtplib

from jdxmail.data_encoding import has_bare_line_ending, to_crlf
from jdxmail.queue.eightbit import has_8bit, to_7bit
from jdxmail.queue.outcomes import EightBitUnsupported, Outcome, Stage, classify
from jdxmail.queue.pool import RelayPool
from jdxmail.queue.relay import (
    AttemptResult,
    Payload,
    RelayConnection,
    StageError,
    Transaction,
    rewrite_from_header,
)
from jdxmail.queue.relay_choice import DeliveryOptions, RelayChoice
from jdxmail.queue.spool import QueuedMessage, SpooledBody
from jdxmail.queue.state import DELIVERED, FAILED, PENDING, DeliveryState, RecipientState

__all__ = ["attempt_at", "needs_7bit_copy", "record_result", "spooled_has_8bit"]

relay_log = logging.getLogger("jdxmail.relay")


async def spooled_has_8bit(spooled: SpooledBody) -> bool:
    """Whether a big message left in its spool file has bytes above 127 (read in a
    thread, a piece at a time: never the whole message in memory). A message in memory
    is looked at with ``has_8bit`` directly, without a coroutine."""
    return await asyncio.to_thread(lambda: any(map(has_8bit, spooled.pieces())))


def needs_7bit_copy(
    result: AttemptResult | None, pool: RelayPool, eight_bit: bool, options: DeliveryOptions
) -> bool:
    """Whether *result* failed only for want of 8BITMIME, which a 7bit copy solves."""
    return (
        eight_bit
        and options.eight_bit_downgrade == "Convert"
        and result is not None
        and result.failure is not None
        and result.failure.status == "4.6.3"
        and pool.offers_8bitmime is False
    )


async def attempt_at(
    pool: RelayPool,
    message: QueuedMessage,
    recipients: list[str],
    eight_bit: bool,
    *,
    options: DeliveryOptions,
    relays: RelayChoice,
    clock: Callable[[], float],
) -> AttemptResult | None:
    """One attempt at *pool*'s relay, within the total deadline of an attempt.

    Waits for a turn at the relay first (not counted in the deadline); None when
    the relay's breaker opened meanwhile. A reused session that the relay closed
    while idle is replaced once, silently. 8-bit data for a relay known to lack
    8BITMIME is sent as a 7bit copy when ``Delivery.EightBitDowngrade`` is ``Convert``.
    """
    tx = _transaction_for(pool, message, recipients, eight_bit, options)
    if isinstance(tx, AttemptResult):
        return tx
    if eight_bit and pool.offers_8bitmime is False and options.eight_bit_downgrade == "Convert":
        refused = await _convert_to_7bit(pool, message, tx)
        if refused is not None:
            return refused
    # a session whose previous message sent tx's commands after its data, or None
    sent_ahead_on = await pool.turn(tx)
    if sent_ahead_on is None and not relays.breakers[pool.name].allows(clock()):
        pool.end_turn()
        return None
    return await _send(pool, tx, sent_ahead_on)


def _transaction_for(
    pool: RelayPool,
    message: QueuedMessage,
    recipients: list[str],
    eight_bit: bool,
    options: DeliveryOptions,
) -> Transaction | AttemptResult:
    """The transaction *pool*'s relay gets, or the failed result when none can be made."""
    try:
        mail_from, data = _as_sent(pool, message, options)
    except Exception as exc:  # (a big message's file could not be read for rewriting)
        return AttemptResult(pool.name, failure=classify(Stage.CONNECT, exc))
    tx = Transaction(mail_from, recipients, data, message.mail_options)
    tx.eight_bit = eight_bit
    # (a rewritten From: header is a new data, searched as before)
    tx.dot_lines = message.dot_lines or data is not message.data
    return tx


async def _convert_to_7bit(
    pool: RelayPool, message: QueuedMessage, tx: Transaction
) -> AttemptResult | None:
    """Make *tx*'s data a 7bit copy for a relay without 8BITMIME; the failed result
    when none can be made."""
    try:
        tx.data = await asyncio.to_thread(_seven_bit_copy, tx.data)
    except Exception as exc:  # (a message the MIME parser cannot take apart)
        reason = f"no 7bit copy of the 8-bit message could be made ({exc})"
        return AttemptResult(pool.name, failure=classify(Stage.MAIL, EightBitUnsupported(reason)))
    tx.eight_bit = False
    tx.dot_lines = True  # (a new data: searched as before)
    relay_log.info(
        "%s: %s offers no 8BITMIME; sending a 7bit copy (quoted-printable/base64)",
        message.queue_id,
        pool.name,
        extra={"session": message.session_id},
    )
    return None


async def _send(
    pool: RelayPool, tx: Transaction, sent_ahead_on: RelayConnection | None
) -> AttemptResult:
    """Send *tx* on *sent_ahead_on*, the session its commands went out on already
    (None: take one), within the deadline; the turn at the relay ends here, whatever
    happens."""
    deadline = pool.step_timeout * 10
    retried = False
    while True:
        connection, sent_ahead_on = sent_ahead_on, None
        reused = False
        try:
            with pool.deadlines.deadline(deadline):
                if connection is None:
                    connection = await pool.acquire()
                reused = connection.messages > 0
                result = await connection.send(tx, pool)
        except StageError as exc:
            pool.release(connection, healthy=False, tx=tx)
            return AttemptResult(pool.name, failure=classify(exc.stage, exc.cause))
        except aiosmtplib.SMTPNotSupported as exc:  # (found before a command was sent)
            pool.release(connection, healthy=True, tx=tx)
            return AttemptResult(pool.name, failure=classify(Stage.MAIL, exc))
        except Exception as exc:  # the session broke or the deadline passed
            stage = Stage.CONNECT
            if connection is not None:
                stage = tx.stage
                dropped = isinstance(exc, ConnectionError | aiosmtplib.SMTPServerDisconnected)
                if reused and dropped and stage is Stage.MAIL and not retried:
                    connection.client.close()  # (keeping the turn for a new session)
                    retried = True
                    continue
            pool.release(connection, healthy=False, tx=tx)
            if isinstance(exc, TimeoutError) and not str(exc):
                exc = TimeoutError(f"no answer within {deadline:g} s")
            return AttemptResult(pool.name, failure=classify(stage, exc))
        except BaseException:  # cancelled (stop): the turn passes on
            pool.release(connection, healthy=False, tx=tx)
            raise
        pool.release(connection, healthy=True, tx=tx)
        return result


def _as_sent(
    pool: RelayPool, message: QueuedMessage, options: DeliveryOptions
) -> tuple[str, Payload]:
    """The envelope sender and data for *pool*'s relay, rewritten if configured."""
    data: Payload = message.spooled if message.spooled is not None else message.data
    account = pool.relay.username or ""
    if "@" not in account or not message.mail_from:
        return message.mail_from, data
    mail_from = account if options.rewrite_sender else message.mail_from
    if options.rewrite_from:
        whole = data.read() if isinstance(data, SpooledBody) else data
        data = rewrite_from_header(whole, account)
    return mail_from, data


def _seven_bit_copy(data: Payload) -> bytes:
    """A 7bit copy of *data* (read whole if spooled), CRLF line endings only as every
    Payload has; CPU work: call in a thread."""
    copy = to_7bit(data.read() if isinstance(data, SpooledBody) else data)
    return to_crlf(copy) if has_bare_line_ending(copy) else copy


def record_result(
    message: QueuedMessage,
    state: DeliveryState,
    result: AttemptResult,
    now: float,
    *,
    more_relays: bool,
) -> bool:
    """Record *result* in *state*; log it under Relay; True if anything was delivered.

    *more_relays*: whether other relays are configured (the log says one is tried next).
    """
    state.last_relay = result.relay
    if result.failure is not None:
        _record_failure(message, state, result, now, more_relays=more_relays)
        return False
    return _record_recipients(message, state, result, now)


def _record_failure(
    message: QueuedMessage,
    state: DeliveryState,
    result: AttemptResult,
    now: float,
    *,
    more_relays: bool,
) -> None:
    """The attempt failed as a whole: every pending recipient gets its verdict."""
    failure = result.failure
    assert failure is not None
    state.last_reply = failure.text
    bounce = failure.outcome is Outcome.BOUNCE
    for recipient in state.pending():
        state.recipients[recipient] = RecipientState(
            status=FAILED if bounce else PENDING,
            code=failure.status,
            reply=failure.text,
            relay=result.relay,
            at=now,
        )
    relay_log.log(
        logging.WARNING,
        "%s: relay %s %s: %s [%s]%s",
        message.queue_id,
        result.relay,
        "refused the message" if bounce else "failed",
        failure.text,
        failure.row,
        "; trying the next relay" if failure.failover and more_relays else "",
        extra={"session": message.session_id},
    )


def _record_recipients(
    message: QueuedMessage, state: DeliveryState, result: AttemptResult, now: float
) -> bool:
    """Each recipient's own outcome; True if any was delivered."""
    queue_id = message.queue_id
    extra = {"session": message.session_id}
    delivered: list[str] = []
    for item in result.recipients:
        # the state a recipient is left in after the outcome (by identity: a dict keyed
        # by the Enum would hash it with a Python call)
        outcome = item.outcome
        status = (
            DELIVERED
            if outcome is Outcome.DELIVERED
            else FAILED
            if outcome is Outcome.BOUNCE
            else PENDING
        )
        state.recipients[item.recipient] = RecipientState(
            status=status, code=item.status, reply=item.reply, relay=result.relay, at=now
        )
        if outcome is Outcome.DELIVERED:
            delivered.append(item.recipient)
        else:
            relay_log.warning(
                "%s: relay %s refused <%s>%s: %s",
                queue_id,
                result.relay,
                item.recipient,
                " for now" if item.outcome is Outcome.RETRY else "",
                item.reply,
                extra=extra,
            )
    state.last_reply = result.final_reply or (
        result.recipients[-1].reply if result.recipients else ""
    )
    if delivered:
        relay_log.info(
            "%s: delivered to %s via %s: %s",
            queue_id,
            f"<{delivered[0]}>" if len(delivered) == 1 else ", ".join(f"<{r}>" for r in delivered),
            result.relay,
            result.final_reply,
            extra=extra,
        )
    return bool(delivered)
