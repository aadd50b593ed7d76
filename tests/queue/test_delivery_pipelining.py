"""The pipelined hand-off between messages on one relay session: one write per
transaction, the next message's commands after the data before it, sessions lost or
refused in between."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from tests.conftest import BOTH_LOOPS
from tests.queue.conftest import (
    BOTH_WAYS,
    RunEngine,
    StartUpstream,
    UpstreamSpec,
    ca_file,
    message,
    raw_upstream,
    relay_for,
    settings_for,
    silent_upstream,
    state_of,
)

from jdxmail.queue.spool import Spool, read_queued_message, spool_stats
from jdxmail.queue.worker import DeliveryOptions


async def test_pipelined_transaction_is_sent_in_one_write(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """With PIPELINING, MAIL, every RCPT and DATA go out together; the data is exact."""
    upstream = await upstream_factory(UpstreamSpec(pipelining=True))
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    sent = message(to=("a@example.net", "b@example.net", "c@example.net"), body=b".dot\r\nx\r\n")
    await running.spool.store(sent)
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert upstream.pipelined == 1
    assert upstream.received[0].rcpt_tos == ["a@example.net", "b@example.net", "c@example.net"]
    assert upstream.received[0].data == sent.data


@pytest.mark.parametrize(
    ("spec", "queued", "failed"),
    [
        (UpstreamSpec(pipelining=True, mail_reply="550 5.7.1 sender not allowed"), 0, 1),
        (UpstreamSpec(pipelining=True, mail_reply="451 4.7.1 greylisted"), 1, 0),
        (UpstreamSpec(pipelining=True, rcpt_replies={"bob@example.net": "550 5.1.1 no"}), 0, 1),
    ],
    ids=["MAIL 5xx bounces", "MAIL 4xx retries", "only recipient refused"],
)
async def test_pipelined_refusals_send_no_data(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    spec: UpstreamSpec,
    queued: int,
    failed: int,
) -> None:
    """A refused MAIL or every RCPT refused: the body is never sent, the verdict holds."""
    upstream = await upstream_factory(spec)
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    await running.spool.store(message(sender=""))
    await running.engine.wait_idle()
    assert upstream.pipelined == 1
    assert upstream.received == []
    stats = spool_stats(running.spool.spool_dir)
    assert (stats.queued, stats.failed) == (queued, failed)


@BOTH_WAYS
async def test_session_closed_by_the_relay_while_idle_is_replaced_quietly(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A reused session the relay dropped meanwhile costs no attempt: the mail just goes."""
    upstream = await upstream_factory()
    running = await run_engine(
        settings_for(tmp_path, relay_for(upstream)), DeliveryOptions(connections_per_relay=1)
    )
    await running.spool.store(message(1))
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    for session in upstream.sessions:
        if session.transport is not None:
            session.transport.close()
    queue_id = await running.spool.store(message(2))
    await upstream.wait_for(2)
    await running.engine.wait_idle()
    assert upstream.connections == 2
    assert not (running.spool.spool_dir / "state" / f"{queue_id}.json").exists()
    assert spool_stats(running.spool.spool_dir).queued == 0


