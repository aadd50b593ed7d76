"""The durable spool: accepted mail is on stable storage before the client hears 250.

Layout under the spool directory::

    tmp/            files being written (never read; at startup, those of processes
                    that no longer run are removed)
    queue/ID.msg    one immutable file per queued message: envelope + data
    state/ID.json   mutable delivery state of a queued message (absent until the
                    first attempt), replaced atomically
    failed/ID.msg   messages given up on, with failed/ID.json holding the reason
    corrupt/        spool files that could not be read, moved aside
    quota.json      per-relay daily counters

``Spool.store`` commits in batches with as few system calls off the event loop as
possible (on Linux, mode ``batch``): the event loop writes the message's files into
``tmp/`` itself (page-cache writes of a few microseconds; messages over 1 MiB are
written by the sync thread instead), and one sync thread runs ``syncfs`` over and over
for whatever has gathered. A message for relays only is renamed into ``queue/`` at
once and the next flush makes its data and its name durable; only then does the
caller get its queue id. Its file carries its size and checksum, so a file that a
crash cut short (never acknowledged) is recognised as such. Mailbox files have no
checksum: they go through two flushes, the data first, then (after the event loop
linked them into place) the names, so a crash leaves no half-written mail in a
mailbox. A thread that needed the interpreter lock back after
every system call was the bottleneck of the earlier design (see docs/delivery.md);
this one takes it a few times per batch, whatever the batch size.

Elsewhere (no ``syncfs``) and in the benchmark's ``batch-fsync`` mode, one writer
thread writes each batch, fsyncs every file, renames them and fsyncs each touched
directory once. ``bench/spool_bench.py`` compares the designs; the figures are in
docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import enum
import errno
import fcntl
import itertools
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jdxmail.process import libc, tmp_writer_alive
from jdxmail.queue.mailbox import (
    MailboxDelivery,
    delivery_head,
    mailbox_dir_for,
    message_file_name,
)

__all__ = [
    "FLUSH_FILE",
    "AcceptedMessage",
    "CorruptSpoolFile",
    "DataTail",
    "QueuedMessage",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "SpoolStats",
    "SpooledBody",
    "claim",
    "claim_sized",
    "read_queued_fd",
    "read_queued_message",
    "spool_stats",
]

logger = logging.getLogger("jdxmail.queue")

MAGIC = b"JDXSPOOL 1\n"
QUEUE_SUFFIX = ".msg"
STATE_SUFFIX = ".json"

#: touched by ``jdxmail queue flush`` / ``retry``: a running engine rescans at once
FLUSH_FILE = "flush"
#: queue files of delivered messages, kept to be written over by the next stores
SPARE_DIR = "spare"
#: delivered queue files up to this size are kept in spare/ (bigger ones are removed)
SPARE_MAX_SIZE = 256 * 1024
#: at most about this many files are kept in spare/
SPARE_LIMIT = 2048
#: how many spare names one look at spare/ takes
_SPARE_BATCH = 256
#: seconds before looking at an empty spare/ again
_SPARE_IDLE_LOOK = 0.1
#: empty tmp files the stock thread keeps made ahead for new queue files
_STOCK = 64

CommitMode = Literal["batch", "batch-fsync", "per-message"]


class SpoolError(Exception):
    """Storing failed (an I/O error, permission...); the server answers 451 4.3.0."""


class SpoolFull(SpoolError):
    """Storing failed for want of space (disk full, quota); the server answers 452 4.3.1."""


class CorruptSpoolFile(SpoolError):
    """A spool file is truncated, has a bad checksum or an unreadable envelope."""


@dataclass(slots=True, eq=False)
class DataTail:
    """The data of a big message past its first part, in an unnamed file in ``tmp/``.

    The server writes a message too big to hold in memory here as it arrives
    (:meth:`Spool.new_tail`); the spool copies it into each file it stores and closes
    it when the store is done. The file has no name: nothing is left behind if the
    process dies.
    """

    fd: int
    size: int = 0
    crc32: int = 0

    def write(self, data: bytes | bytearray) -> None:
        """Append *data*; OSError (disk full...) if it cannot be written."""
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.crc32 = zlib.crc32(data, self.crc32)
        self.size += len(data)

    def close(self) -> None:
        """Close (and so free) the file; safe to call twice."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    """A message the server has accepted, with its envelope, ready to be stored."""

    mail_from: str
    relay_recipients: tuple[str, ...]
    local_recipients: tuple[str, ...]
    #: the message as it is stored (the server's buffer itself for big messages:
    #: nobody changes it after it is handed over)
    data: bytes | bytearray
    message_id: str
    auth_user: str | None
    client_address: str
    session_id: str
    received_at: float
    mail_options: tuple[str, ...] = ()
    #: the rest of the data, after *data*, for a message too big to hold in memory
    #: (storing it hands the tail over to the spool, which closes it)
    tail: DataTail | None = None

    @property
    def size(self) -> int:
        """The size of the whole data in bytes."""
        return len(self.data) + (self.tail.size if self.tail is not None else 0)

    def crc32(self) -> int:
        """The CRC-32 of the whole data."""
        crc = zlib.crc32(self.data)
        if self.tail is None:
            return crc
        return crc32_combine(crc, self.tail.crc32, self.tail.size)


def _gf2_times(matrix: list[int], vector: int) -> int:
    total = 0
    row = 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A + B from crc32(A), crc32(B) and len(B) (zlib's crc32_combine).

    A big message's tail is checksummed as it arrives, before the headers put in
    front of it are known; this joins the two without reading the data again.
    """
    if length2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:  # apply len2 zero bytes to crc1, squaring the operator per bit of len2
        even = _gf2_square(odd)
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _gf2_square(even)
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message read back from ``queue/ID.msg``: its envelope and data.

    For a big message read with ``read_queued_fd(..., keep_over=N)``, *data* holds
    only its first bytes (the header section, for bounces) and *spooled* says where
    the whole data is, to be read in pieces while it is sent.
    """

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
    spooled: SpooledBody | None = None

    @property
    def size(self) -> int:
        """The size of the whole data in bytes."""
        return self.spooled.size if self.spooled is not None else len(self.data)


@dataclass(frozen=True, slots=True)
class SpooledBody:
    """The data of a big queued message, left in its (claimed, open) queue file."""

    fd: int
    offset: int
    size: int

    def pieces(self, piece: int = 1 << 20) -> Iterator[bytes]:
        """The data in pieces of *piece* bytes; CorruptSpoolFile if the file got short."""
        done = 0
        while done < self.size:
            chunk = os.pread(self.fd, min(piece, self.size - done), self.offset + done)
            if not chunk:
                raise CorruptSpoolFile(f"the queue file ended {self.size - done} bytes early")
            done += len(chunk)
            yield chunk

    def read(self) -> bytes:
        """The whole data at once (for the rare paths that must change it)."""
        return b"".join(self.pieces())


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


#: one encoder and decoder for every envelope line (json.dumps/loads set one up per call)
_ENVELOPE_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_ENVELOPE_DECODER = json.JSONDecoder()


def encode_queued_head(queue_id: str, message: AcceptedMessage) -> bytes:
    """The start of ``queue/ID.msg``: magic line and one JSON envelope line."""
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
        "size": message.size,
        "crc32": message.crc32(),
    }
    line = _ENVELOPE_ENCODER.encode(header).encode("ascii")
    return b"".join((MAGIC, line, b"\n"))


def _parse_header(raw: bytes, queue_id: str) -> tuple[dict[str, Any], int]:
    """The envelope of a queue file from its first bytes, and where the data starts."""
    if not raw.startswith(MAGIC):
        raise CorruptSpoolFile(f"{queue_id}: not a jdxmail spool file (bad first line)")
    end = raw.find(b"\n", len(MAGIC))
    if end < 0:
        raise CorruptSpoolFile(f"{queue_id}: truncated envelope")
    try:
        text = raw[len(MAGIC) : end].decode("utf-8")
        header, used = _ENVELOPE_DECODER.raw_decode(text)
        if used != len(text):
            raise ValueError(f"extra data after the envelope at {used}")
    except ValueError as exc:
        raise CorruptSpoolFile(f"{queue_id}: unreadable envelope ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptSpoolFile(f"{queue_id}: unreadable envelope (not an object)")
    return header, end + 1


def _queued(
    header: dict[str, Any], data: bytes, queue_id: str, spooled: SpooledBody | None = None
) -> QueuedMessage:
    """The message of *header* with *data*, checked here unless *spooled* (checked)."""
    if header.get("id") != queue_id:
        # A spare file taken for a new message whose new content never reached the
        # disk (a power cut before the flush) still holds the old, delivered one.
        raise CorruptSpoolFile(
            f"{queue_id}: the envelope is that of another message ({header.get('id')!r})"
        )
    try:
        if spooled is None and (len(data) != header["size"] or zlib.crc32(data) != header["crc32"]):
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
            spooled=spooled,
        )
    except CorruptSpoolFile:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptSpoolFile(f"{queue_id}: unreadable envelope ({exc})") from None


def read_queued_message(path: Path) -> QueuedMessage:
    """Read and check ``queue/ID.msg``; raise CorruptSpoolFile or OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_queued_fd(fd, path.name.removesuffix(QUEUE_SUFFIX))
    finally:
        os.close(fd)


