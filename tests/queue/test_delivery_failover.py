"""Relay choice: failover to the next relay, the circuit breaker, daily quotas."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from tests.queue.conftest import (
    RunEngine,
    StartUpstream,
    message,
    relay_for,
    settings_for,
    state_of,
)

from jdxmail.queue.spool import spool_stats
from jdxmail.queue.worker import DeliveryOptions


async def test_failover_to_second_relay(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the first relay cannot be reached, the next relay in the list gets the mail."""
    down = await upstream_factory()
    await down.close()
    backup = await upstream_factory()
    settings = settings_for(
        tmp_path, relay_for(down, name="primary"), relay_for(backup, name="backup")
    )
    running = await run_engine(settings)
    await running.spool.store(message())
    await backup.wait_for(1)
    await running.engine.wait_idle()
    assert "relay primary failed" in caplog.text
    assert "trying the next relay" in caplog.text
    assert spool_stats(running.spool.spool_dir).queued == 0


async def test_failing_relay_is_skipped_by_circuit_breaker(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """After three failures in a row a relay is skipped for a while; the next one serves."""
    down = await upstream_factory()
    await down.close()
    backup = await upstream_factory()
    settings = settings_for(
        tmp_path, relay_for(down, name="primary"), relay_for(backup, name="backup")
    )
    running = await run_engine(settings, DeliveryOptions(connections_per_relay=1))
    for n in range(5):
        await running.spool.store(message(n))
        await backup.wait_for(n + 1)
        await running.engine.wait_idle()
    breaker = running.engine.breakers["primary"]
    assert breaker.failures == 3
    assert breaker.open_until > time.time()


async def test_mail_waits_in_memory_while_every_relay_is_skipped(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the only relay's breaker is open, the other queued messages are not opened,
    rescheduled and logged one by one: they wait, untouched, until it reopens."""
    caplog.set_level(logging.INFO)
    down = await upstream_factory()
    await down.close()
    running = await run_engine(
        settings_for(tmp_path, relay_for(down, name="primary")),
        DeliveryOptions(connections_per_relay=1),
    )
    ids = [await running.spool.store(message(n)) for n in range(12)]
    await running.engine.wait_idle()
    breaker = running.engine.breakers["primary"]
    assert breaker.failures == 3
    state_dir = running.spool.spool_dir / "state"
    assert len(os.listdir(state_dir)) == 3  # the three attempts, nothing for the rest
    assert "skipped after repeated failures" not in caplog.text
    assert spool_stats(running.spool.spool_dir).queued == 12
    waiting = [i for i in ids if running.engine.scheduler.due.get(i) == breaker.open_until]
    assert len(waiting) == 9


async def test_quota_spills_over_and_survives_restart(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """Past its DailyQuota a relay gets nothing more, even after a restart; the next does."""
    gmail = await upstream_factory()
    backup = await upstream_factory()
    settings = settings_for(
        tmp_path,
        relay_for(gmail, name="gmail", daily_quota=2),
        relay_for(backup, name="backup"),
    )
    running = await run_engine(settings, DeliveryOptions(connections_per_relay=1))
    for n in range(3):
        await running.spool.store(message(n))
        await running.engine.wait_idle()
    assert len(gmail.received) == 2
    assert len(backup.received) == 1
    await running.engine.stop(1.0)
    await running.spool.close()
    again = await run_engine(settings)
    await again.spool.store(message(9))
    await backup.wait_for(2)
    assert len(gmail.received) == 2
    quota = json.loads((again.spool.spool_dir / "quota.json").read_text())
    assert quota["sent"] == {"gmail": 2}


async def test_quota_spent_on_only_relay_waits(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """With the only relay's quota spent, mail waits in the queue and says why."""
    gmail = await upstream_factory()
    settings = settings_for(tmp_path, relay_for(gmail, name="gmail", daily_quota=1))
    running = await run_engine(settings)
    await running.spool.store(message(1))
    await gmail.wait_for(1)
    await running.engine.wait_idle()
    queue_id = await running.spool.store(message(2))
    await running.engine.wait_idle()
    state = state_of(running.spool.spool_dir, queue_id)
    assert state.attempts == 0
    assert "gmail daily quota of 1 spent" in state.waiting_for
    assert len(gmail.received) == 1
