"""File recycling: new queue files are written over old ones instead of made from scratch.

Creating a file costs the file system an inode and removing one frees it; where many
were freed lately (ext4 without a journal) each create is slow. So a delivered small
queue file is kept in ``spare/`` (:meth:`FileRecycler.give`) and the next store writes
over it (:meth:`FileRecycler.take`); when none fits, a thread keeps empty files made
ahead in ``tmp/``. ``spare/`` is pruned back to about :data:`SPARE_LIMIT` files.
The spool and the delivery engine call ``take``/``give`` and forget how.

Several processes share ``spare/`` (``serve --workers``, the delivery process), so a
spare taken from ``spare/`` itself is claimed first: renamed into ``tmp/``, written,
then renamed into ``queue/``, two renames per message. A server also has a folder of
its own, ``spare/pTAG/`` (TAG: the part of its queue ids naming its process), which
it holds an ``flock`` on while it runs: the delivery process gives each delivered
file back into the folder of the process that stored it, and that server writes its
spares where they lie, then renames them once, into ``queue/``. No other process
takes from a held folder, and a file half-written there is a spare still, never in
``queue/``. A server starting gives back to ``spare/`` the files of folders nobody
holds (their server stopped or died); a folder holding SPARE_LIMIT files gets no more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jdxmail.queue.durable import DIR_FLAGS, unlink_quietly
from jdxmail.queue.layout import process_tag, queue_id_tag
from jdxmail.sizes import SPARE_MAX_SIZE

__all__ = [
    "SPARE_DIR",
    "SPARE_LIMIT",
    "FileRecycler",
    "Reuse",
    "TmpFile",
    "home_dir",
    "tmp_file_name",
]

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
#: a server's own folder in spare/ is this prefix and its process tag
_HOME_PREFIX = "p"
#: seconds between two looks at a server's own folder when the last found some
#: (a look finds the files given back since the one before: a few per look is cheap)
_HOME_LOOK = 0.002
#: how often a server starting tries for its own folder held a moment by another
_HOME_TRIES = 20

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
        #: a server's own folder in spare/ (its path with a separator; "" while it has
        #: none), the descriptor holding its lock, the names there not taken yet by
        #: block count, and when to look there again
        self._home = ""
        self._home_fd = -1
        self._home_spares: dict[int, list[str]] = {}
        self._home_look_at = 0.0
        #: the delivery side: gives into each server's folder since it was counted,
        #: and the folders not given into until the next count (full, or missing)
        self._home_given: dict[str, int] = {}
        self._home_closed: set[str] = set()
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
        if self._home:
            home = self._take_home(_blocks(size))
            if home is not None:
                return TmpFile(home, Reuse.SPARE)
        path = self.tmp_path(stem)
        if self.spare_dir is not None and self._take_spare(path, size):
            return TmpFile(path, Reuse.SPARE)
        made = self._take_made_ahead()
        return TmpFile(path) if made is None else TmpFile(made, Reuse.EMPTY)

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

    def _take_home(self, need: int) -> str | None:
        """A spare in this server's own folder to write where it lies (its path), or None.

        Nobody else takes from that folder: what a look saw stays there until taken.
        """
        home = self._home
        name = _pick(self._home_spares, need)
        if name is None:
            now = time.monotonic()
            if now < self._home_look_at:
                return None
            self._home_spares = _spares_in(home)
            name = _pick(self._home_spares, need)
            self._home_look_at = now + (_SPARE_IDLE_LOOK if name is None else _HOME_LOOK)
            if name is None:
                return None
        return home + name

    def _pick_spare(self, need: int) -> str | None:
        """A known spare of *need* blocks, else of the most blocks below that."""
        return _pick(self._spares, need)

    def _take_made_ahead(self) -> str | None:
        """An empty tmp file made ahead on another core (its path), or None."""
        made = self._made
        try:
            path = made.popleft()
        except IndexError:
            path = None
        if len(made) < _MADE_AHEAD // 2:
            self.make_ahead()
        return path

    def make_ahead(self) -> None:
        """Have the thread fill up the files made ahead (started on first call).

        Called at start by a server (so its first burst finds them ready), else on
        first need (a delivery process, which seldom stores, never makes any).
        """
        if not self._make_ahead:
            return

        if self._maker is None:
            self._maker = threading.Thread(
                target=self._make_files, name="jdxmail-spool-ahead", daemon=True
            )
            self._maker.start()
        self._wanted.set()

    def _make_files(self) -> None:
        """The thread that keeps up to _MADE_AHEAD empty tmp files made ahead."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
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
        """Forget the files made ahead (``tmp/`` was deleted under them)."""
        self._made.clear()

    def forget_spares(self) -> None:
        """Forget the spares seen (``spare/`` was deleted under them)."""
        self._spares = {}
        self._home_spares = {}

    # -- a server's own folder -------------------------------------------------------

    def hold_home(self) -> bool:
        """At a server's start (blocking): give back to spare/ the files of server
        folders nobody holds, then take this process's own (held until :meth:`close`).

        False if it could not be taken (another process holds a folder of that name):
        this server then claims every spare it writes.
        """
        spare_dir = self.spare_dir
        if spare_dir is None:
            return False
        if self._home:
            return True
        own = home_dir(spare_dir, process_tag()).name
        try:
            with os.scandir(spare_dir) as entries:
                others = [
                    entry.path
                    for entry in entries
                    if entry.name.startswith(_HOME_PREFIX)
                    and entry.name != own
                    and entry.is_dir(follow_symlinks=False)
                ]
        except OSError:
            others = []
        for folder in others:
            _give_back(folder, self._spare_prefix)
        fd = _hold_home(os.path.join(spare_dir, own))
        if fd < 0:
            return False
        self._home_fd = fd
        self._home = os.path.join(spare_dir, own, "")
        return True

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
        home = self._spare_prefix + _HOME_PREFIX + queue_id_tag(queue_id)
        if home in self._home_closed:
            self._given_home(home)  # (looked at again every _COUNT_EVERY gives)
        else:
            try:
                os.rename(path, f"{home}{os.sep}{queue_id}.{_blocks(size)}")
            except OSError:  # no such folder (its server's queue id, not a server's)
                self._home_closed.add(home)
            else:
                self._given_home(home)
                return
        try:
            os.rename(path, self.spare_path(queue_id, size))
        except OSError:
            os.unlink(path)
            return
        self._given += 1
        if self._given % _COUNT_EVERY == 0:
            self.prune()

    def _given_home(self, home: str) -> None:
        """Count a give meant for server folder *home*; each _COUNT_EVERY, look at it."""
        given = self._home_given.get(home, 0) + 1
        self._home_given[home] = given
        if given >= _COUNT_EVERY:
            self._count_home(home)

    def _count_home(self, home: str) -> None:
        """Whether to go on giving into server folder *home*: there and not full."""
        self._home_given[home] = 0
        held = 0
        try:
            with os.scandir(home) as entries:
                for _ in entries:
                    held += 1
                    if held >= SPARE_LIMIT:
                        break
        except OSError:
            held = SPARE_LIMIT
        if held >= SPARE_LIMIT:
            self._home_closed.add(home)
        else:
            self._home_closed.discard(home)

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
        """Stop the thread making files ahead and remove those not taken (blocking)."""
        self._closing = True
        maker, self._maker = self._maker, None
        if maker is not None:
            self._wanted.set()
            maker.join()
            while self._made:
                unlink_quietly(self._made.popleft())
        self._closing = False
        if self._home_fd >= 0:
            os.close(self._home_fd)  # (its files stay: given back at a next start)
        self._home, self._home_fd, self._home_spares = "", -1, {}


