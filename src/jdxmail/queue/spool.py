"""The durable spool: accepted mail is on stable storage before the client hears 250.

Layout under the spool directory::

    tmp/            files being written (never read; removed at startup)
    queue/ID.msg    one immutable file per queued message: envelope + data
    state/ID.json   mutable delivery state of a queued message (absent until the
                    first attempt), replaced atomically
    failed/ID.msg   messages given up on, with failed/ID.json holding the reason
    corrupt/        spool files that could not be read, moved aside
    quota.json      per-relay daily counters

``Spool.store`` hands the message to a single writer thread (group commit). The
thread takes every store that is pending and, for the whole batch: writes each file
into ``tmp/``; makes the data durable (one Linux ``syncfs`` when the batch has three
or more stores, else an fsync per file); renames the files into place; fsyncs each
touched directory once; and only then completes the callers' futures. A crash before
the renames leaves only ``tmp/`` files (removed at the next start); after them, only
complete files. ``bench/spool_bench.py`` compares this with one fsync chain per
message; the figures are in docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jdxmail.queue.mailbox import MailboxDelivery, mailbox_dir_for, message_file_name

__all__ = [
    "FLUSH_FILE",
    "AcceptedMessage",
    "CorruptSpoolFile",
    "QueuedMessage",
    "Spool",
    "SpoolError",
    "SpoolStats",
    "claim",
    "read_queued_message",
    "spool_stats",
]

logger = logging.getLogger("jdxmail.queue")

MAGIC = b"JDXSPOOL 1\n"
QUEUE_SUFFIX = ".msg"
STATE_SUFFIX = ".json"

#: touched by ``jdxmail queue flush`` / ``retry``: a running engine rescans at once
FLUSH_FILE = "flush"

CommitMode = Literal["batch", "batch-fsync", "per-message"]


class SpoolError(Exception):
    """Storing failed (disk full, permission...); the server answers 451 4.3.0."""


class CorruptSpoolFile(SpoolError):
    """A spool file is truncated, has a bad checksum or an unreadable envelope."""


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    """A message the server has accepted, with its envelope, ready to be stored."""

    mail_from: str
    relay_recipients: tuple[str, ...]
    local_recipients: tuple[str, ...]
    data: bytes
    message_id: str
    auth_user: str | None
    client_address: str
    session_id: str
    received_at: float
    mail_options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message read back from ``queue/ID.msg``: its envelope and data."""

    queue_id: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str
    auth_user: str | None
    client_address: str
    session_id: str
    received_at: float
    mail_options: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counts for ``doctor`` and ``queue``: what waits and what failed."""

    queued: int
    failed: int
    corrupt: int
    oldest_queued_age: float | None


class _Ids:
    """Queue ids: sortable by time, unique across processes sharing one spool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = 0
        self._last_us = 0

    def next(self) -> str:
        with self._lock:
            now_us = time.time_ns() // 1000
            now_us = max(now_us, self._last_us)
            self._last_us = now_us
            self._counter = (self._counter + 1) & 0xFFFF
            counter = self._counter
        return f"{now_us:013x}{os.getpid() & 0xFFFFF:05x}{counter:04x}"


_IDS = _Ids()


def queue_id_time(queue_id: str) -> float | None:
    """The epoch seconds encoded at the start of a queue id, or None if it has none."""
    try:
        return int(queue_id[:13], 16) / 1e6
    except ValueError:
        return None


def encode_queued(queue_id: str, message: AcceptedMessage) -> bytes:
    """The bytes of ``queue/ID.msg``: magic line, one JSON envelope line, the data."""
    header = {
        "id": queue_id,
        "mail_from": message.mail_from,
        "recipients": list(message.relay_recipients),
        "local_recipients": list(message.local_recipients),
        "message_id": message.message_id,
        "auth_user": message.auth_user,
        "client": message.client_address,
        "session": message.session_id,
        "received_at": message.received_at,
        "mail_options": list(message.mail_options),
        "size": len(message.data),
        "crc32": zlib.crc32(message.data),
    }
    line = json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return b"".join((MAGIC, line, b"\n", message.data))


