"""The durable spool: what is on disk when store() returns, and what is not."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType

import pytest

from jdxmail.queue import durable
from jdxmail.queue.spool import (
    AcceptedMessage,
    CorruptSpoolFile,
    Spool,
    SpoolError,
    read_queued_fd,
    read_queued_message,
    spool_stats,
)


def load_bench(name: str) -> ModuleType:
    """The module bench/NAME.py (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_message(
    n: int = 1,
    *,
    relay: tuple[str, ...] = ("bob@example.net",),
    local: tuple[str, ...] = (),
    message_id: str | None = None,
    size: int = 300,
) -> AcceptedMessage:
    """A message as the server would hand it over."""
    mid = message_id if message_id is not None else f"msg{n}@test"
    data = f"Message-ID: <{mid}>\r\nSubject: test {n}\r\n\r\n".encode() + b"y" * size + b"\r\n"
    return AcceptedMessage(
        mail_from="alice@example.com",
        relay_recipients=relay,
        local_recipients=local,
        data=data,
        message_id=mid,
        auth_user="alice",
        client_address="127.0.0.1",
        session_id="s1",
        received_at=time.time(),
        mail_options=("BODY=8BITMIME",),
    )


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    """An open spool under the test's folder."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open()
    yield spool
    await spool.close()


def unfinished(tmp_dir: Path) -> list[Path]:
    """Files in spool/tmp/ (or the mailboxes' .tmp/) but the empty ones made ahead (``stock.*``)."""
    return [
        p for p in tmp_dir.iterdir() if not (p.name.startswith("stock") and p.stat().st_size == 0)
    ]


def all_files(root: Path) -> list[Path]:
    """Every regular file under *root*."""
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_store_leaves_complete_queue_file(spool: Spool, tmp_path: Path) -> None:
    """After store() returns, the queue file holds the exact envelope and data."""
    message = make_message()
    queue_id = await spool.store(message)
    queued = read_queued_message(spool.queue_path(queue_id))
    assert queued.data == message.data
    assert queued.mail_from == "alice@example.com"
    assert queued.recipients == ("bob@example.net",)
    assert queued.mail_options == ("BODY=8BITMIME",)
    assert queued.auth_user == "alice"
    assert unfinished(tmp_path / "spool" / "tmp") == []


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
async def test_flush_thread_yields_to_running_work(spool: Spool) -> None:
    """The spool's flush thread runs under SCHED_BATCH (``chrt -p`` shows it), and stores land."""
    queue_id = await spool.store(make_message())
    [thread] = [t for t in threading.enumerate() if t.name == "jdxmail-spool"]
    assert thread.native_id is not None
    assert os.sched_getscheduler(thread.native_id) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the event loop's thread keeps its own
    assert read_queued_message(spool.queue_path(queue_id)).data == make_message().data


@pytest.mark.parametrize("mode", ["batch", "batch-fsync", "per-message"])
async def test_every_commit_mode_stores(tmp_path: Path, mode: str) -> None:
    """Each commit design (the benchmark compares them) stores queue and mailbox files."""
    spool_bench = load_bench("spool_bench")
    spool = spool_bench.make_spool(tmp_path / "spool", tmp_path / "mailbox", mode)
    async with spool:
        queue_id = await spool.store(make_message(local=("carol@localhost",)))
    assert spool.queue_path(queue_id).is_file()
    assert (tmp_path / "mailbox" / "carol@localhost" / "msg1@test.eml").is_file()


async def test_local_recipients_get_mailbox_files(spool: Spool, tmp_path: Path) -> None:
    """Each local recipient gets <mailbox>/<recipient>/<message-id>.eml: its envelope
    (Return-Path, Delivered-To), then the data."""
    message = make_message(relay=(), local=("carol@localhost", "Dave@LOCALHOST"))
    queue_id = await spool.store(message)
    sender = message.mail_from.encode()
    assert (tmp_path / "mailbox" / "carol@localhost" / "msg1@test.eml").read_bytes() == (
        b"Return-Path: <" + sender + b">\r\nDelivered-To: <carol@localhost>\r\n" + message.data
    )
    assert (tmp_path / "mailbox" / "dave@localhost" / "msg1@test.eml").read_bytes() == (
        b"Return-Path: <" + sender + b">\r\nDelivered-To: <Dave@LOCALHOST>\r\n" + message.data
    )
    assert not spool.queue_path(queue_id).exists()
    assert unfinished(tmp_path / "mailbox" / ".tmp") == []


async def test_mixed_message_goes_to_both(spool: Spool, tmp_path: Path) -> None:
    """A message with local and relay recipients is queued once and filed locally."""
    queue_id = await spool.store(make_message(local=("carol@localhost",)))
    assert read_queued_message(spool.queue_path(queue_id)).recipients == ("bob@example.net",)
    assert (tmp_path / "mailbox" / "carol@localhost" / "msg1@test.eml").is_file()


async def test_same_message_id_gets_suffix(spool: Spool, tmp_path: Path) -> None:
    """A second message with the same Message-ID is kept beside the first, not over it."""
    first = make_message(1, relay=(), local=("carol@localhost",), message_id="same@x")
    second = make_message(2, relay=(), local=("carol@localhost",), message_id="same@x")
    await spool.store(first)
    await spool.store(second)
    box = tmp_path / "mailbox" / "carol@localhost"
    assert (box / "same@x.eml").read_bytes().endswith(first.data)
    assert (box / "same@x-1.eml").read_bytes().endswith(second.data)


async def test_same_message_id_many_at_once_none_lost(tmp_path: Path) -> None:
    """Twenty messages with one Message-ID stored at once each get a file of their own
    (``x.eml``, ``x-1.eml``…); nothing is left in the mailboxes' .tmp/."""
    messages = [
        make_message(n, relay=(), local=("carol@localhost",), message_id="same@x")
        for n in range(20)
    ]
    async with Spool(tmp_path / "spool", tmp_path / "mailbox") as spool:
        await asyncio.gather(*(spool.store(m) for m in messages))
    box = tmp_path / "mailbox" / "carol@localhost"
    names = {"same@x.eml", *(f"same@x-{n}.eml" for n in range(1, 20))}
    assert {p.name for p in box.iterdir()} == names
    bodies = sorted(p.read_bytes().split(b"\r\n", 2)[2] for p in box.iterdir())
    assert bodies == sorted(m.data for m in messages)
    assert list((tmp_path / "mailbox" / ".tmp").iterdir()) == []


def test_move_no_replace_never_replaces(tmp_path: Path) -> None:
    """Moving a file onto an existing name fails and leaves both files as they were."""
    source, target = tmp_path / "new", tmp_path / "old"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        durable.move_no_replace(str(source), str(target))
    assert (source.read_bytes(), target.read_bytes()) == (b"new", b"old")
    durable.move_no_replace(str(source), str(tmp_path / "free"))
    assert not source.exists()
    assert (tmp_path / "free").read_bytes() == b"new"


@pytest.mark.parametrize(
    ("recipient", "message_id"),
    [
        ("../../etc/passwd@localhost", "../../../evil"),
        ("a/b@localhost", "x/../../y@z"),
        (".hidden@localhost", ".."),
        ("..@localhost", "<>"),
        ("nul\x00byte@localhost", "id\x00with\nnewline"),
        ("ü" * 300 + "@localhost", "m" * 400),
    ],
)
async def test_odd_names_stay_inside_mailbox_root(
    spool: Spool, tmp_path: Path, recipient: str, message_id: str
) -> None:
    """Addresses and Message-IDs with slashes, dots or control characters never escape."""
    message = make_message(relay=(), local=(recipient,), message_id=message_id)
    await spool.store(message)
    root = tmp_path / "mailbox"
    files = [p for p in all_files(root) if ".tmp" not in p.parts]
    assert len(files) == 1
    stored = files[0]
    assert stored.parent.parent == root
    assert not stored.parent.name.startswith(".")
    assert not stored.name.startswith(".")
    assert stored.read_bytes().endswith(message.data)
    assert all(not p.is_file() for p in (tmp_path / "etc", tmp_path.parent / "evil"))


async def test_different_odd_addresses_get_different_mailboxes(
    spool: Spool, tmp_path: Path
) -> None:
    """Two addresses that sanitise to the same text still land in separate mailboxes."""
    await spool.store(make_message(1, relay=(), local=("a/b@localhost",)))
    await spool.store(make_message(2, relay=(), local=("a?b@localhost",)))
    boxes = [p for p in (tmp_path / "mailbox").iterdir() if p.name != ".tmp"]
    assert len(boxes) == 2


async def test_concurrent_stores_all_land(spool: Spool) -> None:
    """Many concurrent store() calls each return a distinct id whose file is intact."""
    messages = [make_message(n, size=n * 37) for n in range(200)]
    ids = await asyncio.gather(*(spool.store(m) for m in messages))
    assert len(set(ids)) == 200
    for queue_id, message in zip(ids, messages, strict=True):
        assert read_queued_message(spool.queue_path(queue_id)).data == message.data
    assert spool_stats(spool.spool_dir).queued == 200


async def test_open_removes_unfinished_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Half-written files left by a crash are removed at startup and counted in the log."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    async with spool:
        kept = await spool.store(make_message())
    (tmp_path / "spool" / "tmp" / "crashed.1.tmp").write_bytes(b"JDXSPOOL 1\n{trunc")
    (tmp_path / "mailbox" / ".tmp" / "crashed.2.tmp").write_bytes(b"partial")
    caplog.set_level(logging.INFO, logger="jdxmail.queue")
    async with Spool(tmp_path / "spool", tmp_path / "mailbox"):
        pass
    assert unfinished(tmp_path / "spool" / "tmp") == []
    assert unfinished(tmp_path / "mailbox" / ".tmp") == []
    assert spool.queue_path(kept).is_file()
    assert "1 queued" in caplog.text
    assert "removed 2 unfinished writes" in caplog.text


def _make_unwritable(path: Path) -> bool:
    """Make *path* refuse new files, even for root (chattr +i); False if impossible."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return True
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    done = subprocess.run([chattr, "+i", str(path)], capture_output=True, check=False)
    return done.returncode == 0


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is not None:
            subprocess.run([chattr, "-i", str(path)], capture_output=True, check=False)
    else:
        path.chmod(0o755)


async def test_unwritable_spool_raises_and_leaves_nothing(spool: Spool, tmp_path: Path) -> None:
    """A spool that refuses writes gives SpoolError and no visible queue or mailbox file."""
    target = tmp_path / "spool" / "tmp"
    if not _make_unwritable(target):
        pytest.skip("cannot make a directory read-only for root here (no chattr)")
    try:
        with pytest.raises(SpoolError, match="cannot store the message"):
            await spool.store(make_message(local=("carol@localhost",)))
    finally:
        _make_writable(target)
    assert spool_stats(tmp_path / "spool").queued == 0
    assert all_files(tmp_path / "mailbox") == []
    # (the stock thread may make its empty files once tmp/ is writable again)
    assert unfinished(target) == []


async def test_failure_midway_undoes_the_queue_file(spool: Spool, tmp_path: Path) -> None:
    """When a mailbox cannot be written, the already-placed queue file is removed too."""
    (tmp_path / "mailbox" / "carol@localhost").write_bytes(b"a file where a folder goes")
    with pytest.raises(SpoolError):
        await spool.store(make_message(local=("carol@localhost",)))
    assert spool_stats(tmp_path / "spool").queued == 0
    assert unfinished(tmp_path / "spool" / "tmp") == []
    assert unfinished(tmp_path / "mailbox" / ".tmp") == []
    ok = await spool.store(make_message(2))
    assert spool.queue_path(ok).is_file()


async def test_store_on_closed_spool_raises(tmp_path: Path) -> None:
    """Storing into a spool that is not open is refused with SpoolError."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    with pytest.raises(SpoolError, match="not open"):
        await spool.store(make_message())


async def test_open_fails_cleanly_when_spool_is_a_file(tmp_path: Path) -> None:
    """A spool path that is a file gives SpoolError at open, not a traceback."""
    (tmp_path / "spool").write_text("not a folder")
    with pytest.raises(SpoolError, match="cannot create the spool directories"):
        await Spool(tmp_path / "spool", tmp_path / "mailbox").open()


async def test_close_finishes_pending_stores(tmp_path: Path) -> None:
    """Stores submitted before close() still complete and are on disk afterwards."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open()
    tasks = [asyncio.create_task(spool.store(make_message(n))) for n in range(20)]
    await asyncio.sleep(0)
    await spool.close()
    ids = await asyncio.gather(*tasks)
    assert all(spool.queue_path(i).is_file() for i in ids)


async def test_truncated_queue_file_is_reported_corrupt(spool: Spool) -> None:
    """A queue file cut short is detected by its size and checksum, not half-read."""
    path = spool.queue_path(await spool.store(make_message()))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptSpoolFile, match="checksum"):
        read_queued_message(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptSpoolFile, match="not a jdxmail spool file"):
        read_queued_message(path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda line: line + b" {}", "extra data"),
        (lambda line: line[:-1], "unreadable envelope"),
        (lambda line: b" " + line, "unreadable envelope"),
        (lambda line: line.replace(b'"id"', b'"\xff"'), "unreadable envelope"),
        (lambda line: b"[1, 2]", "not an object"),
    ],
    ids=["trailing", "cut", "leading-space", "not-utf8", "array"],
)
async def test_damaged_envelope_line_is_reported_corrupt(
    spool: Spool, damage: Callable[[bytes], bytes], reason: str
) -> None:
    """An envelope line that is not exactly one JSON object makes the file corrupt."""
    path = spool.queue_path(await spool.store(make_message()))
    first, envelope, rest = path.read_bytes().split(b"\n", 2)
    path.write_bytes(b"\n".join((first, damage(envelope), rest)))
    with pytest.raises(CorruptSpoolFile, match=reason):
        read_queued_message(path)


@pytest.mark.parametrize("size", [300, 70_000, 3_000_000])
async def test_queue_file_with_extra_bytes_is_reported_corrupt(spool: Spool, size: int) -> None:
    """Bytes beyond the announced size (small or big file) make the file corrupt."""
    path = spool.queue_path(await spool.store(make_message(size=size)))
    assert len(read_queued_message(path).data) > size
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(CorruptSpoolFile, match="checksum"):
        read_queued_message(path)


async def test_envelope_longer_than_the_first_read_is_read(spool: Spool) -> None:
    """A queue file whose envelope line is over 64 KiB (many long addresses) reads back."""
    recipients = tuple(f"{'r' * 200}{n}@example.net" for n in range(400))
    message = make_message(relay=recipients)
    queued = read_queued_message(spool.queue_path(await spool.store(message)))
    assert queued.recipients == recipients
    assert queued.data == message.data


async def test_spool_stats_counts(spool: Spool, tmp_path: Path) -> None:
    """spool_stats reports queued and failed counts and the oldest message's age."""
    assert spool_stats(tmp_path / "spool").queued == 0
    assert spool_stats(tmp_path / "spool").oldest_queued_age is None
    first = await spool.store(make_message(1))
    await spool.store(make_message(2))
    failed = spool.spool_dir / "failed" / f"{first}.msg"
    spool.queue_path(first).rename(failed)
    stats = spool_stats(tmp_path / "spool")
    assert (stats.queued, stats.failed, stats.corrupt) == (1, 1, 0)
    assert stats.oldest_queued_age is not None
    assert 0 <= stats.oldest_queued_age < 3600


def test_spool_stats_of_missing_spool(tmp_path: Path) -> None:
    """spool_stats of a spool that was never created reports zeros."""
    stats = spool_stats(tmp_path / "nowhere")
    assert (stats.queued, stats.failed, stats.corrupt, stats.oldest_queued_age) == (
        0,
        0,
        0,
        None,
    )


async def test_open_keeps_unfinished_writes_of_running_processes(tmp_path: Path) -> None:
    """A tmp file another running process (serve --workers) is writing survives open()."""
    root = tmp_path / "spool" / "tmp"
    root.mkdir(parents=True)
    busy = root / f"0000000000000000000001.p{os.getppid()}.1.tmp"
    dead = root / "0000000000000000000002.p999999999.1.tmp"
    busy.write_bytes(b"JDXSPOOL 1\n{half")
    dead.write_bytes(b"JDXSPOOL 1\n{half")
    async with Spool(tmp_path / "spool", tmp_path / "mailbox"):
        pass
    assert busy.exists()
    assert not dead.exists()


async def test_big_message_can_stay_in_its_file(spool: Spool) -> None:
    """Read with keep_over, a big message is checked whole but read in pieces later."""
    message = make_message(size=3_000_000)
    queue_id = await spool.store(message)
    fd = os.open(spool.queue_path(queue_id), os.O_RDONLY)
    try:
        queued = read_queued_fd(fd, queue_id, keep_over=1 << 20)
        assert queued.spooled is not None
        assert queued.size == len(message.data)
        assert len(queued.data) == 65536  # the first bytes, for bounces
        assert b"".join(queued.spooled.pieces(100_000)) == message.data
    finally:
        os.close(fd)


@pytest.mark.parametrize("damage", ["flip", "extra", "short"])
async def test_big_message_kept_in_its_file_is_checked(spool: Spool, damage: str) -> None:
    """A bit flipped, a byte added or bytes missing in a big queue file: corrupt."""
    queue_id = await spool.store(make_message(size=3_000_000))
    path = spool.queue_path(queue_id)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[2_000_000] ^= 1
    elif damage == "extra":
        raw += b"x"
    else:
        del raw[-10:]
    path.write_bytes(raw)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(CorruptSpoolFile, match=r"checksum|ended 10 bytes early"):
            read_queued_fd(fd, queue_id, keep_over=1 << 20)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("old_size", "new_size"), [(5_000, 5_100), (5_000, 200_000), (100, 100), (100, 3_000)]
)
async def test_store_writes_over_a_spare_file(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, old_size: int, new_size: int
) -> None:
    """A delivered queue file left in spare/ is reused (same inode) for a next message
    that needs as many 4 KiB blocks or more, cut or grown to the new size, and reads
    back as exactly the new message."""
    monkeypatch.setattr("jdxmail.queue.recycling._SPARE_IDLE_LOOK", 0.0)
    old_id = await spool.store(make_message(1, size=old_size))
    spare = spool.files.spare_path(old_id, spool.queue_path(old_id).stat().st_size)
    os.rename(spool.queue_file(old_id), spare)  # as the delivery engine does
    inode = os.stat(spare).st_ino
    message = make_message(2, size=new_size)
    new_id = await spool.store(message)
    assert os.stat(spool.queue_file(new_id)).st_ino == inode
    assert os.listdir(spool.spare_dir) == []
    queued = read_queued_message(spool.queue_path(new_id))
    assert queued.data == message.data
    assert queued.queue_id == new_id


async def test_spare_files_that_would_have_to_shrink_are_not_taken(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A smaller message does not take a spare with more blocks (cutting a file down
    frees blocks, which waits for the disk), nor does a message over 256 KiB, nor a
    name without a block count, a symlink or a folder in spare/."""
    monkeypatch.setattr("jdxmail.queue.recycling._SPARE_IDLE_LOOK", 0.0)
    big_id = await spool.store(make_message(1, size=20_000))
    big_spare = spool.files.spare_path(big_id, spool.queue_path(big_id).stat().st_size)
    os.rename(spool.queue_file(big_id), big_spare)
    outside = spool.spool_dir.parent / "outside.txt"
    outside.write_bytes(b"not yours")
    (spool.spare_dir / "link.1").symlink_to(outside)
    (spool.spare_dir / "folder.1").mkdir()
    (spool.spare_dir / "noblocks").write_bytes(b"x")
    before = sorted(os.listdir(spool.spare_dir))
    small = make_message(2, size=100)
    small_id = await spool.store(small)
    huge = make_message(3, size=300_000)
    await spool.store(huge)
    assert sorted(os.listdir(spool.spare_dir)) == before
    assert outside.read_bytes() == b"not yours"
    assert read_queued_message(spool.queue_path(small_id)).data == small.data


async def test_new_queue_files_are_made_ahead_off_the_event_loop(tmp_path: Path) -> None:
    """With no spare to reuse, the next queue files are empty files a thread made ahead
    (same inode); they hold exactly the new message; close removes the rest."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open()
    try:
        await spool.store(make_message(1))  # no file made ahead yet: starts the thread
        for _ in range(500):  # the thread fills up to 64 within milliseconds
            if len(os.listdir(spool.tmp_dir)) >= 8:
                break
            await asyncio.sleep(0.01)
        ahead = {os.stat(spool.tmp_dir / name).st_ino for name in os.listdir(spool.tmp_dir)}
        assert len(ahead) >= 8
        message = make_message(2)
        queue_id = await spool.store(message)
        assert os.stat(spool.queue_file(queue_id)).st_ino in ahead
        assert read_queued_message(spool.queue_path(queue_id)).data == message.data
    finally:
        await spool.close()
    assert os.listdir(spool.tmp_dir) == []


async def made_ahead(folder: Path, at_least: int = 8) -> set[int]:
    """The inodes of the empty files made ahead in *folder*, once there are some."""
    for _ in range(500):  # the thread fills up to 64 within milliseconds
        if len(os.listdir(folder)) >= at_least:
            break
        await asyncio.sleep(0.01)
    return {os.stat(folder / name).st_ino for name in os.listdir(folder)}


async def test_mailbox_files_are_made_ahead_off_the_event_loop(tmp_path: Path) -> None:
    """A local recipient's mailbox file is written into an empty file a thread made
    ahead in the mailboxes' .tmp/ (same inode), like a queue file, and holds exactly
    the new message."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open()
    try:
        await spool.store(make_message(1, relay=(), local=("bob@localhost",)))
        ahead = await made_ahead(spool.mailbox_tmp_dir)
        assert len(ahead) >= 8
        message = make_message(2, relay=(), local=("bob@localhost",))
        await spool.store(message)
        delivered = tmp_path / "mailbox" / "bob@localhost" / "msg2@test.eml"
        assert os.stat(delivered).st_ino in ahead
        assert delivered.read_bytes().endswith(message.data)
    finally:
        await spool.close()
    assert os.listdir(spool.mailbox_tmp_dir) == []


async def test_a_server_spool_makes_files_ahead_at_open(tmp_path: Path) -> None:
    """Opened with make_ahead (as serve does), the spool has empty files ready in tmp/
    and in the mailboxes' .tmp/ before its first store, so a first burst finds them."""
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open(make_ahead=True)
    try:
        assert len(await made_ahead(spool.tmp_dir)) >= 8
        assert len(await made_ahead(spool.mailbox_tmp_dir)) >= 8
    finally:
        await spool.close()
    assert os.listdir(spool.tmp_dir) == []
    assert os.listdir(spool.mailbox_tmp_dir) == []


async def test_queue_file_holding_another_message_is_corrupt(spool: Spool) -> None:
    """A reused file whose new content never reached the disk (power cut before the
    flush) still holds the old message: its envelope names the old id, so it is
    reported corrupt rather than sent again under the new name."""
    old_id = await spool.store(make_message(1))
    new_id = await spool.store(make_message(2))
    shutil.copyfile(spool.queue_file(old_id), spool.queue_file(new_id))
    with pytest.raises(CorruptSpoolFile, match="envelope is that of another message"):
        read_queued_message(spool.queue_path(new_id))
