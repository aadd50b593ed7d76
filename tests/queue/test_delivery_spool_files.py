"""The delivery engine and the spool's files: delivered files reused and pruned, corrupt or
crashing messages moved aside, files another process holds left alone."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import pytest
from tests.queue.conftest import (
    RunEngine,
    StartUpstream,
    message,
    relay_for,
    settings_for,
)

from jdxmail.queue.spool import Spool, spool_stats


async def test_delivered_files_are_reused_for_new_messages(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivered queue file goes to spare/, the next message is written over it, and
    that message arrives intact (not the old one)."""
    monkeypatch.setattr("jdxmail.queue.recycling._SPARE_IDLE_LOOK", 0.0)
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    first = await running.spool.store(message(1, body=b"the first, longer message\r\n" * 40))
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    spare_dir = running.spool.spare_dir
    (kept,) = os.listdir(spare_dir)
    assert kept == f"{first}.1"  # spare/ID.N: N blocks of 4 KiB
    inode = os.stat(spare_dir / kept).st_ino
    second = message(2, body=b"the second\r\n")
    second_id = await running.spool.store(second)
    assert os.listdir(spare_dir) == []
    assert os.stat(running.spool.queue_file(second_id)).st_ino == inode
    await upstream.wait_for(2)
    assert upstream.received[1].data == second.data
    await running.engine.wait_idle()
    assert os.listdir(spare_dir) == [f"{second_id}.1"]


async def test_spare_files_are_pruned_oldest_first_at_the_limit(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While nobody takes spare files (a queue draining, or sizes no longer needed),
    spare/ stays at about SPARE_LIMIT: past it the older half is removed, so the files
    of recent messages stay; big messages' files are never kept."""
    monkeypatch.setattr("jdxmail.queue.recycling.SPARE_LIMIT", 6)
    monkeypatch.setattr("jdxmail.queue.recycling._COUNT_EVERY", 1)
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    spare_dir = running.spool.spare_dir
    big = message(99, body=(b"x" * 76 + b"\r\n") * 4000)
    await running.spool.store(big)
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert os.listdir(spare_dir) == []  # over 256 KiB: removed
    for n in range(5):  # left by a burst of 40 KB messages long ago
        (spare_dir / f"0000000000000000000000{n:02d}.10").write_bytes(b"x" * 40_000)
    running.spool.files._spares_seen_at = time.monotonic() + 3600  # the server takes none
    ids = []
    for n in range(6):
        ids.append(await running.spool.store(message(n)))
        await upstream.wait_for(n + 2)
        await running.engine.wait_idle()
    files = running.engine.delivery._files
    assert files is not None
    await files.submit(lambda: None)  # after the removals queued on the file thread
    kept = sorted(os.listdir(spare_dir))
    assert len(kept) <= 6
    assert not any(name.endswith(".10") for name in kept)
    assert f"{ids[-1]}.1" in kept
    assert spool_stats(running.spool.spool_dir).queued == 0


async def test_corrupt_spool_file_moved_aside(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A corrupt queue file is moved to corrupt/ and reported; other mail still flows."""
    upstream = await upstream_factory()
    queue_dir = tmp_path / "spool" / "queue"
    queue_dir.mkdir(parents=True)
    (queue_dir / "00000000000000000000bad1.msg").write_bytes(b'JDXSPOOL 1\n{"broken\n')
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    await running.spool.store(message())
    await upstream.wait_for(1)
    await running.engine.wait_idle()
    assert (tmp_path / "spool" / "corrupt" / "00000000000000000000bad1.msg").is_file()
    assert spool_stats(tmp_path / "spool").queued == 0
    assert "spool file is corrupt" in caplog.text


async def test_message_locked_by_another_process_is_left_alone(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """A queue file another process holds (flock) is not delivered twice."""
    upstream = await upstream_factory()
    settings = settings_for(tmp_path, relay_for(upstream))

    async with Spool(settings.paths.spool, settings.paths.mailbox) as spool:
        queue_id = await spool.store(message())
    fd = os.open(spool.queue_path(queue_id), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        running = await run_engine(settings)
        await running.engine.wait_idle()
        assert upstream.received == []
    finally:
        os.close(fd)
    running.engine.flush()
    await upstream.wait_for(1)


async def test_message_that_keeps_crashing_is_moved_aside(
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message that crashes the worker three times goes to corrupt/, the rest flows."""
    upstream = await upstream_factory()
    running = await run_engine(settings_for(tmp_path, relay_for(upstream)))
    engine = running.engine
    real = engine.delivery._attempt_message

    async def attempt(queued: Any, state: Any, loaded: Any) -> None:
        if queued.message_id == "m1@jdx.test":
            raise RuntimeError("a bug that only this message triggers")
        await real(queued, state, loaded)

    monkeypatch.setattr(engine.delivery, "_attempt_message", attempt)
    bad = await running.spool.store(message(1))
    await engine.wait_idle()
    for _ in range(2):
        engine.flush()
        await engine.wait_idle()
    assert (tmp_path / "spool" / "corrupt" / f"{bad}.msg").is_file()
    assert "failed unexpectedly 3 times" in caplog.text
    await running.spool.store(message(2))
    await upstream.wait_for(1)


async def test_startup_keeps_state_files_another_live_process_is_writing(
    tmp_path: Path, upstream_factory: StartUpstream, run_engine: RunEngine
) -> None:
    """At start, a state temp file of a dead writer is removed; a live writer's is kept."""
    upstream = await upstream_factory()
    state_dir = tmp_path / "spool" / "state"
    state_dir.mkdir(parents=True)
    finished = await asyncio.create_subprocess_exec("true")
    await finished.wait()  # reaped: its pid names no process now
    alive = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        stale = state_dir / f".x.json.{finished.pid}.1.tmp"
        live = state_dir / f".y.json.{alive.pid}.1.tmp"
        stale.write_text("{}")
        live.write_text("{}")
        await run_engine(settings_for(tmp_path, relay_for(upstream)))
    finally:
        alive.kill()
        await alive.wait()
    assert not stale.exists()
    assert live.exists()
