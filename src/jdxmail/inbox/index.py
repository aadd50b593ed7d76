"""The dev inbox: every message of every local mailbox, newest first, in memory.

:class:`MailboxIndex` reads the header section of each ``<root>/<recipient>/*.eml``
once (at start, in a thread) and then keeps itself current: mail this process's spool
stores is handed over as it is stored (:meth:`MailboxIndex.filed`, nothing read back),
and inotify events (:class:`jdxmail.inbox.watch.MailboxWatcher`) bring what any other
process sharing the mailbox folder writes or removes, or a rescan every few seconds
where inotify is not available. Listing a page is a slice of a sorted list (no file
is opened); a search over subjects and addresses runs in memory, one over body text
reads the files in a thread. Ids are the first 16 hex digits of a SHA-256 of
``folder/file``: stable across restarts, and never used as a path — a file is only
reached through a lookup of its id here.

Retention (``Mailbox.MaxMessages``, ``Mailbox.MaxAge``) removes the oldest messages
in the background.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import itertools
import logging
import mmap
import os
import re
import shlex
import stat
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jdxmail.eventloop import kept_loop
from jdxmail.inbox.message import (
    HEAD_READ,
    Summary,
    count_attachments,
    header_section,
    parse_raw,
    parse_summary,
    summary_of,
)
from jdxmail.inbox.watch import MailboxWatcher

__all__ = ["ID_PATTERN", "MailboxIndex", "MessageEntry", "Page", "Query", "RetentionLimits"]

logger = logging.getLogger("jdxmail.queue")

#: what every message id looks like (anything else is refused before a lookup)
ID_PATTERN = re.compile(r"[0-9a-f]{16}")
#: seconds between rescans when inotify is not available
RESCAN_INTERVAL = 2.0
#: seconds between two looks for messages past Mailbox.MaxAge
PRUNE_INTERVAL = 60.0
#: files up to this size are read whole for the attachment count; bigger ones mapped
_READ_WHOLE = 1 << 20
#: seconds a new file's inotify event waits before the file is read, when this
#: process's spool hands over what it stores (``filed``): by then the spool has said
#: what it wrote and the file is not read at all; mail other processes store shows
#: up this much later
FILED_GRACE = 0.25
#: at most this many hand-overs whose inotify event is still to come are remembered
_FILED_FIRST_MAX = 4096
#: a search gives the event loop back after looking at this many messages
_SEARCH_SLICE = 500
#: the longest header section a new entry keeps to read its summary from when first shown
_HEAD_KEPT = 16 * 1024
#: batches of new files up to this many are read on the loop (tens of µs each); a
#: thread hop per handful of files cost more than the reading, in lock hand-overs
_READ_ON_LOOP = 8
_ENCODED = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*(base64|quoted-printable)")


class MessageEntry:
    """One message file of a local mailbox, as the list shows it.

    A mail this process's spool hands over keeps its header section until something
    reads its summary (a page of the list, a search, a wait): most mail in a busy
    inbox is never looked at one by one, and reading the headers of each as it came
    was a tenth of the server's work per message. Immutable once made.
    """

    __slots__ = (
        "_attachments",
        "_head",
        "_search",
        "_summary",
        "folder",
        "id",
        "name",
        "size",
        "time",
    )

    def __init__(
        self,
        id: str,
        folder: str,
        name: str,
        size: int,
        time: float,
        summary: Summary | None = None,
        *,
        head: bytes = b"",
        attachments: int = 0,
    ) -> None:
        """An entry with its *summary*, or with the header section *head* and the
        count of *attachments* to make it from when first asked."""
        self.id = id
        self.folder = folder
        self.name = name
        self.size = size
        self.time = time
        self._summary = summary
        self._head = head
        self._attachments = attachments
        self._search: str | None = None

    @property
    def summary(self) -> Summary:
        """From, To, Subject… as the list shows them."""
        summary = self._summary
        if summary is None:
            summary = self._summary = summary_of(self._head, self._attachments)
            self._head = b""
        return summary

    @property
    def search(self) -> str:
        """Lower-case from, to, cc, subject and envelope, for searching in memory."""
        search = self._search
        if search is None:
            search = self._search = _search_text(self.folder, self.summary)
        return search

    def _key(self) -> tuple[str, str, str, int, float, Summary]:
        return (self.id, self.folder, self.name, self.size, self.time, self.summary)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MessageEntry):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.id, self.folder, self.name, self.size, self.time))

    def __repr__(self) -> str:
        return f"MessageEntry(id={self.id!r}, folder={self.folder!r}, name={self.name!r})"


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing: *total* messages matched, *messages* from *start*."""

    total: int
    start: int
    messages: list[MessageEntry]


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    """How many messages and how old the inbox keeps (None: no limit)."""

    max_messages: int | None = None
    max_age: float | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed search: ``from:``, ``to:``, ``subject:`` terms and plain words.

    Every term must match; a plain word matches the addresses, the subject or the
    body text. Matching ignores case; quotes keep a phrase together.
    """

    senders: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Query:
        """Parse a search box text; unbalanced quotes are taken literally."""
        try:
            parts = shlex.split(text)
        except ValueError:
            parts = text.split()
        fields: dict[str, list[str]] = {"from": [], "to": [], "subject": [], "": []}
        for part in parts:
            key, colon, value = part.partition(":")
            if colon and key.lower() in fields and key and value:
                fields[key.lower()].append(value.lower())
            elif part:
                fields[""].append(part.lower())
        return cls(
            tuple(fields["from"]), tuple(fields["to"]), tuple(fields["subject"]), tuple(fields[""])
        )

    @property
    def empty(self) -> bool:
        """True when the query matches everything."""
        return not (self.senders or self.recipients or self.subjects or self.words)

    def header_match(self, entry: MessageEntry) -> tuple[bool, tuple[str, ...]]:
        """Whether the header terms match, and the plain words the headers lack."""
        summary = entry.summary
        sender = f"{summary.sender} {summary.envelope.mail_from or ''}".lower()
        to = " ".join((*summary.to, *summary.cc, summary.envelope.rcpt_to or "", entry.folder))
        to = to.lower()
        subject = summary.subject.lower()
        if not all(s in sender for s in self.senders):
            return False, ()
        if not all(r in to for r in self.recipients):
            return False, ()
        if not all(s in subject for s in self.subjects):
            return False, ()
        return True, tuple(w for w in self.words if w not in entry.search)


def message_id_for(folder: str, name: str) -> str:
    """The stable id of ``folder/name``."""
    key = f"{folder}/{name}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(key).hexdigest()[:16]


class MailboxIndex:
    """Every message of the mailboxes under *root*, kept current; see the module."""

    def __init__(
        self,
        root: Path,
        *,
        limits: Callable[[], RetentionLimits] = RetentionLimits,
        filed_here: bool = False,
    ) -> None:
        """*limits* is called for the current retention limits (they change on reload).

        With *filed_here*, this process's spool calls :meth:`filed` for each mailbox
        file it stores, and new files are read only if it did not.
        """
        self.root = Path(root)
        self._root_text = os.fspath(self.root)
        self._filed_here = filed_here
        #: files handed over by filed() before their inotify event came (then ignored)
        self._filed_first: set[tuple[str, str]] = set()
        self._load_timer: asyncio.TimerHandle | None = None
        #: new files waiting out FILED_GRACE before they are read: when each may be
        #: (the loop's clock), in order of arrival
        self._waiting: dict[tuple[str, str], float] = {}
        self._limits = limits
        self._entries: dict[str, MessageEntry] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        #: (time, arrival number, id) of every message, oldest first: file times are
        #: coarse (a few ms), so messages stored together are kept in arrival order
        self._order: list[tuple[float, int, str]] = []
        self._order_key: dict[str, tuple[float, int, str]] = {}
        self._arrivals = itertools.count()
        self._listeners: list[Callable[[MessageEntry], None]] = []
        self._removal_listeners: list[Callable[[str], None]] = []
        self._waiters: list[tuple[Callable[[MessageEntry], bool], asyncio.Future[MessageEntry]]]
        self._waiters = []
        self._pending: dict[tuple[str, str], None] = {}
        self._loader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._watcher: MailboxWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._generation = 0
        self._search_cache: tuple[int, Query, list[str]] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Watch the mailboxes and index what is there (in the background)."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        self._watcher = MailboxWatcher(self.root, self._on_file, self._on_folder, self._on_overflow)
        if not self._watcher.start():
            logger.info("inbox: inotify not available, rescanning %s", self.root)
            self._poller = asyncio.create_task(self._poll(), name="jdxmail-inbox-rescan")
        self._pruner = asyncio.create_task(self._prune_loop(), name="jdxmail-inbox-retention")
        self._spawn(self._rescan(first=True))

    async def stop(self, grace: float = 0.0) -> None:
        """Stop watching and cancel background work."""
        if self._watcher is not None:
            self._watcher.close()
        if self._load_timer is not None:
            self._load_timer.cancel()
            self._load_timer = None
        for task in (self._poller, self._pruner, self._loader, *self._tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for _, future in self._waiters:
            future.cancel()
        self._waiters.clear()

    async def ready(self) -> None:
        """Wait until the first scan of the mailboxes is done."""
        await self._ready.wait()

    def subscribe(self, listener: Callable[[MessageEntry], None]) -> None:
        """Call *listener* on the loop for each message that arrives after the first scan."""
        self._listeners.append(listener)

    def subscribe_removals(self, listener: Callable[[str], None]) -> None:
        """Call *listener* on the loop with the id of each message that leaves the list
        (deleted here or by hand, removed by retention); not for a file written again."""
        self._removal_listeners.append(listener)

    # -- reading ----------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """How many wait_for() calls are waiting for a message."""
        return len(self._waiters)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, message_id: str) -> MessageEntry | None:
        """The message with *message_id*, or None (also for anything not shaped like an id)."""
        if not ID_PATTERN.fullmatch(message_id):
            return None
        return self._entries.get(message_id)

    def path_of(self, entry: MessageEntry) -> Path:
        """The file of an indexed entry (names come from the directory listing)."""
        return self.root / entry.folder / entry.name

    def newest(self) -> Iterable[MessageEntry]:
        """Every message, newest first."""
        for *_, message_id in reversed(self._order):
            yield self._entries[message_id]

    async def page(self, start: int = 0, limit: int = 50, query: str = "") -> Page:
        """Messages *start* to *start* + *limit* (newest first), of those matching *query*."""
        start, limit = max(0, start), max(0, limit)
        parsed = Query.parse(query)
        if parsed.empty:
            end = len(self._order) - start
            ids = [m for *_, m in reversed(self._order[max(0, end - limit) : max(0, end)])]
            return Page(len(self._order), start, [self._entries[m] for m in ids])
        matched = await self._search(parsed)
        chosen = [self._entries[m] for m in matched[start : start + limit] if m in self._entries]
        return Page(len(matched), start, chosen)

    async def _search(self, query: Query) -> list[str]:
        cached = self._search_cache
        if cached is not None and cached[0] == self._generation and cached[1] == query:
            return cached[2]
        generation = self._generation
        candidates: list[tuple[MessageEntry, tuple[str, ...]]] = []
        for count, entry in enumerate(list(self.newest()), 1):
            ok, words = query.header_match(entry)
            if ok:
                candidates.append((entry, words))
            if count % _SEARCH_SLICE == 0:
                # A big inbox's first search also reads the summaries of mail nobody
                # looked at yet (~12 us each): let the SMTP sessions run in between.
                await asyncio.sleep(0)
        if any(words for _, words in candidates):
            paths = {e.id: self.path_of(e) for e, words in candidates if words}
            found = await asyncio.to_thread(_bodies_match, paths, candidates)
        else:
            found = [e.id for e, _ in candidates]
        self._search_cache = (generation, query, found)
        return found

    async def read(self, entry: MessageEntry) -> bytes:
        """The file's bytes; FileNotFoundError if it went meanwhile."""
        return await asyncio.to_thread(_read_file, self.path_of(entry))

    async def wait_for(
        self, match: Callable[[MessageEntry], bool], wait: float
    ) -> MessageEntry | None:
        """The newest message matching *match*, waiting up to *wait* s for one to come."""
        await self._ready.wait()
        for entry in self.newest():
            if match(entry):
                return entry
        future: asyncio.Future[MessageEntry] = asyncio.get_running_loop().create_future()
        waiter = (match, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait):
                return await future
        except TimeoutError:
            return None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    # -- deleting ---------------------------------------------------------------------

    async def delete(self, message_ids: Iterable[str]) -> int:
        """Remove the files of the messages with *message_ids*; how many were removed."""
        entries = [e for m in message_ids if (e := self.get(m)) is not None]
        for entry in entries:
            self._remove(entry.id)
        paths = [self.path_of(e) for e in entries]
        return await asyncio.to_thread(_unlink_all, paths)

    async def delete_all(self) -> int:
        """Remove every message of every mailbox; how many were removed."""
        return await self.delete(list(self._entries))

    # -- keeping current ----------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def filed(self, path: str, head: bytes, data: bytes | bytearray) -> None:
        """This process's spool stored *head* + *data* as the mailbox file *path*
        (durable, under its final name): list it without reading the file."""
        # (the spool joins the mailbox root, the folder and the name with os.sep)
        directory, _, name = path.rpartition(os.sep)
        root, _, folder = directory.rpartition(os.sep)
        if root != self._root_text or not name.endswith(".eml"):
            return  # (not under this index's root: its inotify event will tell)
        key = (folder, name)
        if key in self._waiting:
            del self._waiting[key]
        elif key in self._pending:
            del self._pending[key]
        elif self._watcher is not None and self._watcher.active:
            if len(self._filed_first) >= _FILED_FIRST_MAX:
                self._filed_first.clear()  # (events were lost: at worst a file read twice)
            self._filed_first.add(key)
        whole = head + data
        section = header_section(whole)
        attachments = count_attachments(whole)
        summary = None
        if len(section) > _HEAD_KEPT:
            # (read now: kept until first shown, a long section, such as all of a
            # message with no blank line, would hold that much memory per entry)
            summary, section = summary_of(section, attachments), b""
        entry = MessageEntry(
            message_id_for(folder, name),
            folder,
            name,
            len(whole),
            time.time(),
            summary,
            head=section,
            attachments=attachments,
        )
        self._add(entry, announce=self._ready.is_set())
        self._enforce_count()

    def _on_file(self, folder: str, name: str, present: bool) -> None:
        if present:
            key = (folder, name)
            if key in self._filed_first:  # listed already, from the spool's own hand-over
                self._filed_first.discard(key)
                return
            if self._filed_here:
                self._kick_later(key)
            else:
                self._pending[key] = None
                self._kick()
            return
        message_id = self._by_key.get((folder, name))
        if message_id is not None:
            self._remove(message_id)

    def _on_folder(self, folder: str) -> None:
        self._spawn(self._scan_folder(folder))

    def _on_overflow(self) -> None:
        self._filed_first.clear()
        self._spawn(self._rescan())
        if self._watcher is not None and not self._watcher.active and self._poller is None:
            logger.warning("inbox: no longer watching %s; rescanning it instead", self.root)
            self._poller = asyncio.create_task(self._poll(), name="jdxmail-inbox-rescan")

    async def _scan_folder(self, folder: str) -> None:
        names = await asyncio.to_thread(_files_in, self.root / folder)
        keys = [(folder, n) for n in names if (folder, n) not in self._by_key]
        if self._filed_here:  # (the spool may be about to hand them over)
            for key in keys:
                self._kick_later(key)
        else:
            self._pending.update(dict.fromkeys(keys))
            self._kick()

    def _kick_later(self, key: tuple[str, str]) -> None:
        """Read file *key* FILED_GRACE from now, unless the spool hands it over first."""
        loop = self._loop = kept_loop(self._loop)  # (once per new file)
        self._waiting.pop(key, None)  # (again: its wait starts over, at the end)
        self._waiting[key] = loop.time() + FILED_GRACE
        if self._load_timer is None:
            self._load_timer = loop.call_later(FILED_GRACE, self._grace_over)

    def _grace_over(self) -> None:
        self._load_timer = None
        now = asyncio.get_running_loop().time()
        for key, due in list(self._waiting.items()):
            if due > now:
                self._load_timer = asyncio.get_running_loop().call_at(due, self._grace_over)
                break
            del self._waiting[key]
            self._pending[key] = None
        if self._pending:
            self._kick()

    def _kick(self) -> None:
        if self._loader is None or self._loader.done():
            self._loader = asyncio.create_task(self._load_pending(), name="jdxmail-inbox-load")

    async def _load_pending(self) -> None:
        while self._pending:
            batch, self._pending = list(self._pending), {}
            if len(batch) <= _READ_ON_LOOP:
                loaded = _load_entries(self.root, batch)
            else:
                loaded = await asyncio.to_thread(_load_entries, self.root, batch)
            for key in batch:
                if key not in loaded and (gone := self._by_key.get(key)) is not None:
                    self._remove(gone)
            # by time; a stable sort keeps the order of the events for equal times
            for entry in sorted(loaded.values(), key=lambda e: e.time):
                self._add(entry, announce=self._ready.is_set())
        self._enforce_count()

    async def _rescan(self, *, first: bool = False) -> None:
        try:
            # Entries added while the folders are listed (by a watcher event) are newer
            # than the listing: only entries older than it may be dropped for missing.
            listed_after = next(self._arrivals)
            keys = await asyncio.to_thread(_all_files, self.root)
            for key in [k for k in self._by_key if k not in keys]:
                message_id = self._by_key[key]
                if self._order_key[message_id][1] < listed_after:
                    self._remove(message_id)
            self._pending.update(dict.fromkeys(k for k in sorted(keys) if k not in self._by_key))
            if self._loader is not None and not self._loader.done():
                with contextlib.suppress(Exception):  # (it logged its own failures)
                    await self._loader
            if self._pending:
                await self._load_pending()
        finally:
            if first:  # even after a failure: the console must not wait forever
                logger.info("inbox: %d messages in %s", len(self._entries), self.root)
                self._ready.set()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(RESCAN_INTERVAL)
            await self._rescan()

    def _add(self, entry: MessageEntry, *, announce: bool) -> None:
        old = self._entries.get(entry.id)
        if old is not None:
            self._remove(old.id, replaced=True)
            announce = False  # a file written again (copied in): not new mail
        self._entries[entry.id] = entry
        self._by_key[(entry.folder, entry.name)] = entry.id
        key = (entry.time, next(self._arrivals), entry.id)
        self._order_key[entry.id] = key
        order = self._order
        if not order or order[-1] <= key:  # (the common case: newer than every other)
            order.append(key)
        else:
            bisect.insort(order, key)
        self._generation += 1
        if not announce:
            return
        for listener in self._listeners:
            try:
                listener(entry)
            except Exception:
                logger.exception("an inbox listener failed")
        for match, future in list(self._waiters):
            if not future.done() and match(entry):
                future.set_result(entry)

    def _remove(self, message_id: str, *, replaced: bool = False) -> None:
        entry = self._entries.pop(message_id, None)
        if entry is None:
            return
        self._by_key.pop((entry.folder, entry.name), None)
        key = self._order_key.pop(message_id)
        index = bisect.bisect_left(self._order, key)
        if index < len(self._order) and self._order[index] == key:
            del self._order[index]
        self._generation += 1
        if replaced:
            return
        for listener in self._removal_listeners:
            try:
                listener(message_id)
            except Exception:
                logger.exception("an inbox listener failed")

    # -- retention ----------------------------------------------------------------------

    def _enforce_count(self) -> None:
        limit = self._limits().max_messages
        if limit is None or len(self._order) <= limit:
            return
        excess = [m for *_, m in self._order[: len(self._order) - limit]]
        logger.info("inbox: removing %d messages over Mailbox.MaxMessages", len(excess))
        self._spawn(self.delete(excess))

    async def prune(self) -> int:
        """Remove the messages past Mailbox.MaxAge and over MaxMessages; how many."""
        limits = self._limits()
        doomed: list[str] = []
        if limits.max_age is not None:
            cutoff = time.time() - limits.max_age
            index = bisect.bisect_left(self._order, (cutoff, -1, ""))
            doomed = [m for *_, m in self._order[:index]]
        if limits.max_messages is not None:
            over = len(self._order) - limits.max_messages
            oldest = (m for *_, m in self._order[: max(0, over)])
            doomed = list(dict.fromkeys([*doomed, *oldest]))
        if doomed:
            logger.info("inbox: removing %d messages past the Mailbox limits", len(doomed))
        return await self.delete(doomed)

    async def _prune_loop(self) -> None:
        await self._ready.wait()
        while True:
            try:
                await self.prune()
            except OSError as exc:
                logger.warning("inbox: could not remove old messages: %s", exc)
            await asyncio.sleep(PRUNE_INTERVAL)


