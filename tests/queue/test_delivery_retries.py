"""Scheduling and retries: temporary failures tried again with backoff, recovery at start,
messages locked by another, relays that go silent, stop."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from pathlib import Path

import pytest
import trustme
from tests.queue.conftest import (
    BOTH_WAYS,
    RELAY_USER,
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

from jdxmail.queue.spool import Spool, spool_stats


async def test_wrong_relay_password_retries_never_bounces(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    ca: trustme.CA,
) -> None:
    """A 535 from the relay is our configuration's fault: the mail waits, no bounce."""
    upstream = await upstream_factory(UpstreamSpec(tls="starttls", users={RELAY_USER: "other"}))
    relay = relay_for(upstream, ca_file=ca_file(tmp_path, ca), login=True)
    running = await run_engine(settings_for(tmp_path, relay))
    queue_id = await running.spool.store(message())
    await running.engine.wait_idle()
    state = state_of(running.spool.spool_dir, queue_id)
    assert state.attempts == 1
    assert state.last_reply.startswith("535")
    assert upstream.received == []
    assert spool_stats(running.spool.spool_dir).failed == 0


@BOTH_WAYS
async def test_temporary_failure_then_success(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A 451 schedules a retry with backoff; the retry delivers the message once."""
    upstream = await upstream_factory(
        UpstreamSpec(data_reply="451 4.3.0 Try again later", refusals=1)
    )
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    before = time.time()
    queue_id = await running.spool.store(message())
    await running.engine.wait_idle()
    state = state_of(running.spool.spool_dir, queue_id)
    assert state.attempts == 1
    assert state.last_reply == "451 4.3.0 Try again later"
    assert before + 40 < state.next_try < before + 80
    running.engine.flush()
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert upstream.recipients() == ["bob@example.net"]
    assert spool_stats(running.spool.spool_dir).queued == 0


@BOTH_WAYS
async def test_recipient_deferred_is_retried_alone(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A 450 for one recipient retries only that recipient; the other gets no duplicate."""
    spec = UpstreamSpec(rcpt_replies={"carol@example.net": "450 4.2.1 mailbox busy"})
    upstream = await upstream_factory(spec)
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    queue_id = await running.spool.store(message(to=("bob@example.net", "carol@example.net")))
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert state_of(running.spool.spool_dir, queue_id).pending() == ["carol@example.net"]
    spec.rcpt_replies.clear()
    running.engine.flush()
    await upstream.wait_for(2)
    await running.engine.wait_idle()
    assert upstream.recipients() == ["bob@example.net", "carol@example.net"]
    assert spool_stats(running.spool.spool_dir).queued == 0


async def test_message_locked_by_another_is_tried_again_soon(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A queue file another process holds locked when the engine wants it is delivered
    soon after the lock goes, not at the next 30 s rescan."""
    upstream = await upstream_factory()
    writer = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await writer.open()
    queue_id = await writer.store(message())
    await writer.close()
    fd = os.open(writer.queue_file(queue_id), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another delivery process claims it
    try:
        await run_engine(settings_for(tmp_path, relay_for(upstream)))
        await asyncio.sleep(0.3)
        assert upstream.received == []
    finally:
        os.close(fd)
    async with asyncio.timeout(5):
        await upstream.wait_for(1)


async def test_recovery_at_start_is_logged_and_delivered(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Messages left queued by a previous run are counted in the log and delivered."""
    caplog.set_level(logging.INFO)
    upstream = await upstream_factory()
    settings = settings_for(tmp_path, relay_for(upstream))
    from jdxmail.queue.spool import Spool

    async with Spool(settings.paths.spool, settings.paths.mailbox) as spool:
        for n in range(3):
            await spool.store(message(n))
    await run_engine(settings)
    await upstream.wait_for(3)
    assert "delivery engine: 3 queued (0 being retried, 3 due now)" in caplog.text


async def test_upstream_down_then_back(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """Mail queued while the relay is down is delivered once it is back."""
    first = await upstream_factory()
    port = first.port
    await first.close()
    relay = relay_for(first)
    running = await run_engine(settings_for(tmp_path, relay))
    ids = [await running.spool.store(message(n)) for n in range(3)]
    await running.engine.wait_idle()
    assert all(state_of(running.spool.spool_dir, i).attempts >= 1 for i in ids)
    try:
        back = await upstream_factory(port=port)
    except OSError as exc:  # the port was taken meanwhile
        pytest.skip(str(exc))
    running.engine.flush()
    await back.wait_for(3)
    assert sorted(m.data.split(b"Subject: ")[1][:6] for m in back.received) == [
        b"test 0",
        b"test 1",
        b"test 2",
    ]


async def test_relay_silent_after_pipelined_commands_is_a_timeout_and_a_retry(
    tmp_path: Path, run_engine: RunEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay that takes MAIL/RCPT/DATA in one go and then says nothing: after its
    TimeOut the attempt fails with a readable reason and the message waits for a retry."""

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mute.invalid ESMTP\r\n")
        assert (await reader.readline()).startswith(b"EHLO")
        writer.write(b"250-mute.invalid\r\n250 PIPELINING\r\n")
        await reader.read()  # the pipelined group, then silence
        writer.close()

    async with raw_upstream(mute, time_out=1) as relay:
        running = await run_engine(settings_for(tmp_path, relay))
        started = time.monotonic()
        queue_id = await running.spool.store(message())
        await running.engine.wait_idle()
        assert time.monotonic() - started < 8  # the 1 s TimeOut, not the 10 s deadline
        state = state_of(running.spool.spool_dir, queue_id)
        assert state.attempts == 1
        assert "no reply within 1 s" in state.last_reply
        assert "no reply within 1 s" in caplog.text
        assert running.spool.queue_path(queue_id).is_file()


async def test_stop_does_not_wait_for_a_silent_relay(
    tmp_path: Path, run_engine: RunEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """stop(grace) gives up on an attempt to a relay that never answers; mail stays queued."""
    async with silent_upstream() as (relay, accepted):
        running = await run_engine(settings_for(tmp_path, relay))
        queue_id = await running.spool.store(message())
        await accepted.wait()
        await running.engine.stop(0.2)
        assert "1 deliveries still running after 0 s" in caplog.text
        assert running.spool.queue_path(queue_id).is_file()
