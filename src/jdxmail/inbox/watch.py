"""Learn at once when a message file appears in or leaves any mailbox (Linux inotify).

The mailbox root holds one folder per recipient; the spool links each new message
into its folder (``IN_CREATE``), a user may copy one in (``IN_CLOSE_WRITE``) or
remove one (``IN_DELETE``). :class:`MailboxWatcher` watches the root for new folders
and every folder for files, whichever process wrote them (``serve --workers``).
When inotify cannot be used, :meth:`MailboxWatcher.start` returns False and the
caller rescans periodically; when events were lost, ``on_overflow()`` is called.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Callable
from pathlib import Path

from jdxmail.queue.watch import (
    IN_CLOSE_WRITE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVED_TO,
    load_inotify,
    read_inotify,
)
from jdxmail.queue.watch import IN_Q_OVERFLOW as IN_OVERFLOW

__all__ = ["MailboxWatcher"]

logger = logging.getLogger("jdxmail.queue")

IN_MOVED_FROM = 0x00000040
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_ONLYDIR = 0x01000000

_ARRIVED = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE
_LEFT = IN_DELETE | IN_MOVED_FROM
_MASK = _ARRIVED | _LEFT | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR


class MailboxWatcher:
    """Calls ``on_file(folder, name, present)`` for each ``.eml`` file that appears
    (present True) or goes (False) in a folder under *root*, ``on_folder(folder)``
    when a folder appears (the caller scans it: files may have come before its
    watch), ``on_overflow()`` when events were lost (the caller rescans)."""

    def __init__(
        self,
        root: Path,
        on_file: Callable[[str, str, bool], None],
        on_folder: Callable[[str], None],
        on_overflow: Callable[[], None],
    ) -> None:
        self.root = root
        self.on_file = on_file
        self.on_folder = on_folder
        self.on_overflow = on_overflow
        self._fd: int | None = None
        self._root_wd = -1
        self._folders: dict[int, str] = {}
        self._add: Callable[[int, bytes, int], int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        """Whether inotify events are being read."""
        return self._fd is not None

    def start(self) -> bool:
        """Watch the root and every folder in it; False when inotify is not available."""
        inotify = load_inotify()
        if inotify is None:
            return False
        add = inotify.add_watch
        fd = inotify.init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return False
        root_wd = add(fd, os.fsencode(self.root), _MASK)
        if root_wd < 0:
            os.close(fd)
            logger.warning("cannot watch %s: %s", self.root, os.strerror(ctypes.get_errno()))
            return False
        loop = asyncio.get_running_loop()
        try:
            loop.add_reader(fd, self._read)
        except NotImplementedError:
            os.close(fd)
            return False
        self._fd, self._root_wd, self._add, self._loop = fd, root_wd, add, loop
        for entry in _folders_of(self.root):
            self.watch_folder(entry)
        return True

    def watch_folder(self, folder: str) -> None:
        """Start watching the folder *folder* (a name under the root)."""
        if self._fd is None or self._add is None or folder.startswith("."):
            return
        wd = self._add(self._fd, os.fsencode(self.root / folder), _MASK)
        if wd >= 0:
            self._folders[wd] = folder
        else:
            logger.warning(
                "cannot watch %s: %s (rescanning instead)",
                self.root / folder,
                os.strerror(ctypes.get_errno()),
            )
            self.close()
            self.on_overflow()

    def close(self) -> None:
        """Stop watching. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(fd)
        self._folders.clear()
        os.close(fd)

    def _read(self) -> None:
        if self._fd is None:
            return
        events = read_inotify(self._fd, self.root)
        if events is None:
            self.close()
            self.on_overflow()
            return
        folders = self._folders
        for wd, mask, raw in events:
            if self._fd is None:
                break
            try:
                name = os.fsdecode(raw)
                if mask == IN_CREATE and (folder := folders.get(wd)) is not None:
                    # the common event, a file linked into a mailbox: as _event would
                    if _is_mail_file(name):
                        self.on_file(folder, name, True)
                else:
                    self._event(wd, mask, name)
            except Exception:
                logger.exception("the mailbox watcher's handler failed")

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_OVERFLOW:
            self.on_overflow()
        elif wd == self._root_wd:
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                logger.warning("%s was removed or moved: no longer watched", self.root)
                self.close()
                self.on_overflow()
            elif mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO) and not name.startswith("."):
                self.watch_folder(name)
                self.on_folder(name)
            elif mask & IN_ISDIR and mask & IN_MOVED_FROM:
                self.on_overflow()  # a whole folder moved away: forget its files
        elif (folder := self._folders.get(wd)) is not None:
            if mask & IN_IGNORED:
                del self._folders[wd]
                self.on_overflow()
            elif mask & IN_ISDIR or not _is_mail_file(name):
                return
            elif mask & _ARRIVED:
                self.on_file(folder, name, True)
            elif mask & _LEFT:
                self.on_file(folder, name, False)


def _is_mail_file(name: str) -> bool:
    """A message file of a mailbox (not the spool's hidden work files)."""
    return name.endswith(".eml") and not name.startswith(".")


def _folders_of(root: Path) -> list[str]:
    try:
        with os.scandir(root) as entries:
            return [
                e.name
                for e in entries
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return []