#: how much of a queue file is read first to find its envelope line
_HEAD_READ = 1 << 16


def read_queued_fd(fd: int, queue_id: str, *, keep_over: int | None = None) -> QueuedMessage:
    """Read and check the queue file open on *fd*, holding its data in memory once.

    Data over *keep_over* bytes stays in the file: it is checked (size, checksum)
    in pieces here and the message's ``spooled`` says where it is; ``data`` then
    holds its first 64 KiB. Raises CorruptSpoolFile or OSError.
    """
    head = os.pread(fd, _HEAD_READ, 0)
    while len(head) % _HEAD_READ == 0 and head and b"\n" not in head[len(MAGIC) :]:
        more = os.pread(fd, _HEAD_READ, len(head))  # an envelope longer than 64 KiB
        if not more:
            break
        head += more
    header, start = _parse_header(head, queue_id)
    size = header.get("size")
    if not isinstance(size, int) or size < 0:
        raise CorruptSpoolFile(f"{queue_id}: unreadable envelope (no size)")
    if keep_over is not None and size > keep_over:
        return _kept_in_file(header, fd, start, size, queue_id)
    whole = len(head) % _HEAD_READ != 0 or len(head) - start > size  # all read already
    # Else one byte more than announced, to notice a file that is too long.
    data = head[start:] if whole else os.pread(fd, size + 1, start)
    return _queued(header, data, queue_id)