def decode_queued(raw: bytes, queue_id: str) -> QueuedMessage:
    """Parse the bytes of a queue file; raise CorruptSpoolFile when they do not check out."""
    if not raw.startswith(MAGIC):
        raise CorruptSpoolFile(f"{queue_id}: not a jdxmail spool file (bad first line)")
    end = raw.find(b"\n", len(MAGIC))
    if end < 0:
        raise CorruptSpoolFile(f"{queue_id}: truncated envelope")
    try:
        header = json.loads(raw[len(MAGIC) : end])
        data = raw[end + 1 :]
        if len(data) != header["size"] or zlib.crc32(data) != header["crc32"]:
            raise CorruptSpoolFile(
                f"{queue_id}: data is {len(data)} bytes or has a bad checksum "
                f"(envelope says {header['size']} bytes)"
            )
        return QueuedMessage(
            queue_id=queue_id,
            mail_from=str(header["mail_from"]),
            recipients=tuple(str(r) for r in header["recipients"]),
            data=data,
            message_id=str(header["message_id"]),
            auth_user=None if header["auth_user"] is None else str(header["auth_user"]),
            client_address=str(header["client"]),
            session_id=str(header["session"]),
            received_at=float(header["received_at"]),
            mail_options=tuple(str(o) for o in header["mail_options"]),
        )
    except CorruptSpoolFile:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptSpoolFile(f"{queue_id}: unreadable envelope ({exc})") from None


def read_queued_message(path: Path) -> QueuedMessage:
    """Read and check ``queue/ID.msg``; raise CorruptSpoolFile or OSError."""
    return decode_queued(path.read_bytes(), path.name.removesuffix(QUEUE_SUFFIX))


def fsync_dir(path: Path) -> None:
    """Make the entries of directory *path* (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Create *path* (which must not exist) with *data*, fsync'ed before returning.

    With ``sync=False`` the caller makes the data durable (``syncfs`` for a batch).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def sync_file_system(directory: Path) -> None:
    """Flush every written file of the file system holding *directory* (Linux syncfs)."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(directory))
    finally:
        os.close(fd)


