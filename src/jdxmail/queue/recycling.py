"""File recycling: new queue files are written over old ones instead of made from scratch.

Creating a file costs the file system an inode and removing one frees it; where many
were freed lately (ext4 without a journal) each create is slow. So a delivered small
queue file is kept in ``spare/`` (:meth:`FileRecycler.give`) and the next store writes
over it (:meth:`FileRecycler.take`); when none fits, a thread keeps empty files made
ahead in ``tmp/``. ``spare/`` is pruned back to about :data:`SPARE_LIMIT` files.
The spool and the delivery engine call ``take``/``give`` and forget how.

Several processes share ``spare/`` (``serve --workers``, the delivery process), so a
spare is claimed before it is written over: renamed into ``tmp/``, then, written,
renamed into ``queue/`` — two renames per message. A server (:meth:`make_ahead`
called at its start) claims a whole ``spare/`` at once instead, when it holds enough
files that fit: it swaps ``spare/`` with an empty folder of its own
(``renameat2(RENAME_EXCHANGE)``, one system call), ``tmp/spare.pPID.N.tmp/``, and
writes its spares where they are: one rename per message, into ``queue/``. Nobody
else writes in such a folder, and a file half-written there is still a spare: at
``close`` (and at the next server's start, if this process died) its files go back
to ``spare/``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import enum
import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jdxmail.process import libc, tmp_writer_alive
from jdxmail.queue.durable import unlink_quietly
from jdxmail.sizes import SPARE_MAX_SIZE

__all__ = ["SPARE_DIR", "SPARE_LIMIT", "FileRecycler", "Reuse", "TmpFile", "tmp_file_name"]

logger = logging.getLogger("jdxmail.queue")

#: queue files of delivered messages, kept to be written over by the next stores
SPARE_DIR = "spare"
#: at most about this many files are kept in spare/
SPARE_LIMIT = 2048
#: how many spare names one look at spare/ takes
_SPARE_BATCH = 256
#: seconds before looking at an empty spare/ again
_SPARE_IDLE_LOOK = 0.1
#: empty tmp files kept made ahead for new queue files
_MADE_AHEAD = 64
#: files given to spare/ between two counts of what spare/ holds
_COUNT_EVERY = 128
#: a server claims spare/ whole (one swap) only when a look finds this many files
#: that fit, nine in ten of those it saw (files that fit no store would be held idle)
_CLAIM_AT_LEAST = 16
#: no whole claim while a server holds this many claimed files not taken yet
_HOLD_LIMIT = 256
#: the names of the folders a server claims spare/ into: unique in this process
_claim_numbers = itertools.count(1)

#: runs a slow job (removals wait for the disk) off the event loop
Offload = Callable[[Callable[[], Any]], "asyncio.Future[Any]"]


class Reuse(enum.Enum):
    """What a taken tmp file is, which says how to open it for writing."""

    NEW = "new"  # no file yet: create it
    EMPTY = "empty"  # an empty file made ahead: write it
    SPARE = "spare"  # a delivered message's file: write over it, cut to size


@dataclass(frozen=True, slots=True)
class TmpFile:
    """A path in ``tmp/`` to write a new file at, and what is there already."""

    path: str
    reuse: Reuse = Reuse.NEW


def tmp_file_name(stem: str, number: int) -> str:
    """``STEM.pPID.N.tmp``: a tmp file of this process (see process.tmp_writer_alive)."""
    return f"{stem}.p{os.getpid()}.{number}.tmp"


def _blocks(size: int) -> int:
    """How many 4 KiB blocks *size* bytes fill (at least one)."""
    return max(1, -(-size // 4096))


class FileRecycler:
    """Spare files, files made ahead, pruning and tmp names of one ``tmp/`` folder.

    ``take`` is called from one thread at a time (the event loop, or the writer thread
    when the loop writes nothing); ``give`` and ``prune`` from the event loop. Several
    processes may share ``spare/``: a rename gives each file to one of them.
    """

    def __init__(self, tmp_dir: Path, spare_dir: Path | None, *, make_ahead: bool) -> None:
        """Files of *tmp_dir*; delivered files kept in *spare_dir* (None: none kept);
        empty files made ahead only if *make_ahead*."""
        self.tmp_dir = Path(tmp_dir)
        self.spare_dir = spare_dir
        self._tmp_prefix = os.path.join(self.tmp_dir, "")
        self._spare_prefix = "" if spare_dir is None else os.path.join(spare_dir, "")
        self._tmp_numbers = itertools.count(1)
        #: names in spare/ not taken yet, by block count (as last seen), and when a
        #: look found none that fitted
        self._spares: dict[int, list[str]] = {}
        self._spares_seen_at = -_SPARE_IDLE_LOOK
        #: a server's claimed spares (full paths) by block count, their folders, and
        #: whether it claims spare/ whole (see the module's docstring)
        self._held: dict[int, list[str]] = {}
        self._held_count = 0
        self._claimed: list[str] = []
        self._server = False
        self._claims = False
        self._make_ahead = make_ahead
        self._made: collections.deque[str] = collections.deque()
        self._wanted = threading.Event()
        self._maker: threading.Thread | None = None
        self._made_names = itertools.count(1)
        self._closing = False
        self._given = 0
        self._pruning = False
        #: where prune() sends its removals (the engine's file thread); None: inline
        self.offload: Offload | None = None

    # -- taking ------------------------------------------------------------------------

    def tmp_path(self, stem: str) -> str:
        """A new, unused path in ``tmp/`` named after *stem* (see :func:`tmp_file_name`)."""
        return self._tmp_prefix + tmp_file_name(stem, next(self._tmp_numbers))

    def take(self, size: int, stem: str) -> TmpFile:
        """Somewhere in ``tmp/`` to write a new file of *size* bytes (named after *stem*).

        Up to SPARE_MAX_SIZE, a spare file moved there or an empty file made ahead;
        else (or when neither is at hand) a new name to create.
        """
        if size > SPARE_MAX_SIZE:
            return TmpFile(self.tmp_path(stem))
        if self.spare_dir is not None:
            if self._held:
                held = self._take_held(_blocks(size))
                if held is not None:
                    return TmpFile(held, Reuse.SPARE)
            path = self.tmp_path(stem)
            if self._take_spare(path, size):
                return TmpFile(path, Reuse.SPARE)
            if self._held:  # (just claimed)
                held = self._take_held(_blocks(size))
                if held is not None:
                    return TmpFile(held, Reuse.SPARE)
        else:
            path = self.tmp_path(stem)
        made = self._take_made_ahead()
        return TmpFile(path) if made is None else TmpFile(made, Reuse.EMPTY)

    def _take_held(self, need: int) -> str | None:
        """A claimed spare of *need* blocks, else of the most blocks below (its path)."""
        for blocks in range(need, 0, -1):
            paths = self._held.get(blocks)
            if paths:
                self._held_count -= 1
                return paths.pop()
        return None

    def _take_spare(self, path: str, size: int) -> bool:
        """Move a spare file to *path* to be written over; False when none fits.

        Only a file no bigger (in blocks) than *size* needs is taken: cutting a file
        down frees blocks, which waits for the disk as a removal does.
        """
        need = _blocks(size)
        name = self._pick_spare(need)
        now = time.monotonic()
        if name is None and now >= self._spares_seen_at + _SPARE_IDLE_LOOK:
            assert self.spare_dir is not None
            self._spares = _spares_in(self.spare_dir)
            if self._claims and self._worth_claiming(need) and self._claim_all():
                return False  # the caller takes one of the claimed files
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

    def _worth_claiming(self, need: int) -> bool:
        """Whether the files just seen in spare/ are worth claiming whole."""
        if self._held_count >= _HOLD_LIMIT:
            return False
        seen = fit = 0
        for blocks, names in self._spares.items():
            seen += len(names)
            if blocks <= need:
                fit += len(names)
        return fit >= _CLAIM_AT_LEAST and fit * 10 >= seen * 9

    def _claim_all(self) -> bool:
        """Swap spare/ with a new empty folder of this process's; False if not done.

        Every file spare/ holds is then this process's to write over where it is,
        and spare/ an empty folder the delivery process goes on filling. A file
        system that cannot swap folders is left to the claims file by file.
        """
        assert self.spare_dir is not None
        folder = self._tmp_prefix + tmp_file_name("spare", next(_claim_numbers))
        try:
            os.mkdir(folder)  # (it becomes spare/: made as spare/ was)
        except OSError:
            return False
        try:
            _exchange(folder, os.fspath(self.spare_dir))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
            if exc.errno != errno.ENOENT:  # (spare/ deleted: made again, claimed later)
                self._claims = False
            return False
        self._spares = {}
        self._forget_emptied()
        self._claimed.append(folder)
        prefix = os.path.join(folder, "")
        for blocks, names in _spares_in(Path(folder), limit=None).items():
            self._held.setdefault(blocks, []).extend(prefix + name for name in names)
            self._held_count += len(names)
        return True

    def _forget_emptied(self) -> None:
        """Remove the claimed folders whose every file was taken and has left them."""
        left: dict[str, int] = {}
        for paths in self._held.values():
            for path in paths:
                folder = path.rpartition(os.sep)[0]
                left[folder] = left.get(folder, 0) + 1
        keep = []
        for folder in self._claimed:
            if folder not in left:
                try:
                    os.rmdir(folder)
                    continue
                except FileNotFoundError:
                    continue
                except OSError:  # a file still being written, or one given in late
                    pass
            keep.append(folder)
        self._claimed = keep

    def _pick_spare(self, need: int) -> str | None:
        """A known spare of *need* blocks, else of the most blocks below that."""
        for blocks in range(need, 0, -1):
            names = self._spares.get(blocks)
            if names:
                return names.pop()
        return None

    def _take_made_ahead(self) -> str | None:
        """An empty tmp file made ahead on another core (its path), or None."""
        made = self._made
        try:
            path = made.popleft()
        except IndexError:
            path = None
        if len(made) < _MADE_AHEAD // 2:
            self._fill_ahead()
        return path

    def make_ahead(self) -> None:
        """Have the thread fill up the files made ahead (started on first call).

        Called at start by a server (so its first burst finds them ready, and it
        claims spare/ whole when that pays), else on first need (a delivery process,
        which seldom stores, never makes any).
        """
        if not self._make_ahead:
            return
        if self._maker is None and self.spare_dir is not None:
            self._server = _EXCHANGE is not None
        self._fill_ahead()

    def _fill_ahead(self) -> None:
        if self._maker is None:
            self._maker = threading.Thread(
                target=self._make_files, name="jdxmail-spool-ahead", daemon=True
            )
            self._maker.start()
        self._wanted.set()

    def _make_files(self) -> None:
        """The thread that keeps up to _MADE_AHEAD empty tmp files made ahead."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if self._server and not self._claims:
            # before this process claims any: the folders named with its pid are
            # then those of a process that had it before
            self._return_orphans()
            self._claims = True
        while not self._closing:
            self._wanted.wait()
            self._wanted.clear()
            while len(self._made) < _MADE_AHEAD and not self._closing:
                # named like every tmp file: removed at start if this process died
                path = self._tmp_prefix + tmp_file_name("stock", next(self._made_names))
                try:
                    os.close(os.open(path, flags, 0o600))
                except OSError as exc:  # the loop then creates its own files
                    logger.debug("spool: could not make a file ahead: %s", exc)
                    break
                self._made.append(path)

    def forget_made_ahead(self) -> None:
        """Forget the files made ahead and claimed (``tmp/`` was deleted under them)."""
        self._made.clear()
        self._held.clear()
        self._held_count = 0
        self._claimed.clear()

    def _return_orphans(self) -> None:
        """Give back to spare/ the files claimed by servers that no longer run."""
        try:
            with os.scandir(self.tmp_dir) as entries:
                orphans = [
                    entry.path
                    for entry in entries
                    if entry.name.startswith("spare.p")
                    and not tmp_writer_alive(entry.name)
                    and entry.is_dir(follow_symlinks=False)
                ]
        except OSError:
            return
        for folder in orphans:
            self._give_back(folder)

    def _give_back(self, folder: str) -> None:
        """Move the files of claimed *folder* back to spare/ and remove the folder."""
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in list(entries):
                try:
                    os.rename(entry.path, self._spare_prefix + entry.name)
                except OSError:
                    unlink_quietly(entry.path)
        with contextlib.suppress(OSError):
            os.rmdir(folder)

    # -- giving back -------------------------------------------------------------------

    def spare_path(self, queue_id: str, size: int) -> str:
        """Where a delivered queue file of *size* bytes is kept: ``spare/ID.N``, N the
        number of 4 KiB blocks it fills (queue ids sort by time: pruning goes by age)."""
        return f"{self._spare_prefix}{queue_id}.{_blocks(size)}"

    def keeps(self, size: int) -> bool:
        """Whether :meth:`give` keeps a file of *size* bytes (else it removes it)."""
        return self.spare_dir is not None and size <= SPARE_MAX_SIZE

    def give(self, path: str, size: int) -> None:
        """Hand back the delivered queue file *path* (*size* bytes) for reuse.

        A small one is moved to ``spare/`` (no inode freed and allocated again per
        message), a big one removed; OSError if it can be neither. Removing frees
        blocks, which waits for the disk: call it off the event loop for big files.
        """
        if not self.keeps(size):
            os.unlink(path)
            return
        queue_id = os.path.basename(path).rpartition(".")[0]
        try:
            os.rename(path, self.spare_path(queue_id, size))
        except OSError:
            os.unlink(path)
            return
        self._given += 1
        if self._given % _COUNT_EVERY == 0:
            self.prune()

    def prune(self) -> None:
        """Keep ``spare/`` at about SPARE_LIMIT files: past it, remove the older half.

        Queue ids sort by time, so the oldest spares go: those of a size the server
        has not needed for a while (a burst of big messages, then small ones).
        """
        if self._pruning or self.spare_dir is None:
            return
        try:
            names = sorted(os.listdir(self.spare_dir))
        except OSError:
            return
        if len(names) < SPARE_LIMIT:
            return
        spare_dir = self.spare_dir
        old = [spare_dir / name for name in names[: len(names) - SPARE_LIMIT // 2]]

        def remove() -> None:
            for path in old:
                unlink_quietly(path)  # (or taken by the server meanwhile)

        if self.offload is None:
            remove()
            return
        self._pruning = True
        self.offload(remove).add_done_callback(lambda _: setattr(self, "_pruning", False))

    def close(self) -> None:
        """Stop the thread making files ahead and remove those not taken, give back
        the claimed spares not taken (blocking; no store may be under way)."""
        claimed, self._claimed = self._claimed, []
        self._held.clear()
        self._held_count = 0
        for folder in claimed:
            self._give_back(folder)
        self._closing = True
        maker, self._maker = self._maker, None
        if maker is not None:
            self._wanted.set()
            maker.join()
            while self._made:
                unlink_quietly(self._made.popleft())
        self._closing = False


# <fcntl.h>, <linux/fs.h>
_AT_FDCWD = -100
_EXCHANGE_FLAG = 2  # RENAME_EXCHANGE


def _load_exchange() -> Callable[[str, str], None] | None:
    """``renameat2(RENAME_EXCHANGE)``: swap two names at once (Linux), or None."""
    c = libc()
    function = None if c is None else getattr(c, "renameat2", None)
    if function is None:
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int

    def exchange(first: str, second: str) -> None:
        done = function(
            _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _EXCHANGE_FLAG
        )
        if done != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), first, None, second)

    return exchange


_EXCHANGE = _load_exchange()


def _exchange(first: str, second: str) -> None:
    """Swap the names *first* and *second* (OSError if they cannot be)."""
    if _EXCHANGE is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    _EXCHANGE(first, second)


def _spares_in(directory: Path, *, limit: int | None = _SPARE_BATCH) -> dict[int, list[str]]:
    """Up to *limit* plain files of *directory*, by the block count in their names."""
    found: dict[int, list[str]] = {}
    seen = 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            _, _, blocks = entry.name.rpartition(".")
            if not blocks.isdigit() or not entry.is_file(follow_symlinks=False):
                continue
            found.setdefault(int(blocks), []).append(entry.name)
            seen += 1
            if limit is not None and seen >= limit:
                break
    return found