def _kept_in_file(
    header: dict[str, Any], fd: int, start: int, size: int, queue_id: str
) -> QueuedMessage:
    body = SpooledBody(fd, start, size)
    crc = 0
    try:
        for piece in body.pieces():
            crc = zlib.crc32(piece, crc)
    except CorruptSpoolFile as exc:
        raise CorruptSpoolFile(f"{queue_id}: {exc}") from None
    if os.pread(fd, 1, start + size) or crc != header.get("crc32"):
        raise CorruptSpoolFile(
            f"{queue_id}: data has a bad checksum or is longer than the {size} bytes announced"
        )
    return _queued(header, os.pread(fd, min(size, _HEAD_READ), start), queue_id, body)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory *path* (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(
    path: str | Path,
    parts: Sequence[bytes | bytearray],
    *,
    sync: bool = True,
    reuse: bool = False,
    empty: bool = False,
    tail: DataTail | None = None,
) -> None:
    """Create *path* (which must not exist) with *parts* joined, fsync'ed before returning.

    With ``sync=False`` the caller makes the data durable (``syncfs`` for a batch).
    With *reuse*, *path* is an existing file to write over, cut to the new size;
    with *empty*, an existing empty file of this process's own to write. A *tail*
    is copied in after the parts, file to file (no copy through memory on Linux).
    """
    existing = reuse or empty
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if existing else os.O_CREAT | os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        if reuse:
            os.ftruncate(fd, sum(len(part) for part in parts))
        views = [memoryview(part) for part in parts if part]
        while views:
            written = os.writev(fd, views)
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]
        if tail is not None:
            _copy_tail(tail, fd)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _copy_tail(tail: DataTail, fd: int) -> None:
    """Append the whole of *tail* to the file open as *fd* (at its current offset)."""
    done = 0
    copy_range = getattr(os, "copy_file_range", None)
    while copy_range is not None and done < tail.size:
        try:
            copied = copy_range(tail.fd, fd, tail.size - done, done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            copied = 0
        if not copied:
            break  # not supported here: copy through memory, piece by piece
        done += copied
    while done < tail.size:
        piece = os.pread(tail.fd, min(1 << 20, tail.size - done), done)
        if not piece:
            raise OSError(errno.EIO, "the message's tail file ended early")
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view) :]
        done += len(piece)


