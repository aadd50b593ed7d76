"""Durability on Linux file systems: synced writes, directory fsyncs, syncfs, claims.

The spool's building blocks for "on stable storage before the client hears 250",
and the lock a delivery holds on a queue file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from jdxmail.process import libc
from jdxmail.queue.queuefile import DataTail

__all__ = [
    "DIR_FLAGS",
    "claim",
    "claim_sized",
    "fsync_dir",
    "has_syncfs",
    "move_no_replace",
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
