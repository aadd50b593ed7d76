"""The durable spool: accepted mail is on stable storage before the client hears 250.

Layout under the spool directory::

    tmp/            files being written (never read; at startup, those of processes
                    that no longer run are removed), and empty files made ahead
    queue/ID.msg    one immutable file per queued message: envelope + data
                    (the format: queuefile.py)
    state/ID.json   mutable delivery state of a queued message (absent until the
                    first attempt), replaced atomically
    failed/ID.msg   messages given up on, with failed/ID.json holding the reason
    corrupt/        spool files that could not be read, moved aside
    spare/ID.N      queue files of delivered messages (N blocks of 4 KiB), kept to be
                    written over by the next stores (recycling.py)
    spare/pTAG/ID.N the same, given back to the server that stored them, which
                    writes them where they lie (held with flock while it runs)
    flush           touched by ``jdxmail queue flush``: a running engine makes every
                    queued message due at once
    retry/ID        left by ``jdxmail queue retry ID``: a running engine makes that
                    message due at once and removes the file
    quota.json      per-relay daily counters

and under the mailbox directory, ``.tmp/`` for mailbox files being written.

``Spool.store`` commits in batches with as few system calls off the event loop as
possible (on Linux, mode ``batch``): the event loop writes the message's files into
``tmp/`` itself (page-cache writes; messages over LOOP_WRITE_LIMIT are written by the
sync thread instead), and one sync thread (batching.py) runs ``syncfs`` for whatever
has gathered. A message for relays only is renamed into ``queue/`` at once and the
next flush makes its data and its name durable; only then does the caller get its
queue id. Its file carries its size and checksum, so a file that a crash cut short
(never acknowledged) is recognised as such. Mailbox files have no checksum: they go
through two flushes, the data first, then (after the sync thread moved them into
place) the names, so a crash leaves no half-written mail in a mailbox. Every file,
whatever its destination, is written the same way: into a tmp file its folder's
recycler gives (a spare, or an empty file made ahead: no create on the event loop).

Elsewhere (no ``syncfs``) and in mode ``batch-fsync``, one writer thread writes each
batch, fsyncs every file, renames them and fsyncs each touched directory once.
``bench/spool_bench.py`` compares the designs; the figures are in docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jdxmail.process import tmp_writer_alive
from jdxmail.queue.batching import BatchThread
from jdxmail.queue.durable import (
    DIR_FLAGS,
    claim,
    claim_sized,
    fsync_dir,
    has_syncfs,
    sync_file_system,
    unlink_quietly,
    write_synced,
)
from jdxmail.queue.layout import (
    FLUSH_FILE,
    STATE_SUFFIX,
    SpoolStats,
    ids_in,
    new_queue_id,
    queue_id_time,
    spool_stats,
)
from jdxmail.queue.mailbox import (
    MailboxDelivery,
    delivery_head,
    mailbox_dir_for,
    message_file_name,
)
from jdxmail.queue.queuefile import (
    QUEUE_SUFFIX,
    AcceptedMessage,
    CorruptSpoolFile,
    DataTail,
    QueuedMessage,
    SpooledBody,
    SpoolError,
    SpoolFull,
    as_spool_error,
    crc32_combine,
    encode_queued_head,
    read_queued_fd,
    read_queued_message,
)
from jdxmail.queue.recycling import SPARE_DIR, FileRecycler, Reuse, TmpFile
from jdxmail.sizes import LOOP_WRITE_LIMIT

__all__ = [
    "FLUSH_FILE",
    "QUEUE_SUFFIX",
    "STATE_SUFFIX",
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
    "crc32_combine",
    "queue_id_time",
    "read_queued_fd",
    "read_queued_message",
    "spool_stats",
]

logger = logging.getLogger("jdxmail.queue")

CommitMode = Literal["batch", "batch-fsync"]
#: local recipients whose mailbox folder the spool keeps in memory (then it starts over)
_FOLDERS_KEPT = 1024


@dataclass(slots=True)
class _Output:
    """One file a store writes, whatever its destination: the lines before the data,
    the folder's recycler it takes its tmp file from, and where it goes in the end
    (a queue file's path, or a mailbox)."""

    head: bytes
    files: FileRecycler
    final: str | MailboxDelivery
    tmp: str = ""


@dataclass(slots=True)
class _Plan:
    """The files one store() writes and, once written, where they are."""

    queue_id: str
    outputs: list[_Output] = field(default_factory=list)
    #: a queue file among the outputs (the engine is told about it)
    queued: bool = False
    #: mailbox files among the outputs (no checksum: they take their names after a flush)
    mailboxes: bool = False
    placed: list[str | Path] = field(default_factory=list)
    tmp_files: list[str | Path] = field(default_factory=list)


class _OnDisk(enum.Enum):
    """How far a store's files have got, in the pipelined commit."""

    NOTHING = "nothing"  # nothing written yet (large messages: the sync thread writes them)
    WRITTEN = "written"  # tmp files written; the next flush makes the data durable
    PLACED = "placed"  # in place under its final name; the next flush completes it


@dataclass(slots=True, eq=False)
class _PendingStore:
    """One store() on its way through the commit, completed through *future*."""

    plan: _Plan
    message: AcceptedMessage
    future: asyncio.Future[str]
    on_disk: _OnDisk
    error: SpoolError | None = None


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
        self._state_prefix = os.path.join(self.state_dir, "")
        self._commit_mode = commit_mode
        #: files written and placed by the loop, syncfs by the sync thread (else the
        #: writer thread writes, fsyncs each file, renames and fsyncs the directories)
        self._pipelined = commit_mode == "batch" and has_syncfs()
        #: what each flush syncs: a descriptor open on one folder per file system (or
        #: the folder, if it could not be opened: each flush then reports the error)
        self._sync_targets: list[Path | int] = []
        self._closing = False
        self._thread: BatchThread[_PendingStore, list[_PendingStore]] | None = None
        #: spare files, files made ahead and tmp names, of tmp/ and of the mailboxes' .tmp/
        self.files = FileRecycler(self.tmp_dir, self.spare_dir, make_ahead=self._pipelined)
        self.mailbox_files = FileRecycler(self.mailbox_tmp_dir, None, make_ahead=self._pipelined)
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        #: called on the loop when a message enters queue/ (its queue id)
        self.on_queued: Callable[[str], None] | None = None
        #: called on the loop for each mailbox file a store made durable: its path,
        #: the lines written before the data, the data (not for big messages)
        self.on_filed: Callable[[str, bytes, bytes | bytearray], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the mailbox folder of each local recipient seen lately
        self._mailbox_folders: dict[str, Path] = {}

    # -- lifecycle -----------------------------------------------------------------

    async def open(self, *, announce: bool = True, make_ahead: bool = False) -> None:
        """Create the directories, clean up what a crash left, start the writer thread.

        Logs what the spool holds unless *announce* is false (a second process on the
        same spool). With *make_ahead* (a server), empty files for the first stores
        are made now rather than on first need, and it takes its folder in ``spare/``
        (recycling.py). Raises SpoolError when the directories cannot be created.
        """
        self._loop = asyncio.get_running_loop()
        counts = await asyncio.to_thread(self._prepare, make_ahead)
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
        work = self._sync_batch if self._pipelined else self._commit_batch
        self._thread = BatchThread("jdxmail-spool", self._loop, work, self._advance)
        self._thread.start()
        if make_ahead:
            self.files.make_ahead()
            self.mailbox_files.make_ahead()

    async def close(self) -> None:
        """Finish every store already begun (new ones are refused), then stop the thread."""
        thread = self._thread
        if thread is None:
            return
        self._closing = True
        if self._in_flight and self._drained is not None:
            self._drained.clear()
            await self._drained.wait()
        await asyncio.to_thread(thread.close)
        self._thread = None
        targets, self._sync_targets = self._sync_targets, []
        for target in targets:
            if isinstance(target, int):
                os.close(target)
        await asyncio.to_thread(self.files.close)
        await asyncio.to_thread(self.mailbox_files.close)

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _prepare(self, server: bool = False) -> dict[str, int]:
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
        if self._pipelined and not self._sync_targets:
            self._sync_targets = [_open_folder(d) for d in devices.values()]
        if server and self._pipelined:
            # a server writes the spares given back to it where they lie
            self.files.hold_home()
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
        plan = _Plan(queue_id=new_queue_id())
        self._plan(plan, message)
        on_disk = _OnDisk.NOTHING
        if self._pipelined and message.tail is None and len(message.data) <= LOOP_WRITE_LIMIT:
            # A queue file carries its size and checksum, so it may take its name
            # before the flush: one flush then makes data and name durable. Mailbox
            # files have no checksum and wait for two (data, then names).
            on_disk = _OnDisk.WRITTEN if plan.mailboxes else _OnDisk.PLACED
            try:
                self._write_tmp(plan, message, sync=False)
                if on_disk is _OnDisk.PLACED:
                    self._place(plan)
            except OSError as exc:
                self._undo(plan)
                raise as_spool_error(exc) from exc
        job = _PendingStore(plan, message, self._loop.create_future(), on_disk)
        self._in_flight += 1
        self._submit([job])
        # cancelling the caller cancels only the wait: the commit goes on
        return await job.future

    def _plan(self, plan: _Plan, message: AcceptedMessage) -> None:
        """The outputs of *message*: its queue file, one file per local mailbox."""
        if message.relay_recipients:
            head = encode_queued_head(plan.queue_id, message)
            plan.outputs.append(_Output(head, self.files, self.queue_file(plan.queue_id)))
            plan.queued = True
        if not message.local_recipients:
            return
        name = message_file_name(message.message_id, plan.queue_id)
        seen: set[Path] = set()
        folders = self._mailbox_folders
        for recipient in message.local_recipients:
            directory = folders.get(recipient)
            if directory is None:
                if len(folders) >= _FOLDERS_KEPT:
                    folders.clear()
                directory = folders[recipient] = mailbox_dir_for(self.mailbox_dir, recipient)
            if directory in seen:
                continue
            seen.add(directory)
            head = delivery_head(message.mail_from, recipient)
            delivery = MailboxDelivery(recipient=recipient, directory=directory, name=name)
            plan.outputs.append(_Output(head, self.mailbox_files, delivery))
            plan.mailboxes = True

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
            raise as_spool_error(exc) from exc

    def _open_tail(self) -> DataTail:
        tmpfile = getattr(os, "O_TMPFILE", 0)
        if tmpfile:
            try:
                return DataTail(os.open(self.tmp_dir, tmpfile | os.O_RDWR | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
        path = self.files.tmp_path("tail")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)
        return DataTail(fd)

    def _submit(self, jobs: list[_PendingStore]) -> None:
        assert self._thread is not None
        self._thread.submit(jobs)

    def _finish(self, job: _PendingStore, error: SpoolError | None) -> None:
        """On the loop: settle *job*'s future and announce a queued message."""
        if job.message.tail is not None:
            job.message.tail.close()  # every thread is done with it
        if error is None:
            self._queued(job.plan)
            if job.plan.mailboxes and self.on_filed is not None and job.message.tail is None:
                self._filed(job.plan, job.message.data)
        if not job.future.done():
            if error is None:
                job.future.set_result(job.plan.queue_id)
            else:
                job.future.set_exception(error)
        self._in_flight -= 1
        if self._in_flight == 0 and self._drained is not None:
            self._drained.set()

    def _filed(self, plan: _Plan, data: bytes | bytearray) -> None:
        assert self.on_filed is not None
        for output, placed in zip(plan.outputs, plan.placed, strict=True):
            if isinstance(output.final, MailboxDelivery):
                try:
                    self.on_filed(os.fspath(placed), output.head, data)
                except Exception:  # (the mail is stored; only a listing is late)
                    logger.exception("spool: telling the inbox of %s failed", placed)

    def _queued(self, plan: _Plan) -> None:
        if plan.queued and self.on_queued is not None:
            self.on_queued(plan.queue_id)

    # -- the pipelined commit (Linux) ------------------------------------------------

    def _sync_batch(self, batch: list[_PendingStore]) -> list[_PendingStore]:
        """On the thread: write what the loop did not, flush, return what is done.

        What waited for its data to be durable (mailbox files, big messages) is put in
        place right after the flush, here, and goes round once more: the next flush
        makes its names durable together with the data of the stores that came since.
        """
        for job in batch:
            if job.on_disk is _OnDisk.NOTHING:
                try:
                    self._write_tmp(job.plan, job.message, sync=False)
                    job.on_disk = _OnDisk.WRITTEN
                except OSError as exc:
                    job.error = as_spool_error(exc)
        try:
            for target in self._sync_targets:
                sync_file_system(target)
        except OSError as exc:
            self._fail_all(batch, as_spool_error(exc))
        done: list[_PendingStore] = []
        again: list[_PendingStore] = []
        for job in batch:
            if job.error is not None or job.on_disk is not _OnDisk.WRITTEN:
                done.append(job)
                continue
            try:
                self._place(job.plan)
                job.on_disk = _OnDisk.PLACED
                again.append(job)
            except OSError as exc:
                self._undo(job.plan)
                job.error = as_spool_error(exc)
                done.append(job)
        if again:
            self._submit(again)
        return done

    def _fail_all(self, jobs: list[_PendingStore], error: SpoolError) -> None:
        """Undo every store of *jobs* not failed already and fail it with *error*."""
        for job in jobs:
            if job.error is None:
                self._undo(job.plan)
                job.error = error

    def _advance(self, batch: list[_PendingStore]) -> None:
        """On the loop, after the thread's turn: settle every store of *batch*."""
        for job in batch:
            self._finish(job, job.error)

    # -- the writer thread (no syncfs, or the benchmark's batch-fsync) ---------------

    def _commit_batch(self, batch: list[_PendingStore]) -> list[_PendingStore]:
        """Write and fsync every store's tmp files, place them, sync each directory once."""
        live: list[_PendingStore] = []
        for job in batch:
            try:
                self._write_tmp(job.plan, job.message)
                live.append(job)
            except OSError as exc:
                job.error = as_spool_error(exc)
        dirs: set[Path] = set()
        for job in live:
            try:
                dirs.update(self._place(job.plan))
            except OSError as exc:
                self._undo(job.plan)
                job.error = as_spool_error(exc)
        try:
            for directory in sorted(dirs):
                fsync_dir(directory)
        except OSError as exc:
            self._fail_all(live, as_spool_error(exc))
        for job in live:
            job.on_disk = _OnDisk.PLACED
        return batch

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
                self.files.forget_made_ahead()
            if self.mailbox_tmp_dir in missing:
                self.mailbox_files.forget_made_ahead()
            if self.spare_dir in missing:
                self.files.forget_spares()
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
        """Write every output of *plan* into a tmp file its folder's recycler gives."""
        plan.tmp_files.clear()
        try:
            for output in plan.outputs:
                # (in batch mode the event loop writes every message small enough to
                # take a recycled file for: take() runs on one thread at a time)
                size = len(output.head) + message.size
                while True:
                    if message.tail is None:
                        target = output.files.take(size, plan.queue_id)
                    else:
                        target = TmpFile(output.files.tmp_path(plan.queue_id))
                    output.tmp = target.path
                    try:
                        write_synced(
                            target.path,
                            (output.head, message.data),
                            sync=sync,
                            reuse=target.reuse is Reuse.SPARE,
                            empty=target.reuse is Reuse.EMPTY,
                            tail=message.tail,
                        )
                    except FileNotFoundError:
                        if target.reuse is not Reuse.SPARE:
                            raise
                        continue  # (a spare removed meanwhile: take another)
                    finally:
                        plan.tmp_files.append(target.path)
                    break
        except BaseException:
            self._undo(plan)
            raise

    def _place(self, plan: _Plan) -> set[Path]:
        """Move the tmp files into place; return the directories to fsync."""
        dirs: set[Path] = set()
        for output in plan.outputs:
            if isinstance(output.final, MailboxDelivery):
                placed: str | Path
                placed, made = output.final.place(output.tmp)
                dirs.update(made)
                dirs.add(output.final.directory)
            else:
                placed = output.final
                try:
                    os.rename(output.tmp, placed)
                except FileNotFoundError:
                    if not self.remake_directories():  # (queue/ was deleted under it)
                        raise
                    os.rename(output.tmp, placed)
                dirs.add(self.queue_dir)
            plan.placed.append(placed)
        return dirs

    def _undo(self, plan: _Plan) -> None:
        for path in (*plan.placed, *plan.tmp_files):
            unlink_quietly(path)
        plan.placed.clear()

    # -- reading (for the delivery engine and the queue CLI) -------------------------

    def queue_path(self, queue_id: str) -> Path:
        """Where the queue file of *queue_id* lives."""
        return self.queue_dir / f"{queue_id}{QUEUE_SUFFIX}"

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
        return sorted(ids_in(self.queue_dir))


def _open_folder(directory: Path) -> Path | int:
    """A descriptor open on *directory*, or *directory* itself if it cannot be opened."""
    try:
        return os.open(directory, DIR_FLAGS)
    except OSError:
        return directory
