"""Listening sockets for ``serve --workers N``: one per process on the same port.

Every worker process gets its own socket bound with ``SO_REUSEPORT`` to the same
address and port, so the kernel spreads new connections over the processes (by a
hash of the client's address and port) and no process wakes for another's clients.
The sockets are bound before the workers are forked, so a busy port or a missing
privilege is reported once, by the parent, and ``--port 0`` gives every worker the
same free port.

:func:`run_workers` forks the workers one after the other. Each opens the spool
(which removes unfinished writes a crash left), starts its delivery engine and
reports back; only when every worker has reported do they all start accepting. With
relays, the first worker starts the delivery process (``--delivery process``, see
:mod:`jdxmail.server.delivery`) which relays what every worker stores; with
``--delivery inline`` each worker runs a delivery engine, and the engines share the
spool safely: each claims a message with an exclusive ``flock`` first.
SIGTERM, SIGINT and SIGHUP sent to the parent are passed on to every worker; when
one worker ends on its own, the others are stopped too; when the parent is killed,
Linux sends every worker SIGTERM (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from jdxmail.eventloop import LoopChoice, run
from jdxmail.process import end_with_parent, read_report, send_report, settle_heap
from jdxmail.server.errors import ServerError, bind_error

if TYPE_CHECKING:
    from jdxmail.server.app import SmtpServerApp

__all__ = ["BACKLOG", "AppFactory", "bind_shared", "run_workers"]

#: builds one worker's app from its sockets, TLS sockets, before-listen hook and index
AppFactory = Callable[
    [Sequence[socket.socket], Sequence[socket.socket], Callable[[], Awaitable[None]], int],
    "SmtpServerApp",
]
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

#: listen() backlog of each worker's socket (asyncio's default for create_server)
BACKLOG = 100


def bind_shared(host: str, port: int, count: int, key: str) -> list[list[socket.socket]]:
    """Bind *count* listening sockets per address of *host* on one port.

    Returns one list of sockets per worker. Raises BindError (with its fix) when
    the address cannot be bound; nothing stays open then.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, object]] = set()
    per_worker: list[list[socket.socket]] = [[] for _ in range(count)]
    chosen = port
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            for worker in per_worker:
                sock = socket.socket(family, kind, proto)
                worker.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], chosen, *address[2:]))
                chosen = int(sock.getsockname()[1])
                sock.listen(BACKLOG)
                sock.setblocking(False)
    except OSError as exc:
        for worker in per_worker:
            for sock in worker:
                sock.close()
        raise bind_error(exc, host, chosen, key) from None
    return per_worker


def run_workers(
    count: int,
    make_app: AppFactory,
    *,
    sockets: list[list[socket.socket]],
    tls_sockets: list[list[socket.socket]],
    started: Callable[[list[str]], None],
    report: Callable[[SmtpServerApp], list[str]],
    loop: LoopChoice = LoopChoice.ASYNCIO,
) -> int:
    """Run *count* worker processes until they stop; return 0 when all ended cleanly.

    Each worker runs its server on a new event loop of *loop* (``serve --loop``).

    *report* runs in the first worker once it is ready and returns lines for the
    parent; *started* gets those lines once every worker is ready. Raises
    ServerError (the first worker's own, with its fix) when a worker cannot start;
    the workers already started are stopped first. Closes the given sockets.
    """
    children: dict[int, int] = {}  # pid -> write end of its "go" pipe
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        lines: list[str] = []
        parent = os.getpid()
        for index in range(count):
            report_r, report_w = os.pipe()
            go_r, go_w = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                os.close(report_r)
                os.close(go_w)
                for fd in children.values():
                    os.close(fd)
                _worker_main(
                    make_app,
                    parent=parent,
                    sockets=sockets,
                    tls_sockets=tls_sockets,
                    index=index,
                    report_fd=report_w,
                    go_fd=go_r,
                    report=report if index == 0 else None,
                    loop=loop,
                )
            os.close(report_w)
            os.close(go_r)
            children[pid] = go_w
            answer = read_report(report_r)
            if stopping:
                break
            if not answer.get("ok"):
                _stop_all(children)
                raise ServerError(
                    str(answer.get("message") or f"server worker {index + 1} could not start"),
                    str(answer.get("fix") or ""),
                    answer.get("row"),
                )
            if index == 0:
                lines = [str(line) for line in answer.get("lines", [])]
        for group in (*sockets, *tls_sockets):
            for sock in group:
                sock.close()
        for fd in children.values():
            with contextlib.suppress(OSError):
                os.write(fd, b"g")
            os.close(fd)
        if not stopping:
            started(lines)
        return _wait_all(children, lambda: stopping, forward)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for group in (*sockets, *tls_sockets):
            for sock in group:
                sock.close()


def _stop_all(children: dict[int, int]) -> None:
    for pid, fd in children.items():
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _wait_all(
    children: dict[int, int],
    stopping: Callable[[], bool],
    forward: Callable[[int, object], None],
) -> int:
    code = 0
    alive = set(children)
    while alive:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in alive:
            continue
        alive.discard(pid)
        children.pop(pid, None)
        if os.waitstatus_to_exitcode(status) != 0:
            code = 1
        if not stopping():
            # A worker ended by itself: serve as a whole stops rather than limp on.
            logging.getLogger("jdxmail.smtp").error(
                "server worker (PID %d) ended unexpectedly; stopping the others", pid
            )
            code = 1
            forward(signal.SIGTERM, None)
    return code


def _worker_main(
    make_app: AppFactory,
    *,
    parent: int,
    sockets: list[list[socket.socket]],
    tls_sockets: list[list[socket.socket]],
    index: int,
    report_fd: int,
    go_fd: int,
    report: Callable[[SmtpServerApp], list[str]] | None,
    loop: LoopChoice,
) -> None:
    """The body of one forked worker; ends the process with its exit code."""
    code = 1
    try:
        for sig in _FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        if not end_with_parent(parent):
            os._exit(1)
        for group in (sockets, tls_sockets):
            for other, own in enumerate(group):
                if other != index:
                    for sock in own:
                        sock.close()
        code = run(
            _worker(make_app, index, sockets[index], tls_sockets[index], report_fd, go_fd, report),
            loop,
        )
    except BaseException:  # a worker must never return into the parent's code
        logging.getLogger("jdxmail.smtp").exception("server worker failed")
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


async def _worker(
    make_app: AppFactory,
    index: int,
    sockets: Sequence[socket.socket],
    tls_sockets: Sequence[socket.socket],
    report_fd: int,
    go_fd: int,
    report: Callable[[SmtpServerApp], list[str]] | None,
) -> int:
    reported = False

    def send(answer: dict[str, Any]) -> None:
        nonlocal reported
        if not reported:
            reported = True
            send_report(report_fd, answer)

    async def before_listen() -> None:
        send({"ok": True, "lines": report(app) if report is not None else []})
        # The parent says go once every worker is ready (or closes the pipe on stop).
        await asyncio.to_thread(os.read, go_fd, 1)
        os.close(go_fd)

    app = make_app(sockets, tls_sockets, before_listen, index)
    app.install_signal_handlers()
    try:
        await app.start()
    except ServerError as exc:
        send({"ok": False, "message": str(exc), "fix": exc.fix, "row": exc.row})
        return 1
    settle_heap()
    await app.serve()
    # Stopped, as serve's own process: a second SIGTERM (forwarded by the parent) or
    # Ctrl-C during the loop's teardown must not turn a clean stop into exit 143.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    return 0 if app.failure is None else 1
