"""QueueWatcher: files renamed or written into a watched directory are reported at once."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jdxmail.queue.watch import QueueWatcher

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux-only")

TIMEOUT = 5.0


@dataclass
class Seen:
    """What a watcher reported, with events to await."""

    names: Counter[str] = field(default_factory=Counter)
    order: list[str] = field(default_factory=list)
    overflows: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def file(self, name: str) -> None:
        """Record an on_file call."""
        self.names[name] += 1
        self.order.append(name)
        self.changed.set()

    def overflow(self) -> None:
        """Record an on_overflow call."""
        self.overflows += 1
        self.changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (at most TIMEOUT seconds) until *condition* holds."""

        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), TIMEOUT)


@dataclass
class Spool:
    """A spool-like layout: writers fill tmp/ and rename into queue/."""

    tmp: Path
    queue: Path

    def store(self, queue_id: str, suffix: str = ".msg") -> None:
        """Write tmp/ID.tmp and rename it to queue/ID<suffix>, as a server does."""
        temporary = self.tmp / f"{queue_id}.tmp"
        temporary.write_bytes(b"JDXSPOOL 1\n")
        os.rename(temporary, self.queue / f"{queue_id}{suffix}")


Watch = Callable[..., Awaitable[tuple[QueueWatcher, Seen]]]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    """tmp/ and queue/ under the test's temporary directory."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "queue").mkdir()
    return Spool(tmp_path / "tmp", tmp_path / "queue")


@pytest.fixture
async def watch(spool: Spool) -> AsyncIterator[Watch]:
    """Start a QueueWatcher on a directory (queue/ by default); closed after the test."""
    watchers: list[QueueWatcher] = []

    async def start(
        directory: Path | None = None, *, on_file: Callable[[str], None] | None = None
    ) -> tuple[QueueWatcher, Seen]:
        seen = Seen()
        watcher = QueueWatcher(
            directory or spool.queue, ".msg", on_file or seen.file, seen.overflow
        )
        watchers.append(watcher)
        assert watcher.start()
        assert watcher.active
        return watcher, seen

    yield start
    for watcher in watchers:
        watcher.close()


def queue_id(n: int) -> str:
    """A queue id shaped like the spool's (22 hex characters)."""
    return f"{n:022x}"


@linux_only
async def test_renamed_message_is_reported_with_its_id(spool: Spool, watch: Watch) -> None:
    """A .msg file renamed into queue/ is reported by its id, without the suffix."""
    _, seen = await watch()
    spool.store(queue_id(1))
    await seen.until(lambda: bool(seen.names))
    assert seen.order == [queue_id(1)]
    assert seen.overflows == 0


@linux_only
async def test_other_suffixes_and_dot_names_are_not_reported(spool: Spool, watch: Watch) -> None:
    """Files with another suffix, dot-names and directories are skipped; later .msg files still come."""
    _, seen = await watch()
    spool.store(queue_id(1), suffix=".json")
    spool.store(".hidden", suffix=".msg")
    (spool.queue / "partial.msg.tmp").write_bytes(b"x")
    (spool.tmp / "adir.msg").mkdir()
    os.rename(spool.tmp / "adir.msg", spool.queue / "adir.msg")
    spool.store(queue_id(2))
    await seen.until(lambda: bool(seen.names))
    assert seen.order == [queue_id(2)]


@linux_only
async def test_file_written_in_place_is_reported_when_closed(spool: Spool, watch: Watch) -> None:
    """A .msg file created and written directly in queue/ is reported once it is closed."""
    _, seen = await watch()
    with (spool.queue / f"{queue_id(7)}.msg").open("wb") as handle:
        handle.write(b"JDXSPOOL 1\n")
    await seen.until(lambda: bool(seen.names))
    assert seen.order == [queue_id(7)]


@linux_only
async def test_many_renames_are_each_reported_once(spool: Spool, watch: Watch) -> None:
    """500 messages renamed in quick succession are all reported, none twice."""
    _, seen = await watch()
    ids = [queue_id(n) for n in range(500)]
    for each in ids:
        spool.store(each)
    await seen.until(lambda: len(seen.names) == len(ids))
    # Events arrive in order: once the sentinel is seen, no late duplicate can follow.
    spool.store("f" * 22)
    await seen.until(lambda: "f" * 22 in seen.names)
    assert sorted(seen.names) == sorted([*ids, "f" * 22])
    assert set(seen.names.values()) == {1}
    assert seen.overflows == 0