def _load_syncfs() -> Callable[[int], int] | None:
    c = libc()
    if c is None or not hasattr(c, "syncfs"):
        return None
    function = c.syncfs
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def sync_file_system(directory: Path | int) -> None:
    """Flush every written file of the file system holding *directory* (Linux syncfs).

    *directory* may be a descriptor open on it (the sync thread keeps one per file
    system rather than opening the folder for every flush).
    """
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    if isinstance(directory, int):
        _syncfs_fd(directory, str(directory))
        return
    fd = os.open(directory, _DIR_FLAGS)
    try:
        _syncfs_fd(fd, str(directory))
    finally:
        os.close(fd)


def _syncfs_fd(fd: int, shown: str) -> None:
    assert _SYNCFS is not None
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), shown)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def claim(path: str | Path) -> int | None:
    """Open and lock queue file *path* for delivery; None if gone or taken by another.

    The lock is held until the returned descriptor is closed.
    """
    claimed = claim_sized(path)
    return None if claimed is None else claimed[0]


def claim_sized(path: str | Path) -> tuple[int, int] | None:
    """:func:`claim`, also returning the file's size (from the check it makes anyway)."""
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
    return fd, mine.st_size


def _unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@dataclass(slots=True)
class _Plan:
    """The files one store() creates: tmp path → final path (mailbox links pick a name)."""

    queue_id: str
    queue_file: tuple[str, str] | None = None
    mailbox_files: list[MailboxDelivery] = field(default_factory=list)
    placed: list[str | Path] = field(default_factory=list)
    tmp_files: list[str | Path] = field(default_factory=list)


class _Phase(enum.Enum):
    """Where a store is in the pipelined commit."""

    NEW = "new"  # nothing written yet (large messages: the sync thread writes them)
    WRITTEN = "written"  # tmp files written; the next flush makes the data durable
    PLACED = "placed"  # in place under its final name; the next flush completes it


@dataclass(slots=True, eq=False)
class _Store:
    """One store() on its way through the commit, completed through *future*."""

    plan: _Plan
    message: AcceptedMessage
    future: asyncio.Future[str]
    phase: _Phase
    error: SpoolError | None = None


#: messages up to this size are written to tmp/ by the event loop itself
LOOP_WRITE_LIMIT = 1 << 20


