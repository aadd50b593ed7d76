"""A server's own folder in spare/: spares given back to it, written where they lie.

The delivery side gives a delivered queue file back into ``spare/pTAG/`` of the server
that stored it; that server alone takes from there (it holds the folder's lock), so it
writes the file in place and renames it once, into ``queue/``. Real files, real
processes holding locks, and ``jdxmail serve`` killed with SIGKILL under load.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.queue.conftest import StartUpstream, relay_for
from tests.queue.test_fault import Serve, _received_ids, _send
from tests.queue.test_spool import make_message

from jdxmail.queue.layout import new_queue_id, process_tag, queue_id_tag
from jdxmail.queue.recycling import home_dir
from jdxmail.queue.spool import Spool, SpoolError, read_queued_message
from jdxmail.settings.model import PathSettings, Settings, SmtpServerSettings


class ServeWorkers(Serve):
    """``jdxmail serve --workers N`` as a subprocess on a free port (see :class:`Serve`)."""

    def __init__(self, cwd: Path, config: Path, index: int, workers: int) -> None:
        super().__init__(cwd, config, index, extra=["--workers", str(workers)], group=True)

    def kill(self) -> None:
        """SIGKILL serve, its workers and its delivery process, as a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
async def server_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Spool]:
    """A spool opened as a server opens it (files made ahead, its folder in spare/),
    looking at its folder at every store that finds no spare known."""
    monkeypatch.setattr("jdxmail.queue.recycling._HOME_LOOK", 0.0)
    monkeypatch.setattr("jdxmail.queue.recycling._SPARE_IDLE_LOOK", 0.0)
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open(make_ahead=True)
    yield spool
    await spool.close()


def give_back(delivery: Spool, queue_id: str) -> None:
    """Hand a delivered queue file back, as the delivery engine does (in this process,
    as with ``--delivery inline``: a second spool here would take this one's tmp files
    for a dead process's)."""
    delivery.files.give(delivery.queue_file(queue_id), delivery.queue_path(queue_id).stat().st_size)


def holder(folder: Path) -> subprocess.Popen[str]:
    """Another live process holding *folder*'s lock (as a running server holds its own)."""
    code = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(folder)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


async def test_a_server_writes_the_spares_given_back_to_it_where_they_lie(
    server_spool: Spool,
) -> None:
    """A queue file the delivery process gives back lands in the storing server's own
    folder, and that server's next message is written into the same file (same inode)
    and reads back as exactly the new message, the folder left empty."""
    old_id = await server_spool.store(make_message(1))
    give_back(server_spool, old_id)
    home = home_dir(server_spool.spare_dir, process_tag())
    assert os.listdir(home) == [f"{old_id}.1"]
    assert os.listdir(server_spool.spare_dir) == [home.name]
    inode = os.stat(home / f"{old_id}.1").st_ino
    message = make_message(2)
    new_id = await server_spool.store(message)
    assert os.stat(server_spool.queue_file(new_id)).st_ino == inode
    assert os.listdir(home) == []
    queued = read_queued_message(server_spool.queue_path(new_id))
    assert (queued.queue_id, queued.data) == (new_id, message.data)


async def test_a_folder_another_live_process_holds_is_never_written(tmp_path: Path) -> None:
    """A spare in a server folder of this process's name that another live process holds
    (a pid equal in its low 20 bits) is left alone: stores go elsewhere, and the
    delivery side's files there stay as they were."""
    spool_dir = tmp_path / "spool"
    home = home_dir(spool_dir / "spare", process_tag())
    home.mkdir(parents=True)
    spare = home / "0000000000000000000001.1"
    spare.write_bytes(b"a spare another server may be writing")
    other = holder(home)
    try:
        spool = Spool(spool_dir, tmp_path / "mailbox")
        await spool.open(make_ahead=True)
        try:
            message = make_message(1)
            queue_id = await spool.store(message)
            assert read_queued_message(spool.queue_path(queue_id)).data == message.data
        finally:
            await spool.close()
    finally:
        release(other)
    assert os.listdir(home) == [spare.name]
    assert spare.read_bytes() == b"a spare another server may be writing"


async def test_the_folders_of_servers_gone_go_back_to_spare(tmp_path: Path) -> None:
    """At a server's start, the files of a server folder nobody holds (its server died)
    go back to spare/ and the folder is removed; a folder a live server holds keeps
    its files."""
    spare_dir = tmp_path / "spool" / "spare"
    gone, live = home_dir(spare_dir, "fffff"), home_dir(spare_dir, "ffffe")
    for folder, name in ((gone, "0000000000000000000001.1"), (live, "0000000000000000000002.1")):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"x" * 100)
    other = holder(live)
    try:
        spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
        await spool.open(make_ahead=True)
        await spool.close()
    finally:
        release(other)
    assert not gone.exists()
    assert (spare_dir / "0000000000000000000001.1").read_bytes() == b"x" * 100
    assert os.listdir(live) == ["0000000000000000000002.1"]


