"""The sessions to one relay, and the pipelined hand-off between messages.

A :class:`RelayPool` gives each message a turn at its relay (at most ``size`` at a
time), a session (an idle one, else a new one: connect, TLS, EHLO, AUTH) and keeps the
session for the next message. While a message's data goes out, the first message
waiting for a turn has its MAIL, RCPT and DATA sent right behind it (RFC 2920 §3.1):
:meth:`RelayPool.line_up` chooses it, :meth:`RelayPool.release` hands it the session
when the message before is done, or a plain turn if that session broke. Which message
follows which is this module's alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass

import aiosmtplib

from jdxmail.client_tls import client_tls_context
from jdxmail.eventloop import kept_loop
from jdxmail.queue.deadlines import DeadlineWatch
from jdxmail.queue.outcomes import RelayUnusable, Stage
from jdxmail.queue.relay import RelayConnection, StageError, Transaction
from jdxmail.settings.model import RelaySettings

__all__ = ["RelayPool"]


@dataclass(eq=False, slots=True)
class _Waiter:
    """A transaction waiting for a turn at a relay (see RelayPool.turn)."""

    transaction: Transaction
    #: resolves to a session handed on (commands sent ahead) or None (a free turn)
    future: asyncio.Future[RelayConnection | None]


class RelayPool:
    """Reusable sessions to one relay, at most *size* at a time."""

    def __init__(
        self,
        relay: RelaySettings,
        *,
        local_hostname: str,
        step_timeout: float,
        size: int,
    ) -> None:
        self.relay = relay
        #: the relay's display name
        self.name = relay.display_name
        self.local_hostname = local_hostname
        self.step_timeout = step_timeout
        self.size = size
        #: turns not taken: at most *size* transactions use this relay at a time
        self._free = size
        self._waiting: collections.deque[_Waiter] = collections.deque()
        #: a transaction → the waiting one whose commands went out after its data:
        #: the session is handed to that one when the first is done (see release)
        self._successors: dict[Transaction, _Waiter] = {}
        self._idle: list[RelayConnection] = []
        self._context = client_tls_context(relay.ca_file, verify=relay.verify_certificate)
        #: whether the relay offered 8BITMIME in its last EHLO (None: not known yet)
        self.offers_8bitmime: bool | None = None
        #: set when a reload removed this relay: sessions are closed, not kept
        self._retired = False
        #: the deadlines of the attempts in progress here
        self.deadlines = DeadlineWatch()
        #: the loop the turns are waited for in (see turn)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect(self) -> RelayConnection:
        """A new session: connect, TLS as configured, EHLO, AUTH. Raises StageError."""
        relay = self.relay
        implicit = relay.implicit_tls
        client = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            local_hostname=self.local_hostname,
            use_tls=implicit,
            start_tls=False,
            tls_context=self._context if relay.use_tls else None,
            timeout=self.step_timeout,
        )
        stage = Stage.TLS if implicit else Stage.CONNECT
        try:
            await client.connect()
            stage = Stage.EHLO
            await client.ehlo()
            if relay.use_tls and not implicit:
                stage = Stage.TLS
                if not client.supports_extension("starttls"):
                    raise RelayUnusable(
                        f"{relay.display_name} does not offer STARTTLS and UseTls is true; "
                        "not sending in plaintext",
                        stage=Stage.TLS,
                        status="4.7.10",
                    )
                await client.starttls(server_hostname=relay.host, tls_context=self._context)
                stage = Stage.EHLO
                await client.ehlo()
            self.offers_8bitmime = client.supports_extension("8bitmime")
            if relay.username:
                stage = Stage.AUTH
                await self._login(client)
        except Exception as exc:
            with contextlib.suppress(Exception):
                client.close()
            raise StageError(stage, exc) from exc
        except BaseException:
            with contextlib.suppress(Exception):
                client.close()
            raise
        return RelayConnection(relay, client)

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        relay = self.relay
        assert relay.username is not None
        password = relay.password.get_secret_value() if relay.password is not None else ""
        offered = client.server_auth_methods
        if not client.supports_extension("auth") or not offered:
            raise RelayUnusable(
                f"{relay.display_name} does not offer AUTH on this connection "
                f"({'TLS' if relay.use_tls else 'plaintext'}); check UseTls and Port",
                stage=Stage.AUTH,
                status="4.7.0",
            )
        if "plain" in offered:
            await client.auth_plain(relay.username, password)
        elif "login" in offered:
            await client.auth_login(relay.username, password)
        else:
            raise RelayUnusable(
                f"{relay.display_name} offers AUTH {' '.join(m.upper() for m in offered)}; "
                "jdxmail speaks PLAIN and LOGIN",
                stage=Stage.AUTH,
                status="4.7.0",
            )

    async def turn(self, tx: Transaction) -> RelayConnection | None:
        """Wait for *tx*'s turn at this relay (one of *size*); no time limit.

        Returns a session whose previous message sent *tx*'s commands after its data
        (:meth:`RelayConnection.send` then sends only *tx*'s data), or None: take a
        session with :meth:`acquire`.
        The turn ends with :meth:`release` (or :meth:`end_turn` without a session).
        """
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return None
        loop = self._loop = kept_loop(self._loop)
        waiter = _Waiter(tx, loop.create_future())
        self._waiting.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                session = waiter.future.result()  # the turn came as the task was cancelled
                if session is not None:
                    session.client.close()  # tx's commands were sent on it: unusable
                self.end_turn()
            # else: lined up behind a message still sending, which sees the
            # cancelled future when done and ends the turn itself (see release)
            raise

    def line_up(self, connection: RelayConnection, tx: Transaction) -> bytes:
        """The commands of the first waiting transaction, to send after *tx*'s data.

        That transaction becomes *tx*'s successor: when *tx* is done, :meth:`release`
        hands it the session. Returns b"" when none waits or it cannot go ahead
        (it then keeps its place for an ordinary turn).
        """
        if tx in self._successors:
            return b""
        while self._waiting:
            waiter = self._waiting[0]
            if waiter.future.done():
                self._waiting.popleft()
                continue
            try:
                commands = connection.prepare_ahead(waiter.transaction)
            except (aiosmtplib.SMTPException, ValueError, UnicodeError):
                return b""  # (its own attempt meets the same error, and reports it)
            if not commands:
                return b""
            self._waiting.popleft()
            self._successors[tx] = waiter
            return commands
        return b""

    async def acquire(self) -> RelayConnection:
        """An idle session if one is still alive, else a new one. Raises StageError."""
        while self._idle:
            connection = self._idle.pop()
            if connection.client.is_connected:
                return connection
            await connection.close()
        return await self.connect()

    def release(
        self, connection: RelayConnection | None, *, healthy: bool, tx: Transaction
    ) -> None:
        """*tx* is done with *connection* (None: it got none): keep it (or drop it) and
        end the turn.

        A successor lined up by *tx* gets the session; if the session broke, it gets
        a plain turn instead and sends its commands again on another session.
        """
        if connection is None:  # (a successor is only lined up on a session)
            self.end_turn()
            return
        alive = healthy and connection.client.is_connected
        successor = self._successors.pop(tx, None)
        if successor is not None:
            if successor.future.done():  # its attempt was cancelled meanwhile
                connection.client.close()  # it has a transaction open there
                self.end_turn()
            elif alive:
                successor.future.set_result(connection)
            else:
                connection.client.close()  # (its commands go out again on another)
                successor.future.set_result(None)
            return
        if alive and not self._retired:
            self._idle.append(connection)
        else:
            connection.client.close()
        self.end_turn()

    def retire(self) -> None:
        """This relay is no longer used (a reload): sessions still in use are closed
        when their attempt is done instead of being kept."""
        self._retired = True

    def end_turn(self) -> None:
        """A turn is over: the next waiting transaction gets it, else it is free."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)
                return
        self._free += 1

    async def close(self) -> None:
        """QUIT every idle session."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.close() for c in idle))