def claim(path: Path) -> int | None:
    """Open and lock queue file *path* for delivery; None if gone or taken by another.

    The lock is held until the returned descriptor is closed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        here = os.stat(path)
        mine = os.fstat(fd)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    if (here.st_ino, here.st_dev) != (mine.st_ino, mine.st_dev) or mine.st_nlink == 0:
        os.close(fd)
        return None
    return fd


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@dataclass(slots=True)
class _Plan:
    """The files one store() creates: tmp path → final path (mailbox links pick a name)."""

    queue_id: str
    queue_file: tuple[Path, Path] | None = None
    mailbox_files: list[MailboxDelivery] = field(default_factory=list)
    placed: list[Path] = field(default_factory=list)
    tmp_files: list[Path] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    """A unit of work for the writer thread, completed through a future on its loop."""

    run: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None]
    plan: _Plan | None = None
    message: AcceptedMessage | None = None


class Spool:
    """The on-disk queue and the writer thread that makes stores durable in batches.

    ``store`` is safe to call concurrently from one event loop; several processes may
    share one spool directory (queue ids carry the process id).
    """

    def __init__(
        self, spool_dir: Path, mailbox_dir: Path, *, commit_mode: CommitMode = "batch"
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.mailbox_dir = Path(mailbox_dir)
        self.tmp_dir = self.spool_dir / "tmp"
        self.queue_dir = self.spool_dir / "queue"
        self.state_dir = self.spool_dir / "state"
        self.failed_dir = self.spool_dir / "failed"
        self.corrupt_dir = self.spool_dir / "corrupt"
        self.mailbox_tmp_dir = self.mailbox_dir / ".tmp"
        self._commit_mode = commit_mode
        #: fsync each file (else one syncfs per file system per batch)
        self._file_sync = commit_mode != "batch" or _SYNCFS is None
        self._syncfs_dirs: list[Path] = []
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._tmp_counter = 0
        #: fired (from the writer thread via the loop) when a message enters queue/
        self.on_queued: Callable[[str], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Create the directories, clean up what a crash left, start the writer thread.

        Raises SpoolError when the directories cannot be created.
        """
        self._loop = asyncio.get_running_loop()
        counts = await asyncio.to_thread(self._prepare)
        logger.info(
            "spool %s: %d queued, %d failed; removed %d unfinished writes left by a previous run",
            self.spool_dir,
            counts["queued"],
            counts["failed"],
            counts["tmp_removed"],
        )
        self._closing = False
        self._thread = threading.Thread(target=self._writer, name="jdxmail-spool", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Finish every pending store, then stop the writer thread."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        await asyncio.to_thread(thread.join)
        self._thread = None

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _prepare(self) -> dict[str, int]:
        try:
            for directory in (
                self.tmp_dir,
                self.queue_dir,
                self.state_dir,
                self.failed_dir,
                self.corrupt_dir,
                self.mailbox_tmp_dir,
            ):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directories: {exc}") from exc
        removed = 0
        for directory in (self.tmp_dir, self.mailbox_tmp_dir):
            for leftover in directory.iterdir():
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    removed += 1
        devices: dict[int, Path] = {}
        for directory in (self.tmp_dir, self.mailbox_tmp_dir):
            devices.setdefault(directory.stat().st_dev, directory)
        self._syncfs_dirs = list(devices.values())
        queued = sum(1 for p in self.queue_dir.iterdir() if p.name.endswith(QUEUE_SUFFIX))
        failed = sum(1 for p in self.failed_dir.iterdir() if p.name.endswith(QUEUE_SUFFIX))
        return {"queued": queued, "failed": failed, "tmp_removed": removed}

    # -- storing -------------------------------------------------------------------

    async def store(self, message: AcceptedMessage) -> str:
        """Store *message* durably and return its queue id.

        When this returns, the queue file (for relay recipients) and one mailbox file
        per local recipient are written, fsync'ed, renamed into place, and their
        directories fsync'ed. Raises SpoolError (nothing left visible) otherwise.
        """
        if self._thread is None:
            raise SpoolError("the spool is not open")
        plan = _Plan(queue_id=_IDS.next())
        self._plan(plan, message)
        if self._commit_mode == "per-message":
            await asyncio.to_thread(self._store_one, plan, message)
        else:
            await self._submit(lambda: None, plan, message)
        if plan.queue_file is not None and self.on_queued is not None:
            self.on_queued(plan.queue_id)
        return plan.queue_id

    def _plan(self, plan: _Plan, message: AcceptedMessage) -> None:
        if message.relay_recipients:
            plan.queue_file = (
                self._tmp_path(self.tmp_dir, plan.queue_id),
                self.queue_dir / f"{plan.queue_id}{QUEUE_SUFFIX}",
            )
        name = message_file_name(message.message_id, plan.queue_id)
        seen: set[Path] = set()
        for recipient in message.local_recipients:
            directory = mailbox_dir_for(self.mailbox_dir, recipient)
            if directory in seen:
                continue
            seen.add(directory)
            plan.mailbox_files.append(
                MailboxDelivery(
                    recipient=recipient,
                    tmp=self._tmp_path(self.mailbox_tmp_dir, plan.queue_id),
                    directory=directory,
                    name=name,
                )
            )

    def _tmp_path(self, directory: Path, queue_id: str) -> Path:
        self._tmp_counter += 1
        return directory / f"{queue_id}.{self._tmp_counter}.tmp"

    async def _submit(
        self,
        run: Callable[[], Any],
        plan: _Plan | None = None,
        message: AcceptedMessage | None = None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            def settle() -> None:
                if future.done():
                    return
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            loop.call_soon_threadsafe(settle)

        with self._cond:
            if self._closing or self._thread is None:
                raise SpoolError("the spool is closing")
            self._pending.append(_Job(run=run, done=done, plan=plan, message=message))
            self._cond.notify()
        return await future

    async def run_in_writer(self, run: Callable[[], Any]) -> Any:
        """Run *run* on the writer thread, after the stores already submitted."""
        return await self._submit(run)

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending and self._closing:
                    return
                batch, self._pending = self._pending, []
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[_Job]) -> None:
        """Write every store's tmp files, sync, place them, then sync each directory once.

        Other jobs (``run_in_writer``) run in submission order and complete at once.
        """
        stores: list[_Job] = []
        errors: dict[int, SpoolError] = {}
        # syncfs costs more than one fsync; it pays off from a few files on
        use_syncfs = not self._file_sync and sum(j.plan is not None for j in batch) >= 3
        for job in batch:
            try:
                if job.plan is not None and job.message is not None:
                    self._write_tmp(job.plan, job.message, sync=not use_syncfs)
                    result = None
                else:
                    result = job.run()
            except Exception as exc:  # handed to the awaiting caller, never swallowed
                if job.plan is None:
                    job.done(None, exc)
                    continue
                errors[id(job)] = _as_spool_error(exc)
                stores.append(job)
                continue
            if job.plan is None:
                job.done(result, None)
            else:
                stores.append(job)
        live = [job for job in stores if id(job) not in errors]
        if live and use_syncfs:
            try:
                for directory in self._syncfs_dirs:
                    sync_file_system(directory)
            except OSError as exc:
                self._fail(live, _as_spool_error(exc), errors)
                live = []
        dirs: set[Path] = set()
        for job in live:
            assert job.plan is not None
            try:
                dirs.update(self._place(job.plan))
            except OSError as exc:
                self._fail([job], _as_spool_error(exc), errors)
        try:
            for directory in sorted(dirs):
                fsync_dir(directory)
        except OSError as exc:
            self._fail([j for j in live if id(j) not in errors], _as_spool_error(exc), errors)
        for job in stores:
            assert job.plan is not None
            job.done(job.plan.queue_id, errors.get(id(job)))

    def _fail(self, jobs: list[_Job], error: SpoolError, errors: dict[int, SpoolError]) -> None:
        for job in jobs:
            if job.plan is not None:
                self._undo(job.plan)
            errors[id(job)] = error

    def _store_one(self, plan: _Plan, message: AcceptedMessage) -> None:
        """The unbatched path (for the benchmark): own fsyncs for everything."""
        try:
            self._write_tmp(plan, message)
            for directory in sorted(self._place(plan)):
                fsync_dir(directory)
        except OSError as exc:
            self._undo(plan)
            raise _as_spool_error(exc) from exc

    def _write_tmp(self, plan: _Plan, message: AcceptedMessage, *, sync: bool = True) -> None:
        try:
            if plan.queue_file is not None:
                tmp, _ = plan.queue_file
                plan.tmp_files.append(tmp)
                write_synced(tmp, encode_queued(plan.queue_id, message), sync=sync)
            for delivery in plan.mailbox_files:
                plan.tmp_files.append(delivery.tmp)
                write_synced(delivery.tmp, message.data, sync=sync)
        except BaseException:
            self._undo(plan)
            raise

    def _place(self, plan: _Plan) -> set[Path]:
        """Rename/link the tmp files into place; return the directories to fsync."""
        dirs: set[Path] = set()
        if plan.queue_file is not None:
            tmp, final = plan.queue_file
            os.rename(tmp, final)
            plan.placed.append(final)
            dirs.add(final.parent)
        for delivery in plan.mailbox_files:
            created = delivery.ensure_directory()
            if created:
                dirs.update(created)
            final = delivery.link_into_place()
            plan.placed.append(final)
            dirs.add(final.parent)
        return dirs

    def _undo(self, plan: _Plan) -> None:
        for path in (*plan.placed, *plan.tmp_files):
            _unlink_quietly(path)
        plan.placed.clear()

    # -- reading (for the delivery engine and the queue CLI) -------------------------

    def queue_path(self, queue_id: str) -> Path:
        """Where the queue file of *queue_id* lives."""
        return self.queue_dir / f"{queue_id}{QUEUE_SUFFIX}"

    def queued_ids(self) -> list[str]:
        """Ids of every queued message, oldest first (sync; call in a thread)."""
        return sorted(_ids_in(self.queue_dir))


def _ids_in(directory: Path) -> Iterator[str]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(QUEUE_SUFFIX):
            yield entry.name.removesuffix(QUEUE_SUFFIX)


def _as_spool_error(exc: BaseException) -> SpoolError:
    if isinstance(exc, SpoolError):
        return exc
    if isinstance(exc, OSError):
        reason = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EACCES: "permission denied",
            errno.EROFS: "the file system is read-only",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        where = f" ({exc.filename})" if exc.filename else ""
        error = SpoolError(f"cannot store the message: {reason}{where}")
        error.__cause__ = exc
        return error
    error = SpoolError(f"cannot store the message: {exc!r}")
    error.__cause__ = exc
    return error


def spool_stats(spool_dir: Path) -> SpoolStats:
    """Count queued, failed and corrupt messages and the age of the oldest queued one."""
    spool_dir = Path(spool_dir)
    queued = sorted(_ids_in(spool_dir / "queue"))
    failed = sum(1 for _ in _ids_in(spool_dir / "failed"))
    try:
        corrupt = sum(1 for _ in os.scandir(spool_dir / "corrupt"))
    except FileNotFoundError:
        corrupt = 0
    oldest: float | None = None
    if queued:
        born = queue_id_time(queued[0])
        if born is None:
            with contextlib.suppress(OSError):
                born = (spool_dir / "queue" / f"{queued[0]}{QUEUE_SUFFIX}").stat().st_mtime
        if born is not None:
            oldest = max(0.0, time.time() - born)
    return SpoolStats(queued=len(queued), failed=failed, corrupt=corrupt, oldest_queued_age=oldest)
