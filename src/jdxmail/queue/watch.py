"""Learn at once when a file arrives in a spool directory (Linux inotify, via ctypes).

The delivery engine runs in its own process; server processes store a message by
writing ``tmp/ID.tmp`` and renaming it to ``queue/ID.msg``. A :class:`QueueWatcher`
on ``queue/`` turns each such rename (``IN_MOVED_TO``) or each file written there
directly and closed (``IN_CLOSE_WRITE``) into one ``on_file(ID)`` call on the event
loop, so the engine need not poll.

Where inotify cannot be used (not Linux, the per-user instance or watch limit reached,
the directory missing), :meth:`QueueWatcher.start` returns False and the caller keeps
its own periodic rescan. When the kernel dropped events (its queue overflowed) or the
watched directory went away, ``on_overflow()`` is called: the caller rescans the
directory; if :attr:`QueueWatcher.active` is then False, the watcher has stopped and
the caller falls back to periodic rescans (or calls ``start()`` again).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from jdxmail.process import libc

__all__ = ["Inotify", "QueueWatcher", "inotify_events", "load_inotify", "read_inotify"]

logger = logging.getLogger("jdxmail.queue")

# <sys/inotify.h>; IN_NONBLOCK and IN_CLOEXEC are defined as O_NONBLOCK and O_CLOEXEC,
# whose values differ between architectures, so they come from the os module.
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

#: what is watched; IN_Q_OVERFLOW and IN_IGNORED are always reported
WATCH_MASK = IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
#: events after which the watch no longer sees files arriving under the path
GONE_MASK = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED

#: struct inotify_event {int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[len];}
EVENT_HEADER = struct.Struct("iIII")
#: one read takes whole events only; this holds thousands of them
READ_SIZE = 64 * 1024


def read_inotify(fd: int, watched: object) -> list[tuple[int, int, bytes]] | None:
    """The events waiting on inotify descriptor *fd* (none when nothing waits), or
    None when reading failed (logged, naming *watched*): the watch is then lost."""
    try:
        buffer = os.read(fd, READ_SIZE)
    except BlockingIOError:
        return []
    except OSError as error:
        logger.warning("reading inotify events for %s failed: %s", watched, error)
        return None
    return list(inotify_events(buffer))


def inotify_events(buffer: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The events in one read of an inotify descriptor: (watch, mask, raw name)."""
    offset = 0
    while offset + EVENT_HEADER.size <= len(buffer):
        wd, mask, _cookie, length = EVENT_HEADER.unpack_from(buffer, offset)
        start = offset + EVENT_HEADER.size
        offset = start + length
        yield wd, mask, buffer[start:offset].split(b"\0", 1)[0]


class Inotify:
    """The libc inotify functions, typed."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int


def load_inotify() -> Inotify | None:
    """The inotify functions of this C library; None where there are none."""
    c = libc()
    if c is None:
        return None
    try:
        return Inotify(c)
    except AttributeError:
        return None


class QueueWatcher:
    """Calls *on_file(name_without_suffix)* for each file renamed/created into *directory*
    whose name ends with *suffix*; *on_overflow()* when events were lost (the caller then
    rescans).

    Names starting with ``.`` and directories are not reported. ``on_file`` may be called
    more than once for the same name (a file written in place and then replaced by a
    rename, or a name reused), so callers must tolerate repeats, e.g. by claiming the
    file and ignoring one already claimed or gone. A callback that raises is logged on
    ``jdxmail.queue`` and the watcher carries on.
    """

    def __init__(
        self,
        directory: Path,
        suffix: str,
        on_file: Callable[[str], None],
        on_overflow: Callable[[], None],
    ) -> None:
        self.directory = directory
        self.suffix = suffix
        self.on_file = on_file
        self.on_overflow = on_overflow
        self._fd: int | None = None
        self._wd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        """Whether inotify events are being read."""
        return self._fd is not None

    def start(self) -> bool:
        """Start watching; call on the running event loop.

        Returns True when inotify is in use (or already was), False when it is not
        available here (not Linux, limits reached, the directory missing or not a
        directory): the caller then rescans periodically. Never raises for that.
        """
        if self._fd is not None:
            return True
        loop = asyncio.get_running_loop()
        inotify = load_inotify()
        if inotify is None:
            logger.info("inotify is not available: watching %s by rescanning", self.directory)
            return False
        fd = inotify.init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            logger.warning(
                "inotify_init1 failed (%s): watching %s by rescanning",
                os.strerror(code),
                self.directory,
            )
            return False
        wd = inotify.add_watch(fd, os.fsencode(self.directory), WATCH_MASK)
        if wd < 0:
            code = ctypes.get_errno()
            os.close(fd)
            logger.warning(
                "inotify_add_watch on %s failed (%s): watching it by rescanning",
                self.directory,
                os.strerror(code),
            )
            return False
        try:
            loop.add_reader(fd, self._read)
        except NotImplementedError:
            os.close(fd)
            logger.info("this event loop cannot watch %s: rescanning", self.directory)
            return False
        self._fd, self._wd, self._loop = fd, wd, loop
        return True

    def close(self) -> None:
        """Stop watching: remove the reader and close the descriptor. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(fd)
            self._loop = None
        os.close(fd)

    def _read(self) -> None:
        if self._fd is None:
            return
        events = read_inotify(self._fd, self.directory)
        if events is None:
            self.close()
            self._overflow()
            return
        for wd, mask, raw in events:
            if self._fd is None:
                break
            if mask & IN_Q_OVERFLOW:
                logger.warning("inotify queue overflowed for %s: rescanning", self.directory)
                self._overflow()
            elif wd != self._wd:
                continue
            elif mask & GONE_MASK:
                logger.warning("%s was removed or moved: no longer watched", self.directory)
                self.close()
                self._overflow()
            elif not mask & IN_ISDIR:
                self._file(os.fsdecode(raw))

    def _file(self, name: str) -> None:
        if name.startswith(".") or not name.endswith(self.suffix):
            return
        stem = name[: len(name) - len(self.suffix)]
        if not stem:
            return
        try:
            self.on_file(stem)
        except Exception:
            logger.exception("the handler for %s in %s failed", name, self.directory)

    def _overflow(self) -> None:
        try:
            self.on_overflow()
        except Exception:
            logger.exception("the overflow handler for %s failed", self.directory)