def home_dir(spare_dir: Path, tag: str) -> Path:
    """The folder in *spare_dir* of the server whose queue ids carry *tag*."""
    return spare_dir / f"{_HOME_PREFIX}{tag}"


def _pick(spares: dict[int, list[str]], need: int) -> str | None:
    """A name from *spares* of *need* blocks, else of the most blocks below that."""
    for blocks in range(need, 0, -1):
        names = spares.get(blocks)
        if names:
            return names.pop()
    return None


def _hold_home(folder: str) -> int:
    """A descriptor holding the lock of server folder *folder* (made if missing), or -1.

    Another server starting may hold it a moment (giving its files back, then removing
    it): then try again; a server that runs holds it for good (-1 after a few tries).
    """
    for _ in range(_HOME_TRIES):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return -1
        try:
            fd = os.open(folder, DIR_FLAGS)
        except FileNotFoundError:
            continue  # (removed meanwhile)
        except OSError:
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(folder).st_ino == os.fstat(fd).st_ino:
                return fd  # held, and still the folder of that name
        except (BlockingIOError, FileNotFoundError):
            pass
        except OSError:
            os.close(fd)
            return -1
        os.close(fd)
        time.sleep(0.005)
    return -1


def _give_back(folder: str, spare_prefix: str) -> None:
    """Move the files of server folder *folder* back to spare/ and remove it, unless
    its server holds it (it runs)."""
    try:
        fd = os.open(folder, DIR_FLAGS)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for _ in range(3):  # (the delivery process may give in meanwhile)
            with os.scandir(folder) as entries:
                for entry in list(entries):
                    try:
                        os.rename(entry.path, spare_prefix + entry.name)
                    except OSError:
                        unlink_quietly(entry.path)
            try:
                os.rmdir(folder)
                return
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    return
    except OSError:  # held: its server runs
        return
    finally:
        os.close(fd)


def _spares_in(directory: Path | str) -> dict[int, list[str]]:
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
