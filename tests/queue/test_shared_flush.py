"""Processes of one ``serve --workers`` on one spool share their syncfs calls."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from tests.queue.test_spool import make_message

from jdxmail.queue import durable
from jdxmail.queue.durable import SYNC_LOCK_FILE, FileSystemSync, share_flushes
from jdxmail.queue.spool import Spool, _Plan

pytestmark = pytest.mark.skipif(not durable.has_syncfs(), reason="needs syncfs (Linux)")

#: (start, end) of each syncfs, (written, acknowledged) of each store, in ns
_Times = tuple[list[tuple[int, int]], dict[str, tuple[int, int]]]


def _writer(root: Path, count: int, conn: Connection) -> None:
    """In a forked process: store *count* messages at once, timing writes and syncfs."""
    syncs: list[tuple[int, int]] = []
    real = durable._SYNCFS
    assert real is not None

    def timed(fd: int) -> int:
        start = time.monotonic_ns()
        result = real(fd)
        syncs.append((start, time.monotonic_ns()))
        return result

    written: dict[str, int] = {}
    place = Spool._place

    def placed(spool: Spool, plan: _Plan) -> set[Path]:
        dirs = place(spool, plan)  # (a relayed message: written, then renamed, on the loop)
        written[plan.queue_id] = time.monotonic_ns()
        return dirs

    durable._SYNCFS = timed
    Spool._place = placed  # type: ignore[method-assign,assignment]

    async def store_all() -> dict[str, tuple[int, int]]:
        times: dict[str, tuple[int, int]] = {}
        async with Spool(root / "spool", root / "mailbox") as spool:

            async def one(n: int) -> None:
                queue_id = await spool.store(make_message(n))
                times[queue_id] = (written[queue_id], time.monotonic_ns())

            for turn in range(count // 20):
                await asyncio.gather(*(one(turn * 20 + n) for n in range(20)))
        return times

    conn.send((syncs, asyncio.run(store_all())))
    conn.close()


def _run_writers(root: Path, processes: int, count: int) -> list[_Times]:
    context = multiprocessing.get_context("fork")
    links = []
    for _ in range(processes):
        here, there = context.Pipe()
        process = context.Process(target=_writer, args=(root, count, there))
        process.start()
        links.append((process, here))
    results: list[_Times] = []
    for process, here in links:
        results.append(here.recv())
        process.join(60)
        assert process.exitcode == 0
    return results


def test_every_store_is_acknowledged_after_a_flush_begun_after_its_writes(
    tmp_path: Path,
) -> None:
    """Two processes storing at once on one spool: each message is acknowledged only
    after a syncfs (its own process's or the other's) that began after its file was
    written, none is lost, and the processes did share flushes."""
    assert share_flushes(tmp_path / "spool")
    try:
        results = _run_writers(tmp_path, 2, 400)
    finally:
        durable._shared_counters = None
    queued = {p.name.removesuffix(".msg") for p in (tmp_path / "spool" / "queue").iterdir()}
    shared = 0
    for mine, (own_syncs, times) in enumerate(results):
        other_syncs = results[1 - mine][0]
        assert len(times) == 400
        for queue_id, (written, acked) in times.items():
            assert queue_id in queued
            covered_by = [s for s in (*own_syncs, *other_syncs) if written < s[0] and s[1] < acked]
            assert covered_by, f"{queue_id} acknowledged before any flush after its write"
            if not any(written < s[0] and s[1] < acked for s in own_syncs):
                shared += 1
    assert len(queued) == 800
    assert shared > 0  # some stores were made durable by the other process's syncfs


def _hold_lock_and_die(lock_file: Path, ready: Connection) -> None:
    """In a forked process: take the lock as a syncfs would, count it begun, hang."""
    counters = durable._shared_counters
    assert counters is not None
    fd = os.open(lock_file, os.O_RDONLY)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)
    counters.begun += 1
    ready.send("holding")
    time.sleep(60)  # killed here, in "its syncfs"


def test_a_holder_killed_in_its_syncfs_neither_blocks_nor_counts(tmp_path: Path) -> None:
    """A worker killed while it holds the flush lock releases it, and its unfinished
    syncfs is not taken for done: the next flush runs a syncfs of its own."""
    folder = tmp_path / "spool" / "tmp"
    folder.mkdir(parents=True)
    assert share_flushes(tmp_path / "spool")
    sync = FileSystemSync(folder, tmp_path / "spool" / SYNC_LOCK_FILE)
    try:
        assert sync.shared
        assert sync.sync(sync.ticket())  # one completed flush: done = 1
        ticket = sync.ticket()  # "after the writes"
        context = multiprocessing.get_context("fork")
        here, there = context.Pipe()
        holder = context.Process(
            target=_hold_lock_and_die, args=(tmp_path / "spool" / SYNC_LOCK_FILE, there)
        )
        holder.start()
        assert here.recv() == "holding"
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        assert sync.sync(ticket)  # not skipped on the dead holder's syncfs
        assert not sync.sync(ticket)  # while the one that just ran covers it
    finally:
        sync.close()
        durable._shared_counters = None


async def test_one_process_flushes_alone_and_makes_no_lock_file(tmp_path: Path) -> None:
    """A spool outside serve --workers stores as before, without a lock file."""
    async with Spool(tmp_path / "spool", tmp_path / "mailbox") as spool:
        await spool.store(make_message())
    assert not (tmp_path / "spool" / SYNC_LOCK_FILE).exists()
    assert len(list((tmp_path / "spool" / "queue").iterdir())) == 1