async def _queued_before_start(tmp_path: Path, count: int) -> list[bytes]:
    """Store *count* messages while no engine runs (its start finds them all due)."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open()
    try:
        sent = [message(n) for n in range(count)]
        for item in sent:
            await spool.store(item)
    finally:
        await spool.close()
    return [bytes(item.data) for item in sent]


@dataclass
class _FailingRelay:
    """A PIPELINING relay whose first session, after the data of message *fail_at*,
    drops the connection (``"drop"``), reads what came with that data into ``ahead``
    and then drops it (``"read-ahead"``), or says nothing more (``"silent"``); every
    later session takes mail normally. ``got``: the data taken; ``stalled``: set once
    the failing message's data is in; ``sessions``: how many were opened."""

    fail_at: int
    after: str
    got: list[bytes] = field(default_factory=list)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: int = 0
    ahead: bytes = b""

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        first = self.sessions == 1
        messages = 0
        writer.write(b"220 chain.invalid ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-chain.invalid\r\n250 PIPELINING\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                data = await reader.readuntil(b"\r\n.\r\n")
                messages += 1
                if first and messages == self.fail_at:
                    self.stalled.set()
                    if self.after == "silent":
                        await reader.read()  # (until the engine gives up on the session)
                    elif self.after == "read-ahead":
                        self.ahead = await asyncio.wait_for(reader.read(65536), 1)
                    break
                self.got.append(data)
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 2.0.0 ok\r\n")
        writer.close()


async def test_next_message_goes_out_with_the_data_before_it(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """With PIPELINING and a busy session, a waiting message's MAIL, RCPT and DATA
    follow the previous message's data in the same write (RFC 2920 §3.1): one round
    trip per message. Every message arrives once, exact, over the one session."""
    sent = await _queued_before_start(tmp_path, 6)
    upstream = await upstream_factory(UpstreamSpec(pipelining=True))
    running = await run_engine(
        settings_for(tmp_path, relay_for(upstream)), DeliveryOptions(connections_per_relay=1)
    )
    await upstream.wait_for(6)
    await running.engine.wait_idle()
    assert sorted(m.data for m in upstream.received) == sorted(sent)
    assert upstream.connections == 1
    assert upstream.chained >= 1  # the second message waited while the first was sent
    assert spool_stats(running.spool.spool_dir).queued == 0


async def test_refused_data_leaves_the_message_sent_after_it_alone(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A message whose data is refused while the next one's commands follow it: no RSET
    cuts into the next transaction; it is delivered, the refused one waits for a retry."""
    await _queued_before_start(tmp_path, 2)
    upstream = await upstream_factory(
        UpstreamSpec(pipelining=True, data_reply="451 4.3.0 try again later", refusals=1)
    )
    running = await run_engine(
        settings_for(tmp_path, relay_for(upstream)), DeliveryOptions(connections_per_relay=1)
    )
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert upstream.chained == 1
    assert upstream.connections == 1
    assert len(upstream.received) == 1
    (waiting,) = running.spool.queued_ids()
    state = state_of(running.spool.spool_dir, waiting)
    assert state.attempts == 1
    assert "451" in state.last_reply


async def test_session_lost_after_data_sends_the_next_message_on_a_new_one(
    tmp_path: Path, run_engine: RunEngine
) -> None:
    """The relay drops the session after a message's data, with the next message's
    commands already sent: that one goes on a new session; the dropped one is retried."""
    sent = await _queued_before_start(tmp_path, 2)
    upstream = _FailingRelay(fail_at=1, after="read-ahead")  # gone before the data's reply
    async with raw_upstream(upstream.handler, time_out=5) as relay:
        running = await run_engine(
            settings_for(tmp_path, relay), DeliveryOptions(connections_per_relay=1)
        )
        await running.engine.wait_idle()
    assert upstream.ahead.startswith(b"MAIL FROM:")
    assert upstream.ahead.endswith(b"DATA\r\n")
    assert upstream.sessions == 2
    (waiting,) = running.spool.queued_ids()
    retried = read_queued_message(running.spool.queue_path(waiting)).data
    assert upstream.got == [next(data for data in sent if data != retried) + b".\r\n"]
    assert state_of(running.spool.spool_dir, waiting).attempts == 1


async def test_stop_while_messages_wait_for_a_turn_keeps_them_all(
    tmp_path: Path, run_engine: RunEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() while one message is stuck at a silent relay and others wait for a turn
    there: every message stays queued, none is half-sent, nothing crashes."""
    await _queued_before_start(tmp_path, 4)
    async with silent_upstream() as (relay, accepted):
        running = await run_engine(
            settings_for(tmp_path, relay), DeliveryOptions(connections_per_relay=1)
        )
        await accepted.wait()
        await asyncio.sleep(0.1)  # the second worker is waiting for a turn by now
        await running.engine.stop(0.2)
    assert spool_stats(running.spool.spool_dir).queued == 4
    assert "unexpectedly" not in caplog.text
    assert "Traceback" not in caplog.text
    assert all(r.levelno < logging.ERROR for r in caplog.records)


@BOTH_LOOPS
@BOTH_WAYS
@pytest.mark.parametrize("tls", ["none", "starttls"])
async def test_big_messages_arrive_exact_with_the_next_commands_behind_them(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    upstream_pipelining: bool,
    tls: str,
    ca: trustme.CA,
) -> None:
    """Messages of 16 to 100 KB (written to the relay beside their final dot line and
    the next message's commands, not copied with them) arrive exact on either loop,
    in plaintext and over STARTTLS: dot lines stuffed, one session, each message once."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open()
    lines = [b".leading dot\r\n", b"x" * 76 + b"\r\n", b"..two\r\n", b"base64+/=\r\n"]
    sent = []
    try:
        for n, size in enumerate((100_000, 20_000, 16 * 1024, 64 * 1024 + 5, 99_999)):
            body = b"".join(lines[i % len(lines)] for i in range(size // 20))
            item = message(n, body=body + b"." * (n % 2))  # (odd ones end without CRLF)
            await spool.store(item)
            sent.append(item.data)
    finally:
        await spool.close()
    upstream = await upstream_factory(UpstreamSpec(tls=tls))
    relay = relay_for(upstream, ca_file=None if tls == "none" else ca_file(tmp_path, ca))
    running = await run_engine(
        settings_for(tmp_path, relay), DeliveryOptions(connections_per_relay=1)
    )
    await upstream.wait_for(len(sent))
    await running.engine.wait_idle()
    got = sorted(m.data for m in upstream.received)
    assert got == sorted(d if d.endswith(b"\r\n") else d + b"\r\n" for d in sent)
    assert upstream.connections == 1
    assert upstream.chained >= 1 or not upstream_pipelining
    assert spool_stats(running.spool.spool_dir).queued == 0


@pytest.mark.parametrize(
    ("after_second_data", "reply"),
    [("drop", "Connection lost"), ("silent", "no reply within 1 s")],
)
async def test_relay_failing_after_data_sent_behind_the_message_before(
    tmp_path: Path, run_engine: RunEngine, after_second_data: str, reply: str
) -> None:
    """The data of a message sent as soon as the replies to its commands came (by the
    message before it) and then lost or never answered: that message waits for a
    retry with the reason, the one lined up behind it goes on a new session."""
    sent = await _queued_before_start(tmp_path, 3)
    upstream = _FailingRelay(fail_at=2, after=after_second_data)
    async with raw_upstream(upstream.handler, time_out=1) as relay:
        running = await run_engine(
            settings_for(tmp_path, relay), DeliveryOptions(connections_per_relay=1)
        )
        await running.engine.wait_idle()
    (waiting,) = running.spool.queued_ids()
    retried = read_queued_message(running.spool.queue_path(waiting)).data
    assert sorted(upstream.got) == sorted(data + b".\r\n" for data in sent if data != retried)
    state = state_of(running.spool.spool_dir, waiting)
    assert state.attempts == 1
    assert reply in state.last_reply


async def test_stop_while_a_message_waits_for_the_reply_to_its_data(
    tmp_path: Path, run_engine: RunEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() while a message's data, sent behind the message before it, waits for a
    reply that does not come: it and the message lined up behind it stay queued,
    the first is delivered, nothing crashes."""
    await _queued_before_start(tmp_path, 3)
    upstream = _FailingRelay(fail_at=2, after="silent")
    async with raw_upstream(upstream.handler, time_out=30) as relay:
        running = await run_engine(
            settings_for(tmp_path, relay), DeliveryOptions(connections_per_relay=1)
        )
        await upstream.stalled.wait()
        await running.engine.stop(0.2)
    assert len(upstream.got) == 1
    assert spool_stats(running.spool.spool_dir).queued == 2
    assert "unexpectedly" not in caplog.text
    assert "Traceback" not in caplog.text
    assert all(r.levelno < logging.ERROR for r in caplog.records)


async def test_recipient_refused_for_the_whole_relay_sends_no_data(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A 421 to one RCPT while the other recipient and DATA are accepted: the data is not
    sent to the other (the message is retried for both: no duplicate later), and the
    message lined up behind it is not thrown out of step by a stray RSET."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open()
    try:
        for n in range(3):
            await spool.store(message(n, to=("a@example.net", "b@example.net")))
    finally:
        await spool.close()
    upstream = await upstream_factory(
        UpstreamSpec(pipelining=True, rcpt_replies={"b@example.net": "421 4.7.0 try later"})
    )
    running = await run_engine(
        settings_for(tmp_path, relay_for(upstream)), DeliveryOptions(connections_per_relay=1)
    )
    await running.engine.wait_idle()
    assert upstream.received == []
    queued = running.spool.queued_ids()
    assert len(queued) == 3
    replies = [state_of(running.spool.spool_dir, q).last_reply for q in queued]
    assert any("421" in reply for reply in replies)
