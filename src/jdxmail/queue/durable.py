"""Durability on Linux file systems: synced writes, directory fsyncs, syncfs, claims.

The spool's building blocks for "on stable storage before the client hears 250",
and the lock a delivery holds on a queue file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from jdxmail.process import libc
from jdxmail.queue.queuefile import DataTail

__all__ = [
    "DIR_FLAGS",
    "SYNC_LOCK_FILE",
    "FileSystemSync",
    "claim",
    "claim_sized",
    "fsync_dir",
    "has_syncfs",
    "move_no_replace",
    "share_flushes",
    "sync_file_system",
    "unlink_quietly",
    "write_synced",
]


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
        pieces = [part for part in parts if part]
        total = sum(map(len, pieces))
        # one writev takes it all, but for a signal or a full disk mid-way
        written = os.writev(fd, pieces) if pieces else 0
        if written < total:
            _write_rest(fd, pieces, written)
        if tail is not None:
            _copy_tail(tail, fd)
            total += tail.size
        # A reused file longer than the new data is cut after the write: an fstat is
        # cheaper than an ftruncate, which recycled files of the same size never need.
        if reuse and os.fstat(fd).st_size > total:
            os.ftruncate(fd, total)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_rest(fd: int, pieces: list[bytes | bytearray], written: int) -> None:
    """Write what a first ``writev`` of *pieces* left (its first *written* bytes are in)."""
    views = [memoryview(piece) for piece in pieces]
    while views:
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
        if views:
            written = os.writev(fd, views)


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


def has_syncfs() -> bool:
    """Whether this system has ``syncfs`` (the spool's pipelined commit needs it)."""
    return _SYNCFS is not None


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
    fd = os.open(directory, DIR_FLAGS)
    try:
        _syncfs_fd(fd, str(directory))
    finally:
        os.close(fd)


def _syncfs_fd(fd: int, shown: str) -> None:
    assert _SYNCFS is not None
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), shown)


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

#: the file in the spool whose lock its processes take to run a syncfs (empty)
SYNC_LOCK_FILE = "syncfs.lock"


class _SharedCounters(ctypes.Structure):
    """The flush counters of one spool, in memory shared by the processes of a serve."""

    _fields_ = (
        ("dev", ctypes.c_uint64),  # the lock file's device and inode: which spool
        ("ino", ctypes.c_uint64),
        ("begun", ctypes.c_uint64),
        ("done", ctypes.c_uint64),
    )


#: set by share_flushes() in the parent, inherited by the processes it forks
_shared_counters: _SharedCounters | None = None


def share_flushes(spool_dir: Path) -> bool:
    """Let the processes forked from now on share the flushes of *spool_dir*.

    ``serve --workers`` calls it before forking its workers: their flushes then go
    through counters in memory they all inherit (not in the spool's lock file, whose
    page every syncfs would then write out). Returns False (each process flushes on
    its own) when the spool's lock file cannot be made.
    """
    global _shared_counters  # noqa: PLW0603 (the processes forked next inherit it)
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(spool_dir / SYNC_LOCK_FILE, _LOCK_FLAGS, 0o600)
        try:
            here = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError:
        return False
    block = mmap.mmap(-1, ctypes.sizeof(_SharedCounters))  # shared with the children
    counters = _SharedCounters.from_buffer(block)
    counters.dev, counters.ino = here.st_dev, here.st_ino
    _shared_counters = counters
    return True


def _load_flock() -> Callable[[int, int], int]:
    # Through PyDLL, which keeps the interpreter lock over the call: for the calls that
    # never wait (a try, an unlock), handing the lock to the event loop and waiting to
    # get it back would cost more than the call.
    try:
        function = ctypes.PyDLL(None).flock
    except (OSError, AttributeError):
        return _flock_released
    function.argtypes = (ctypes.c_int, ctypes.c_int)
    function.restype = ctypes.c_int
    return cast("Callable[[int, int], int]", function)


def _flock_released(fd: int, operation: int) -> int:
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        return -1
    return 0


#: flock(2) for a try (LOCK_NB) or an unlock: 0 when done, -1 when the lock is taken
_flock_held = _load_flock()

