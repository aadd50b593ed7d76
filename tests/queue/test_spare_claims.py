"""A server claims spare/ whole and writes each spare where it is: one rename per
message, no file written by two servers, nothing of a dead server's left behind."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from pathlib import Path

import pytest
from tests.queue.test_spool import make_message

from jdxmail.queue import recycling
from jdxmail.queue.spool import Spool, read_queued_message, spool_stats


async def server_spool(tmp_path: Path) -> Spool:
    """A spool opened as serve opens it, once its thread has made files ahead (by
    then it has given back any dead server's spares and claims spare/ whole)."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open(make_ahead=True)
    for _ in range(500):  # the thread makes 64 files within milliseconds
        if sum(1 for name in os.listdir(spool.tmp_dir) if name.startswith("stock")) >= 8:
            break
        await asyncio.sleep(0.01)
    return spool


async def leave_spares(spool: Spool, count: int) -> set[int]:
    """Store *count* messages and move their files to spare/ as the delivery process
    does once they are delivered; the inodes of those spares."""
    inodes = set()
    ids = [await spool.store(make_message(1000 + n)) for n in range(count)]
    for queue_id in ids:
        spare = spool.files.spare_path(queue_id, spool.queue_path(queue_id).stat().st_size)
        os.rename(spool.queue_file(queue_id), spare)
        inodes.add(os.stat(spare).st_ino)
    return inodes


def claimed_folders(spool: Spool) -> list[str]:
    return [name for name in os.listdir(spool.tmp_dir) if name.startswith("spare.")]


async def test_a_server_writes_claimed_spares_in_place_and_gives_back_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With enough spares waiting, a server takes spare/ whole: each new message is
    written over a spare and renamed once, into queue/, reads back as itself; at
    close the spares it did not use are in spare/ again and tmp/ is clean."""
    monkeypatch.setattr(recycling, "_SPARE_IDLE_LOOK", 0.0)
    renames: list[tuple[str, str]] = []
    real_rename = os.rename

    def counting_rename(source: str, target: str) -> None:
        renames.append((os.fspath(source), os.fspath(target)))
        real_rename(source, target)

    spool = await server_spool(tmp_path)
    try:
        spares = await leave_spares(spool, 30)
        monkeypatch.setattr(os, "rename", counting_rename)
        messages = [make_message(n) for n in range(20)]
        ids = [await spool.store(message) for message in messages]
        monkeypatch.setattr(os, "rename", real_rename)
        assert os.listdir(spool.spare_dir) == []  # swapped with an empty folder
        assert len(claimed_folders(spool)) == 1
        for queue_id, message in zip(ids, messages, strict=True):
            assert os.stat(spool.queue_file(queue_id)).st_ino in spares
            queued = read_queued_message(spool.queue_path(queue_id))
            assert (queued.queue_id, queued.data) == (queue_id, message.data)
        assert len(renames) == 20  # one per message, into queue/
        assert all(target.startswith(os.fspath(spool.queue_dir)) for _, target in renames)
    finally:
        await spool.close()
    assert len(os.listdir(spool.spare_dir)) == 10
    assert os.listdir(spool.tmp_dir) == []
    assert spool_stats(spool.spool_dir).queued == 20


async def test_two_servers_sharing_a_spool_never_write_the_same_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers on one spool (serve --workers) storing at once, spare/ refilled
    between their claims: every message gets a file of its own and reads back intact."""
    monkeypatch.setattr(recycling, "_SPARE_IDLE_LOOK", 0.0)
    # Both opened before either makes a file: here both have this process's id, and
    # a spool opening removes the tmp files of ids that do not run (its own included).
    first, second = (Spool(tmp_path / "spool", tmp_path / "mailbox") for _ in range(2))
    await first.open()
    await second.open()
    first.files.make_ahead()  # as open(make_ahead=True) does: both are servers
    second.files.make_ahead()
    for _ in range(500):  # each thread makes 64 files ahead once it is ready to claim
        if sum(1 for name in os.listdir(first.tmp_dir) if name.startswith("stock")) >= 100:
            break
        await asyncio.sleep(0.01)
    try:
        messages = [make_message(n) for n in range(60)]
        await leave_spares(first, 20)
        ids = [await first.store(message) for message in messages[:10]]
        await leave_spares(second, 20)  # delivered meanwhile
        ids += [await second.store(message) for message in messages[10:20]]
        await leave_spares(first, 20)
        stores = [
            (first if n % 2 else second).store(message) for n, message in enumerate(messages[20:])
        ]
        ids += await asyncio.gather(*stores)
        inodes = {os.stat(first.queue_file(queue_id)).st_ino for queue_id in ids}
        assert len(inodes) == 60
        for queue_id, message in zip(ids, messages, strict=True):
            assert read_queued_message(first.queue_path(queue_id)).data == message.data
    finally:
        await first.close()
        await second.close()
    assert os.listdir(first.tmp_dir) == []


async def test_spares_claimed_by_a_server_that_died_go_back_to_spare(tmp_path: Path) -> None:
    """A server killed while it held claimed spares (one half-written) leaves them in
    tmp/: the next server gives them back to spare/, and none reaches queue/."""
    gone = subprocess.Popen(["true"])  # noqa: ASYNC220 - a process id that no longer runs
    gone.wait()
    folder = tmp_path / "spool" / "tmp" / f"spare.p{gone.pid}.1.tmp"
    folder.mkdir(parents=True)
    (folder / "0000000000000000000000a1.1").write_bytes(b"JDXSPOOL 1\n{half-writ")
    (folder / "0000000000000000000000a2.1").write_bytes(b"x" * 2000)
    spool = await server_spool(tmp_path)
    try:
        assert sorted(os.listdir(spool.spare_dir)) == [
            "0000000000000000000000a1.1",
            "0000000000000000000000a2.1",
        ]
        assert not folder.exists()
        assert spool_stats(spool.spool_dir).queued == 0
    finally:
        await spool.close()


async def test_spares_are_claimed_one_by_one_where_folders_cannot_be_swapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without RENAME_EXCHANGE a server reuses spares as before, each
    claimed by a rename of its own, and makes no folder of its own in tmp/."""
    monkeypatch.setattr(recycling, "_SPARE_IDLE_LOOK", 0.0)

    def no_exchange(first: str, second: str) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), first)

    monkeypatch.setattr(recycling, "_exchange", no_exchange)
    spool = await server_spool(tmp_path)
    try:
        spares = await leave_spares(spool, 20)
        ids = [await spool.store(make_message(n)) for n in range(20)]
        assert {os.stat(spool.queue_file(queue_id)).st_ino for queue_id in ids} == spares
        assert claimed_folders(spool) == []
    finally:
        await spool.close()