@linux_only
async def test_failing_callback_is_logged_and_watching_goes_on(
    spool: Spool, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in on_file is logged on jdxmail.queue and later files are still reported."""
    seen = Seen()

    def on_file(name: str) -> None:
        seen.file(name)
        if name == queue_id(1):
            raise RuntimeError("handler broke")

    watcher, _ = await watch(on_file=on_file)
    with caplog.at_level(logging.ERROR, logger="jdxmail.queue"):
        spool.store(queue_id(1))
        spool.store(queue_id(2))
        await seen.until(lambda: len(seen.names) == 2)
    assert seen.order == [queue_id(1), queue_id(2)]
    assert watcher.active
    assert any(
        r.name == "jdxmail.queue" and r.exc_info and "handler broke" in str(r.exc_info[1])
        for r in caplog.records
    )


@linux_only
async def test_removed_directory_reports_overflow_and_stops(spool: Spool, watch: Watch) -> None:
    """When the watched directory is removed, on_overflow is called once and the watcher stops."""
    watcher, seen = await watch()
    spool.queue.rmdir()
    await seen.until(lambda: seen.overflows > 0)
    assert not watcher.active
    assert seen.overflows == 1


@linux_only
async def test_moved_directory_reports_overflow_and_stops(spool: Spool, watch: Watch) -> None:
    """When the watched directory is renamed away, on_overflow is called and the watcher stops."""
    watcher, seen = await watch()
    os.rename(spool.queue, spool.queue.with_name("queue.old"))
    await seen.until(lambda: seen.overflows > 0)
    assert not watcher.active


def max_queued_events() -> int:
    """The kernel's per-instance inotify event queue length (0 when unknown)."""
    limit_file = Path("/proc/sys/fs/inotify/max_queued_events")
    return int(limit_file.read_text()) if limit_file.exists() else 0


@linux_only
async def test_kernel_queue_overflow_calls_on_overflow(spool: Spool, watch: Watch) -> None:
    """More events than the kernel queues while the loop is busy lead to an on_overflow call."""
    limit = max_queued_events()
    if not 0 < limit <= 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to force an overflow")
    _, seen = await watch()
    # Renaming back and forth queues one IN_MOVED_TO per rename (distinct cookies, so the
    # kernel cannot merge them); the loop does not run meanwhile, so nothing is read.
    here, there = spool.queue / "a.tmp", spool.queue / "b.tmp"
    here.write_bytes(b"")
    for _ in range((limit + 2) // 2):
        os.rename(here, there)
        os.rename(there, here)
    await seen.until(lambda: seen.overflows > 0)
    spool.store(queue_id(3))
    await seen.until(lambda: bool(seen.names))
    assert seen.order == [queue_id(3)]


async def test_start_on_a_file_returns_false(tmp_path: Path) -> None:
    """start() on a path that is not a directory returns False instead of raising."""
    path = tmp_path / "not-a-dir"
    path.write_bytes(b"")
    seen = Seen()
    watcher = QueueWatcher(path, ".msg", seen.file, seen.overflow)
    assert watcher.start() is False
    assert not watcher.active
    missing = QueueWatcher(tmp_path / "missing", ".msg", seen.file, seen.overflow)
    assert missing.start() is False


async def test_start_without_inotify_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where inotify does not exist (not Linux), start() returns False so the caller rescans."""
    monkeypatch.setattr(sys, "platform", "darwin")
    seen = Seen()
    watcher = QueueWatcher(tmp_path, ".msg", seen.file, seen.overflow)
    assert watcher.start() is False
    assert not watcher.active


@linux_only
async def test_close_twice_stops_reporting(spool: Spool, watch: Watch) -> None:
    """close() can be called twice; after it no file is reported, and start() works again."""
    watcher, seen = await watch()
    watcher.close()
    watcher.close()
    assert not watcher.active
    spool.store(queue_id(1))
    assert watcher.start()
    spool.store(queue_id(2))
    await seen.until(lambda: bool(seen.names))
    assert seen.order == [queue_id(2)]