# -- in threads --------------------------------------------------------------------------


def _files_in(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [
                e.name
                for e in entries
                if e.name.endswith(".eml")
                and not e.name.startswith(".")
                and e.is_file(follow_symlinks=False)
            ]
    except OSError:
        return []


def _all_files(root: Path) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    try:
        with os.scandir(root) as folders:
            names = [
                f.name
                for f in folders
                if not f.name.startswith(".") and f.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return keys
    for folder in names:
        keys.update((folder, name) for name in _files_in(root / folder))
    return keys


def _read_file(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def _load_entries(root: Path, keys: list[tuple[str, str]]) -> dict[tuple[str, str], MessageEntry]:
    loaded: dict[tuple[str, str], MessageEntry] = {}
    for folder, name in keys:
        try:
            entry = _load_entry(root, folder, name)
        except Exception:  # a message this reader cannot take must not stop the others
            logger.exception("inbox: cannot read %s", root / folder / name)
            continue
        if entry is not None:
            loaded[(folder, name)] = entry
    return loaded


def _load_entry(root: Path, folder: str, name: str) -> MessageEntry | None:
    """Read one file's header section and count its attachments; None if unusable."""
    try:
        fd = os.open(os.path.join(root, folder, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size <= _READ_WHOLE:
            whole = os.pread(fd, info.st_size, 0)
            summary = parse_summary(whole, whole)
        else:
            head = header_section(os.pread(fd, HEAD_READ, 0))
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                summary = parse_summary(head, mapped)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return _entry(folder, name, info.st_size, info.st_mtime, summary)


def _entry(folder: str, name: str, size: int, when: float, summary: Summary) -> MessageEntry:
    return MessageEntry(message_id_for(folder, name), folder, name, size, when, summary)


def _search_text(folder: str, summary: Summary) -> str:
    return " ".join(
        (
            summary.sender,
            *summary.to,
            *summary.cc,
            summary.subject,
            summary.envelope.mail_from or "",
            summary.envelope.rcpt_to or "",
            folder,
        )
    ).lower()


def _body_contains(raw: bytes, words: tuple[str, ...]) -> bool:
    lowered = raw.lower()
    missing = [w for w in words if w.encode("utf-8") not in lowered]
    if not missing:
        return True
    if not _ENCODED.search(raw) and raw.isascii():
        return False
    # Encoded parts (base64, quoted-printable, other charsets): decode the text parts.
    text: list[str] = []
    for part in parse_raw(raw).walk():
        if part.get_content_maintype() == "text" and not part.is_multipart():
            with contextlib.suppress(LookupError, ValueError, AssertionError):
                content = part.get_content()
                if isinstance(content, str):
                    text.append(content.lower())
    joined = "\n".join(text)
    return all(w in joined for w in missing)


def _bodies_match(
    paths: dict[str, Path], candidates: list[tuple[MessageEntry, tuple[str, ...]]]
) -> list[str]:
    found: list[str] = []
    for entry, words in candidates:
        if not words:
            found.append(entry.id)
            continue
        try:
            raw = _read_file(paths[entry.id])
        except OSError:
            continue
        if _body_contains(raw, words):
            found.append(entry.id)
    return found


def _unlink_all(paths: list[Path]) -> int:
    removed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
    return removed
