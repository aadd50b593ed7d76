"""The total deadline of an attempt at a relay (ten times its TimeOut), whatever the
attempt waits for, and the one timer that watches every attempt's deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.queue.conftest import RunEngine, message, raw_upstream, settings_for, state_of

from jdxmail.queue.deadlines import DeadlineWatch


async def test_relay_answering_each_step_in_time_is_cut_off_at_the_attempts_deadline(
    tmp_path: Path, run_engine: RunEngine
) -> None:
    """A relay (no PIPELINING) that answers every command just within its TimeOut
    still has the attempt end at ten times TimeOut; the message waits for a retry."""
    answered = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        writer.write(b"220 slow.invalid ESMTP\r\n")
        while await reader.readline():
            await asyncio.sleep(0.1)  # each step within the 0.3 s TimeOut below
            answered += 1
            writer.write(b"250 ok\r\n")
        writer.close()

    recipients = tuple(f"r{n}@example.net" for n in range(40))
    async with raw_upstream(slow, time_out=5) as relay:
        running = await run_engine(settings_for(tmp_path, relay))
        running.engine.pools[0].step_timeout = 0.3  # (a deadline of 3 s)
        queue_id = await running.spool.store(message(to=recipients))
        await running.engine.wait_idle()
    state = state_of(running.spool.spool_dir, queue_id)
    assert state.attempts == 1
    assert "no answer within 3 s" in state.last_reply
    assert answered < len(recipients) + 2  # cut off before the last RCPT
    assert running.spool.queue_path(queue_id).is_file()


async def test_deadline_cancels_only_the_block_that_outlives_it() -> None:
    """Of two blocks watched by one DeadlineWatch, the one that outlives its deadline
    ends with TimeoutError; the other finishes, its task not cancelled."""
    watch = DeadlineWatch()
    finished = asyncio.Event()

    async def block(seconds: float, takes: float) -> str:
        with watch.deadline(seconds):
            await asyncio.sleep(takes)
        await asyncio.sleep(0)  # (a cancellation left over would land here)
        return "done"

    async def late() -> str:
        try:
            return await block(0.05, 5)
        finally:
            finished.set()

    slow = asyncio.create_task(late())
    quick = asyncio.create_task(block(5, 0.1))
    with pytest.raises(TimeoutError):
        await slow
    assert await quick == "done"
    assert finished.is_set()


async def test_cancelling_from_outside_is_not_a_timeout() -> None:
    """A block cancelled by someone else (stop) ends cancelled, not with TimeoutError."""
    watch = DeadlineWatch()
    entered = asyncio.Event()

    async def block() -> None:
        with watch.deadline(5):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(block())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