_LOCK_FLAGS = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


class FileSystemSync:
    """The flush of one file system, shared by the processes of one serve on the spool.

    ``sync(ticket())`` makes durable whatever this thread wrote before ``ticket()``.
    In the processes forked after :func:`share_flushes` of the spool whose
    *lock_file* this is, syncfs calls are shared, group-commit style: each runs
    under an exclusive ``flock`` of the lock file, and two counters in the memory
    they share say ``begun`` (syncfs calls begun, bumped under the lock just before
    the call) and ``done`` (the number of the last one that returned, set under the
    lock right after it). ``ticket()`` reads ``begun`` after the caller's writes;
    ``sync(ticket)`` takes the lock and skips its own syncfs when ``ticket < done``:

    - ``done`` = *d* is only ever set by the process that bumped ``begun`` to *d*,
      after its syncfs returned: syncfs number *d* completed.
    - The ticket *t* was read after the writes' system calls returned, and *t* < *d*:
      the bump to *d* came after that read (the counters only grow; an aligned
      8-byte word is read and written in one access, never half of it; the system
      calls in between take kernel locks, which order the writes, the read and the
      bump on every CPU Linux runs on). So syncfs *d* began after the writes
      returned, and a syncfs flushes every write (data and names) made before it
      began, on the file system of the lock file, which is *folder*'s.
    - A holder killed in its syncfs releases the lock with its death (flock) but
      never sets ``done``: its number never counts as done. A syncfs that failed
      leaves ``done`` as it was, too.

    Elsewhere (one process; another spool; the lock file on another file system or
    not to be opened) every ``sync`` runs syncfs itself.
    """

    def __init__(self, folder: Path, lock_file: Path | None = None) -> None:
        self.folder = folder
        #: a descriptor open on *folder*, or *folder* itself if it could not be opened
        #: (every flush then reports the error)
        self._target: Path | int = folder
        with contextlib.suppress(OSError):
            self._target = os.open(folder, DIR_FLAGS)
        self._lock_fd = -1
        self._counters: _SharedCounters | None = None
        if lock_file is not None and _shared_counters is not None:
            with contextlib.suppress(OSError):
                self._share(lock_file, _shared_counters)

    def _share(self, lock_file: Path, counters: _SharedCounters) -> None:
        fd = os.open(lock_file, _LOCK_FLAGS, 0o600)
        here = os.fstat(fd)
        if (here.st_dev, here.st_ino) != (counters.dev, counters.ino) or (
            here.st_dev != os.stat(self.folder).st_dev
        ):
            os.close(fd)  # another spool's, or another file system: flush alone
            return
        self._lock_fd, self._counters = fd, counters

    @property
    def shared(self) -> bool:
        """Whether this flush is shared with other processes."""
        return self._counters is not None

    def ticket(self) -> int:
        """Call after the writes ``sync`` is to make durable; pass the result to it."""
        return 0 if self._counters is None else int(self._counters.begun)

    def sync(self, ticket: int) -> bool:
        """Make every write made before *ticket* was taken durable; True if syncfs ran.

        Waits while another process's syncfs runs. Raises OSError from syncfs.
        """
        counters = self._counters
        if counters is None:
            sync_file_system(self._target)
            return True
        if _flock_held(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB) != 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # another's syncfs runs: wait for it
        try:
            if ticket < counters.done:
                return False
            number = counters.begun + 1
            counters.begun = number
            sync_file_system(self._target)
            counters.done = number
            return True
        finally:
            _flock_held(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the descriptors (the lock file stays, for the others)."""
        self._counters = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if isinstance(self._target, int):
            os.close(self._target)
            self._target = self.folder


def move_no_replace(source: str, target: str) -> None:
    """Give file *source* the name *target*, which must not exist (FileExistsError).

    ``link`` then ``unlink``: never replaces *target*, even one another process
    creates at the same moment. (``renameat2(RENAME_NOREPLACE)`` would do it in one
    call; it was measured no faster here, see docs/performance.md.)
    """
    os.link(source, target)
    os.unlink(source)


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


def unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
