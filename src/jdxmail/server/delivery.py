"""The delivery process as a component of the server (``serve --delivery process``).

One Python process runs on one core at a time. Taking mail in and relaying it both
cost CPU per message, so ``serve`` runs the delivery engine in a child process
(:mod:`jdxmail.queue.deliverer`) and keeps the event loop of the server for its
clients. The two share nothing but the spool directory: the server stores, the
delivery process finds the new file through inotify and claims it with ``flock``.

Started before the listeners (a child that cannot start is one clear error); when
the child ends while the server runs, the server stops too rather than take mail
nobody relays; on stop it gets SIGTERM and ``grace`` seconds to finish. A reload of
the server (SIGHUP) is passed on to it as a SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from jdxmail.eventloop import running_loop_choice
from jdxmail.process import read_report
from jdxmail.server.errors import ServerError

if TYPE_CHECKING:
    from jdxmail.settings.model import Settings

__all__ = ["DeliveryProcess"]

logger = logging.getLogger("jdxmail.queue")

#: seconds the child may take to open the spool and start its engine
_START_TIMEOUT = 60.0
#: 50 ms steps a server has to begin its own stop after the child ended
_STOP_WAIT_STEPS = 20


class DeliveryProcess:
    """Runs ``python -m jdxmail.queue.deliverer`` for the server's config and spool."""

    def __init__(
        self,
        config: Path,
        *,
        grace: float,
        on_exit: Callable[[], None],
        server_stopping: Callable[[], bool] = lambda: False,
        config_text: str | None = None,
    ) -> None:
        """*config* is the file the child reads; *grace* what its deliveries in progress
        get on stop; *on_exit* is called if it ends while the server runs (and
        *server_stopping* does not become true within a second). With *config_text*
        the child uses that text (as the server read it) instead of reading *config*
        again; *config* still names the file (format, relative paths)."""
        self.config = config
        self.config_text = config_text
        self.grace = grace
        self._on_exit = on_exit
        self._server_stopping = server_stopping
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start the child and wait until its engine runs; ServerError if it cannot."""
        read_fd, write_fd = os.pipe()
        level = logging.getLogger("jdxmail").getEffectiveLevel()
        text = self.config_text
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "jdxmail.queue.deliverer",
                "--config",
                str(self.config),
                *(["--config-on-stdin"] if text is not None else []),
                "--report-fd",
                str(write_fd),
                "--parent-pid",
                str(os.getpid()),
                "--log-level",
                str(level),
                "--grace",
                str(self.grace),
                "--loop",  # the child runs the loop its server runs
                running_loop_choice().value,
                stdin=subprocess.DEVNULL if text is None else subprocess.PIPE,
                pass_fds=(write_fd,),
            )
        except OSError as exc:
            os.close(read_fd)
            raise ServerError(f"cannot start the delivery process: {exc}") from None
        finally:
            os.close(write_fd)
        stdin = self._proc.stdin
        if text is not None and stdin is not None:
            with contextlib.suppress(ConnectionError):  # it ended: its answer says why
                stdin.write(text.encode("utf-8"))
                await stdin.drain()
            stdin.close()
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                answer = await asyncio.to_thread(read_report, read_fd)
        except TimeoutError:
            await self._end(0.0)
            raise ServerError(
                f"the delivery process did not start within {_START_TIMEOUT:.0f} s",
                "see the log; `jdxmail doctor` checks the spool and the relays",
            ) from None
        if not answer.get("ok"):
            await self._end(5.0)
            raise ServerError(
                str(answer.get("message") or "the delivery process could not start"),
                str(answer.get("fix") or "see the log"),
            )
        logger.info("delivery process started (PID %d)", self._proc.pid)
        self._watch = asyncio.create_task(self._watch_exit(), name="jdxmail-delivery-process")

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        # A SIGTERM to the whole process group (systemd's default on stop) reaches
        # the child and the server at once; the child may end first.
        for _ in range(_STOP_WAIT_STEPS):
            if self._stopping or self._server_stopping():
                return
            await asyncio.sleep(0.05)
        if not self._stopping:
            logger.error(
                "the delivery process (PID %d) ended unexpectedly (exit status %s); "
                "stopping the server: the mail it has accepted stays queued",
                self._proc.pid,
                code,
            )
            self._on_exit()

    def reload(self, settings: Settings) -> None:
        """Tell the child to read the config again (SIGHUP): it applies relay and
        Delivery changes to its next attempts."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGHUP)

    async def stop(self, grace: float) -> None:
        """SIGTERM the child; kill it if it is not done within *grace* + 5 seconds."""
        self._stopping = True
        await self._end(grace + 5.0)
        if self._proc is not None:
            logger.info(
                "delivery process (PID %d) stopped (exit status %s)",
                self._proc.pid,
                self._proc.returncode,
            )
        if self._watch is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def _end(self, patience: float) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(patience):
                await proc.wait()
        except TimeoutError:
            logger.warning("the delivery process did not stop in time; killing it")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