class Spool:
    """The on-disk queue and the thread that makes stores durable in batches.

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
        self.spare_dir = self.spool_dir / SPARE_DIR
        self.mailbox_tmp_dir = self.mailbox_dir / ".tmp"
        # plain strings for the paths the delivery engine builds per message
        self._queue_prefix = os.path.join(self.queue_dir, "")
        self._tmp_prefix = os.path.join(self.tmp_dir, "")
        self._spare_prefix = os.path.join(self.spare_dir, "")
        #: names in spare/ not taken yet, by block count (as last seen), and when
        #: a look found none that fitted
        self._spares: dict[int, list[str]] = {}
        self._spares_seen_at = -_SPARE_IDLE_LOOK
        self._state_prefix = os.path.join(self.state_dir, "")
        self._commit_mode = commit_mode
        #: files written and placed by the loop, syncfs by the sync thread (else the
        #: writer thread writes, fsyncs each file, renames and fsyncs the directories)
        self._pipelined = commit_mode == "batch" and _SYNCFS is not None
        self._syncfs_dirs: list[Path] = []
        self._cond = threading.Condition()
        self._pending: list[_Store] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        #: empty tmp files made ahead by the stock thread (paths), see _take_stock
        self._stock: collections.deque[str] = collections.deque()
        self._restock = threading.Event()
        self._stocker: threading.Thread | None = None
        self._stock_names = itertools.count(1)
        self._tmp_counter = 0
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        #: called on the loop when a message enters queue/ (its queue id)
        self.on_queued: Callable[[str], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def open(self, *, announce: bool = True) -> None:
        """Create the directories, clean up what a crash left, start the writer thread.

        Logs what the spool holds unless *announce* is false (a second process on the
        same spool). Raises SpoolError when the directories cannot be created.
        """
        self._loop = asyncio.get_running_loop()
        counts = await asyncio.to_thread(self._prepare)
        log = logger.info if announce else logger.debug
        log(
            "spool %s: %d queued, %d failed; removed %d unfinished writes left by a previous run",
            self.spool_dir,
            counts["queued"],
            counts["failed"],
            counts["tmp_removed"],
        )
        self._closing = False
        self._drained = asyncio.Event()
        target = self._sync_loop if self._pipelined else self._writer
        self._thread = threading.Thread(target=target, name="jdxmail-spool", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Finish every store already begun (new ones are refused), then stop the thread."""
        thread = self._thread
        if thread is None:
            return
        self._closing = True
        if self._in_flight and self._drained is not None:
            self._drained.clear()
            await self._drained.wait()
        with self._cond:
            self._cond.notify_all()
        await asyncio.to_thread(thread.join)
        self._thread = None
        stocker, self._stocker = self._stocker, None
        if stocker is not None:
            self._restock.set()
            await asyncio.to_thread(stocker.join)
            while self._stock:
                _unlink_quietly(self._stock.popleft())

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _prepare(self) -> dict[str, int]:
        try:
            for directory in self._directories():
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directories: {exc}") from exc
        removed = 0
        for directory in (self.tmp_dir, self.mailbox_tmp_dir):
            for leftover in directory.iterdir():
                # another process sharing the spool may be writing it right now
                if tmp_writer_alive(leftover.name):
                    continue
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
        per local recipient are written, in place under their final names, and flushed
        to disk. Raises SpoolError (nothing left visible) otherwise. A store whose
        caller is cancelled still completes: the message stays queued.
        """
        if self._thread is None or self._closing or self._loop is None:
            if message.tail is not None:
                message.tail.close()
            raise SpoolError(
                "the spool is not open" if self._thread is None else "the spool is closing"
            )
        plan = _Plan(queue_id=_IDS.next())
        self._plan(plan, message)
        if self._commit_mode == "per-message":
            await asyncio.to_thread(self._store_one, plan, message)
            self._queued(plan)
            return plan.queue_id
        phase = _Phase.NEW
        if self._pipelined and message.tail is None and len(message.data) <= LOOP_WRITE_LIMIT:
            # A queue file carries its size and checksum, so it may take its name
            # before the flush: one flush then makes data and name durable. Mailbox
            # files have no checksum and wait for two (data, then names).
            phase = _Phase.WRITTEN if plan.mailbox_files else _Phase.PLACED
            try:
                self._write_tmp(plan, message, sync=False)
                if phase is _Phase.PLACED:
                    self._place(plan)
            except OSError as exc:
                self._undo(plan)
                raise _as_spool_error(exc) from exc
        job = _Store(plan, message, self._loop.create_future(), phase)
        self._in_flight += 1
        self._submit([job])
        # cancelling the caller cancels only the wait: the commit goes on
        return await job.future

    def _plan(self, plan: _Plan, message: AcceptedMessage) -> None:
        if message.relay_recipients:
            plan.queue_file = (
                self._tmp_prefix + self._tmp_name(plan.queue_id),
                self.queue_file(plan.queue_id),
            )
        if not message.local_recipients:
            return
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
                    tmp=self.mailbox_tmp_dir / self._tmp_name(plan.queue_id),
                    directory=directory,
                    name=name,
                    head=delivery_head(message.mail_from, recipient),
                )
            )

    def new_tail(self) -> DataTail:
        """An unnamed file in ``tmp/`` for the data of a big message; SpoolError if none.

        O_TMPFILE where the file system has it; elsewhere a tmp file unlinked at once.
        """
        try:
            try:
                return self._open_tail()
            except FileNotFoundError:
                if not self.remake_directories():  # (tmp/ was deleted under it)
                    raise
                return self._open_tail()
        except OSError as exc:
            raise _as_spool_error(exc) from exc

    def _open_tail(self) -> DataTail:
        tmpfile = getattr(os, "O_TMPFILE", 0)
        if tmpfile:
            try:
                return DataTail(os.open(self.tmp_dir, tmpfile | os.O_RDWR | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
        path = self._tmp_prefix + self._tmp_name("tail")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)
        return DataTail(fd)

    def _tmp_name(self, queue_id: str) -> str:
        """A new tmp file name for *queue_id* (see _tmp_file_name)."""
        self._tmp_counter += 1
        return _tmp_file_name(queue_id, self._tmp_counter)

    def _submit(self, jobs: list[_Store]) -> None:
        with self._cond:
            self._pending.extend(jobs)
            self._cond.notify()

    def _take(self) -> list[_Store] | None:
        """The next batch for the thread; None once closing and nothing is left."""
        with self._cond:
            while not self._pending and not (self._closing and not self._in_flight):
                self._cond.wait()
            if not self._pending:
                return None
            batch, self._pending = self._pending, []
            return batch

    def _finish(self, job: _Store, error: SpoolError | None) -> None:
        """On the loop: settle *job*'s future and announce a queued message."""
        if job.message.tail is not None:
            job.message.tail.close()  # every thread is done with it
        if error is None:
            self._queued(job.plan)
        if not job.future.done():
            if error is None:
                job.future.set_result(job.plan.queue_id)
            else:
                job.future.set_exception(error)
        self._in_flight -= 1
        if self._in_flight == 0 and self._drained is not None:
            self._drained.set()

    def _queued(self, plan: _Plan) -> None:
        if plan.queue_file is not None and self.on_queued is not None:
            self.on_queued(plan.queue_id)

    def _settle_on_loop(self, batch: list[_Store]) -> None:
        """From a thread: hand a processed batch back to the event loop."""
        assert self._loop is not None
        # RuntimeError: the loop is closed, so nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._advance, batch)

    # -- the pipelined commit (Linux) ------------------------------------------------

    def _sync_loop(self) -> None:
        """The sync thread: write what the loop did not, flush, hand the batch back."""
        targets: list[Path | int] = []
        for directory in self._syncfs_dirs:
            try:
                targets.append(os.open(directory, _DIR_FLAGS))
            except OSError:  # then each flush opens it, and reports the error there
                targets.append(directory)
        try:
            self._sync_batches(targets)
        finally:
            for target in targets:
                if isinstance(target, int):
                    os.close(target)

    def _sync_batches(self, targets: list[Path | int]) -> None:
        while (batch := self._take()) is not None:
            for job in batch:
                if job.phase is _Phase.NEW:
                    try:
                        self._write_tmp(job.plan, job.message, sync=False)
                        job.phase = _Phase.WRITTEN
                    except OSError as exc:
                        job.error = _as_spool_error(exc)
            try:
                for target in targets:
                    sync_file_system(target)
            except OSError as exc:
                self._fail_all(batch, _as_spool_error(exc))
            self._settle_on_loop(batch)

    def _fail_all(self, jobs: list[_Store], error: SpoolError) -> None:
        """Undo every store of *jobs* not failed already and fail it with *error*."""
        for job in jobs:
            if job.error is None:
                self._undo(job.plan)
                job.error = error

    def _advance(self, batch: list[_Store]) -> None:
        """On the loop, after a flush: place what is written, finish what is placed."""
        again: list[_Store] = []
        for job in batch:
            if job.error is not None:
                self._finish(job, job.error)
            elif job.phase is _Phase.WRITTEN:
                try:
                    self._place(job.plan)
                except OSError as exc:
                    self._undo(job.plan)
                    self._finish(job, _as_spool_error(exc))
                    continue
                job.phase = _Phase.PLACED
                again.append(job)
            else:
                self._finish(job, None)
        if again:
            self._submit(again)

    # -- the writer thread (no syncfs, or the benchmark's batch-fsync) ---------------

    def _writer(self) -> None:
        while (batch := self._take()) is not None:
            self._commit_batch(batch)
            self._settle_on_loop(batch)

    def _commit_batch(self, batch: list[_Store]) -> None:
        """Write and fsync every store's tmp files, place them, sync each directory once."""
        live: list[_Store] = []
        for job in batch:
            try:
                self._write_tmp(job.plan, job.message)
                live.append(job)
            except OSError as exc:
                job.error = _as_spool_error(exc)
        dirs: set[Path] = set()
        for job in live:
            try:
                dirs.update(self._place(job.plan))
            except OSError as exc:
                self._undo(job.plan)
                job.error = _as_spool_error(exc)
        try:
            for directory in sorted(dirs):
                fsync_dir(directory)
        except OSError as exc:
            self._fail_all(live, _as_spool_error(exc))
        for job in live:
            job.phase = _Phase.PLACED

    def _store_one(self, plan: _Plan, message: AcceptedMessage) -> None:
        """The unbatched path (for the benchmark): own fsyncs for everything."""
        try:
            self._write_tmp(plan, message)
            for directory in sorted(self._place(plan)):
                fsync_dir(directory)
        except OSError as exc:
            self._undo(plan)
            raise _as_spool_error(exc) from exc
        finally:
            if message.tail is not None:
                message.tail.close()

    def _write_tmp(self, plan: _Plan, message: AcceptedMessage, *, sync: bool = True) -> None:
        """Write the tmp files of *plan*; on failure remove what was written and raise.

        A folder of the spool someone deleted is made again, and the write tried once more.
        """
        try:
            self._write_tmp_once(plan, message, sync=sync)
        except FileNotFoundError:
            if not self.remake_directories():
                raise
            self._write_tmp_once(plan, message, sync=sync)

    def remake_directories(self) -> bool:
        """Make again the spool's folders someone deleted; True if any was missing.

        Thread-safe; files made ahead in a deleted tmp/ are forgotten.
        """
        missing = [d for d in self._directories() if not d.is_dir()]
        for directory in missing:
            directory.mkdir(parents=True, exist_ok=True)
        if missing:
            if self.tmp_dir in missing:
                self._stock.clear()
            logger.warning(
                "spool: made again the folder(s) deleted while serving: %s",
                ", ".join(str(d) for d in missing),
            )
        return bool(missing)

    def _directories(self) -> tuple[Path, ...]:
        return (
            self.tmp_dir,
            self.queue_dir,
            self.state_dir,
            self.failed_dir,
            self.corrupt_dir,
            self.spare_dir,
            self.mailbox_tmp_dir,
        )

    def _write_tmp_once(self, plan: _Plan, message: AcceptedMessage, *, sync: bool = True) -> None:
        plan.tmp_files.clear()
        try:
            if plan.queue_file is not None:
                tmp, final = plan.queue_file
                head = encode_queued_head(plan.queue_id, message)
                size = len(head) + message.size
                # (in batch mode the event loop writes messages this small: only it
                # takes files made ahead or starts the thread that makes them)
                small = message.tail is None and len(message.data) <= SPARE_MAX_SIZE
                reuse = small and self._take_spare(tmp, size)
                stocked = self._take_stock() if small and not reuse else None
                if stocked is not None:
                    tmp = stocked
                    plan.queue_file = (tmp, final)
                plan.tmp_files.append(tmp)
                parts = (head, message.data)
                write_synced(
                    tmp,
                    parts,
                    sync=sync,
                    reuse=reuse,
                    empty=stocked is not None,
                    tail=message.tail,
                )
            for delivery in plan.mailbox_files:
                plan.tmp_files.append(delivery.tmp)
                write_synced(
                    delivery.tmp, (delivery.head, message.data), sync=sync, tail=message.tail
                )
        except BaseException:
            self._undo(plan)
            raise

    def _place(self, plan: _Plan) -> set[Path]:
        """Rename/link the tmp files into place; return the directories to fsync."""
        dirs: set[Path] = set()
        if plan.queue_file is not None:
            tmp, final = plan.queue_file
            try:
                os.rename(tmp, final)
            except FileNotFoundError:
                if not self.remake_directories():  # (queue/ was deleted under it)
                    raise
                os.rename(tmp, final)
            plan.placed.append(final)
            dirs.add(self.queue_dir)
        for delivery in plan.mailbox_files:
            created = delivery.ensure_directory()
            if created:
                dirs.update(created)
            linked = delivery.link_into_place()
            plan.placed.append(linked)
            dirs.add(linked.parent)
        return dirs

    def _undo(self, plan: _Plan) -> None:
        for path in (*plan.placed, *plan.tmp_files):
            _unlink_quietly(path)
        plan.placed.clear()

    # -- reading (for the delivery engine and the queue CLI) -------------------------

    def queue_path(self, queue_id: str) -> Path:
        """Where the queue file of *queue_id* lives."""
        return self.queue_dir / f"{queue_id}{QUEUE_SUFFIX}"

    def spare_file(self, queue_id: str, size: int) -> str:
        """Where a delivered queue file of *size* bytes is kept for reuse: ``spare/ID.N``,
        N the number of 4 KiB blocks it fills."""
        return f"{self._spare_prefix}{queue_id}.{_blocks(size)}"

    def _take_spare(self, path: str, size: int) -> bool:
        """Move a spare file to *path* to be written over; False when none fits.

        A new file costs the file system an inode and a delivered one's removal
        frees one; on ext4 without a journal every create then steps over the
        inodes freed in the last minutes (``recently_deleted``), which took a
        quarter of this machine's CPU at ~1,000 messages/s. Several processes may
        share spare/: the rename gives each file to one of them. Only a file no
        bigger (in blocks) than *size* needs is taken: cutting a file down frees
        blocks, which waits for the disk here (0.15-0.3 ms) as a removal does.
        """
        need = _blocks(size)
        name = self._pick_spare(need)
        now = time.monotonic()
        if name is None and now >= self._spares_seen_at + _SPARE_IDLE_LOOK:
            self._spares = _spares_in(self.spare_dir)
            name = self._pick_spare(need)
            if name is None:
                self._spares_seen_at = now  # nothing that fits: look again later
        while name is not None:
            try:
                os.rename(self._spare_prefix + name, path)
            except FileNotFoundError:  # taken by another process sharing the spool
                name = self._pick_spare(need)
                continue
            except OSError:
                return False
            return True
        return False

    def _take_stock(self) -> str | None:
        """An empty tmp file the stock thread made ahead (its path), or None.

        Creating a file is the costly part of a new queue file on a file system with
        many recently removed inodes (see _take_spare: up to ~0.4 ms here): when no
        spare fits, the event loop writes into a file made on another core instead.
        """
        stock = self._stock
        try:
            path = stock.popleft()
        except IndexError:
            path = None
        if len(stock) < _STOCK // 2:
            if self._stocker is None and self._pipelined:  # on first need (not in delivery)
                self._stocker = threading.Thread(
                    target=self._stock_loop, name="jdxmail-spool-stock", daemon=True
                )
                self._stocker.start()
            self._restock.set()
        return path

    def _stock_loop(self) -> None:
        """The stock thread: keep up to _STOCK empty tmp files made ahead."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        while not self._closing:
            self._restock.wait()
            self._restock.clear()
            while len(self._stock) < _STOCK and not self._closing:
                # named like every tmp file: removed at start if this process died
                path = self._tmp_prefix + _tmp_file_name("stock", next(self._stock_names))
                try:
                    os.close(os.open(path, flags, 0o600))
                except OSError as exc:  # the loop then creates its own files
                    logger.debug("spool: could not make a file ahead: %s", exc)
                    break
                self._stock.append(path)

    def _pick_spare(self, need: int) -> str | None:
        """A known spare of *need* blocks, else of the most blocks below that."""
        for blocks in range(need, 0, -1):
            names = self._spares.get(blocks)
            if names:
                return names.pop()
        return None

    def queue_file(self, queue_id: str) -> str:
        """:meth:`queue_path` as a string (cheaper, for once per delivery)."""
        return f"{self._queue_prefix}{queue_id}{QUEUE_SUFFIX}"

    def state_file(self, queue_id: str) -> str:
        """Where the delivery state of *queue_id* lives (``state/ID.json``), a string."""
        return f"{self._state_prefix}{queue_id}{STATE_SUFFIX}"

    def state_path(self, queue_id: str) -> Path:
        """:meth:`state_file` as a Path."""
        return Path(self.state_file(queue_id))

    def queued_ids(self) -> list[str]:
        """Ids of every queued message, oldest first (sync; call in a thread)."""
        return sorted(_ids_in(self.queue_dir))


def _tmp_file_name(stem: str, number: int) -> str:
    """``STEM.pPID.N.tmp``: a tmp file of this process (see process.tmp_writer_alive)."""
    return f"{stem}.p{os.getpid()}.{number}.tmp"


def _blocks(size: int) -> int:
    """How many 4 KiB blocks *size* bytes fill (at least one)."""
    return max(1, -(-size // 4096))


def _spares_in(directory: Path) -> dict[int, list[str]]:
    """Up to _SPARE_BATCH plain files of spare/, by the block count in their names."""
    found: dict[int, list[str]] = {}
    seen = 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            _, _, blocks = entry.name.rpartition(".")
            if not blocks.isdigit() or not entry.is_file(follow_symlinks=False):
                continue
            found.setdefault(int(blocks), []).append(entry.name)
            seen += 1
            if seen >= _SPARE_BATCH:
                break
    return found


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
        kind = SpoolFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else SpoolError
        error = kind(f"cannot store the message: {reason}{where}")
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