async def test_a_spare_removed_from_the_folder_meanwhile_fails_no_store(
    server_spool: Spool,
) -> None:
    """Spares the server saw in its folder and someone removed since do not fail the
    next stores: they take other files and read back whole."""
    ids = [await server_spool.store(make_message(n)) for n in range(4)]
    for queue_id in ids:
        give_back(server_spool, queue_id)
    await server_spool.store(make_message(10))  # looks at the folder: three left known
    home = home_dir(server_spool.spare_dir, process_tag())
    for name in os.listdir(home):
        os.unlink(home / name)
    for n in range(11, 14):
        message = make_message(n)
        queue_id = await server_spool.store(message)
        assert read_queued_message(server_spool.queue_path(queue_id)).data == message.data


async def test_a_full_server_folder_gets_no_more(
    server_spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server folder holding SPARE_LIMIT files gets no more (a server that stopped
    storing): what the delivery side gives next goes to spare/, which is pruned."""
    monkeypatch.setattr("jdxmail.queue.recycling.SPARE_LIMIT", 4)
    monkeypatch.setattr("jdxmail.queue.recycling._COUNT_EVERY", 2)
    monkeypatch.setattr("jdxmail.queue.recycling._HOME_LOOK", 3600.0)
    monkeypatch.setattr("jdxmail.queue.recycling._SPARE_IDLE_LOOK", 3600.0)
    ids = [await server_spool.store(make_message(n)) for n in range(10)]
    for queue_id in ids:
        give_back(server_spool, queue_id)
    home = home_dir(server_spool.spare_dir, process_tag())
    assert len(os.listdir(home)) == 4
    assert [p for p in server_spool.spare_dir.iterdir() if p.is_file()] != []


async def test_a_closed_spool_stores_nothing_into_its_folder(server_spool: Spool) -> None:
    """Closed, the server's spool refuses stores as before (its folder is let go)."""
    await server_spool.close()
    with pytest.raises(SpoolError):
        await server_spool.store(make_message(1))


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigkill_while_spares_come_back_loses_nothing(
    tmp_path: Path, upstream_factory: StartUpstream, workers: int
) -> None:
    """serve (one or two workers) killed with SIGKILL while the delivery process gives
    spares back into its folders: every acknowledged message reaches the relay, none
    is corrupt, and the next serve gives the dead folders back to spare/."""
    upstream = await upstream_factory()
    settings = Settings(
        smtp_server=SmtpServerSettings(host_name="jdx.test", trusted_networks=["127.0.0.0/8"]),
        relay_servers=[relay_for(upstream, name="up")],
        paths=PathSettings(spool=tmp_path / "spool", mailbox=tmp_path / "mailbox"),
    )
    config = tmp_path / "appsettings.json"
    config.write_text(json.dumps(settings.model_dump(mode="json", by_alias=True)))
    spare_dir = tmp_path / "spool" / "spare"
    acked: set[str] = set()
    counter = 0

    async def stream(server: Serve, clients: int, kill_after: int | None) -> None:
        """*clients* send at once; SIGKILL once *kill_after* were acknowledged."""
        target = len(acked) + (kill_after or 40)

        async def client() -> None:
            nonlocal counter
            while server.proc.poll() is None and len(acked) < target:
                counter += 1
                n = counter
                if await _send(server.port, n):
                    acked.add(f"fault-{n}@jdx.test")
            if kill_after is not None and server.proc.poll() is None:
                server.kill()

        await asyncio.gather(*(client() for _ in range(clients)))

    first = await asyncio.to_thread(ServeWorkers, tmp_path, config, 1, workers)
    await stream(first, 6, kill_after=150)
    homes_then = {p.name for p in spare_dir.iterdir() if p.is_dir()}
    assert len(homes_then) >= 1  # (the first server's folder(s), spares given back in)
    second = await asyncio.to_thread(ServeWorkers, tmp_path, config, 2, workers)
    await stream(second, 4, kill_after=None)
    async with asyncio.timeout(60):
        while not acked <= _received_ids(upstream):
            upstream.arrived.clear()
            await upstream.arrived.wait()
    assert second.terminate() == 0
    assert acked <= _received_ids(upstream)
    assert os.listdir(tmp_path / "spool" / "corrupt") == []
    homes_now = {p.name for p in spare_dir.iterdir() if p.is_dir()}
    assert len(homes_now) == workers  # the second serve's, the first's given back
    assert not homes_then & homes_now
    log = "".join(p.read_text() for p in sorted(tmp_path.glob("serve-*.err")))  # noqa: ASYNC240
    assert "Traceback" not in log


def test_a_forked_worker_names_itself_in_its_queue_ids() -> None:
    """A worker forked by serve --workers makes queue ids carrying its own process's
    tag, so what it stored is given back to its own folder, not its parent's."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one queue id and leave at once
        os.write(write, new_queue_id().encode())
        os._exit(0)
    os.close(write)
    queue_id = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert queue_id_tag(queue_id) == f"{pid & 0xFFFFF:05x}" != process_tag()
