"""Run ``jdxmail`` with timing probes, to see where the wall time of a message goes.

Usage (done by ``bench/run.py --profile``)::

    JDXMAIL_PROBE_OUT=probe.json python bench/serve_probe.py serve --config … --port 0

It wraps a few methods of the server and the delivery engine with timers (nothing in
src/ changes): the spool's flushes and the event loop's share of a commit (with its
batch size), ``Spool.store`` as a session waits for it, the DATA command from ``354``
to the final reply, one delivery, the upstream SMTP exchange, and how late the event
loop runs a 5 ms timer (its lag: high when the loop is saturated). Only this process
is probed: the delivery figures need ``serve --delivery inline``. SIGUSR1 clears the
figures (sent just before the measured run); at exit they are written as JSON to
``$JDXMAIL_PROBE_OUT``.
A name that no longer exists is skipped and listed under ``missing``.
Experiments: ``JDXMAIL_PROBE_SWITCHINTERVAL=0.0005`` sets ``sys.setswitchinterval`` (GIL
hand-over between the event loop and the worker threads); ``JDXMAIL_PROBE_CONNECTIONS=16``
gives the delivery engine that many sessions per relay instead of its default.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

TIMES: defaultdict[str, list[float]] = defaultdict(list)
SIZES: defaultdict[str, list[int]] = defaultdict(list)
MISSING: list[str] = []
_TASKS: set[asyncio.Task[None]] = set()


def _wrap_sync(owner: Any, name: str, key: str, size_arg: int | None = None) -> None:
    original = getattr(owner, name, None)
    if original is None:
        MISSING.append(f"{owner.__name__}.{name}")
        return

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[key].append(time.perf_counter() - start)
            if size_arg is not None and len(args) > size_arg:
                SIZES[key].append(len(args[size_arg]))

    setattr(owner, name, timed)


def _wrap_async(owner: Any, name: str, key: str) -> None:
    original = getattr(owner, name, None)
    if original is None:
        MISSING.append(f"{owner.__name__}.{name}")
        return

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            TIMES[key].append(time.perf_counter() - start)

    setattr(owner, name, timed)


async def _loop_lag() -> None:
    while True:
        start = time.perf_counter()
        await asyncio.sleep(0.005)
        TIMES["event loop lag (5 ms timer)"].append(time.perf_counter() - start - 0.005)


def _start_lag_monitor(owner: Any) -> None:
    original: Callable[..., Any] | None = getattr(owner, "start", None)
    if original is None:
        MISSING.append(f"{owner.__name__}.start")
        return

    @functools.wraps(original)
    async def start(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        task = asyncio.get_running_loop().create_task(_loop_lag())
        _TASKS.add(task)
        return result

    owner.start = start


def install() -> None:
    """Wrap the probed methods (missing ones are listed, not fatal)."""
    from jdxmail.queue import message_delivery, relay, spool, worker  # noqa: PLC0415
    from jdxmail.server import app, smtp  # noqa: PLC0415

    _wrap_sync(spool, "sync_file_system", "spool flush: one syncfs (sync thread)")
    _wrap_sync(spool.Spool, "_advance", "spool: place/finish a flushed batch (loop)", size_arg=1)
    _wrap_async(spool.Spool, "store", "Spool.store as awaited by a session")
    _wrap_async(smtp.SmtpSession, "_cmd_DATA", "DATA: 354 until the final reply")
    _wrap_async(
        message_delivery.MessageDelivery,
        "_claim_and_attempt",
        "one delivery (load, relay, finish)",
    )
    _wrap_sync(message_delivery, "claim_message", "delivery: load + claim (thread)")
    _wrap_async(relay.RelayConnection, "send", "delivery: upstream SMTP exchange")
    _start_lag_monitor(app.SmtpServerApp)
    connections = os.environ.get("JDXMAIL_PROBE_CONNECTIONS")
    if connections:  # an experiment: more parallel upstream sessions per relay
        options = worker.DeliveryOptions

        def with_connections(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("connections_per_relay", int(connections))
            return options(*args, **kwargs)

        setattr(worker, "DeliveryOptions", with_connections)  # noqa: B010


def _summary() -> dict[str, Any]:
    out: dict[str, Any] = {"missing": MISSING}
    for key, values in TIMES.items():
        if not values:
            continue
        ordered = sorted(values)
        entry: dict[str, Any] = {
            "count": len(values),
            "total_s": round(sum(values), 3),
            "mean_ms": round(1000 * statistics.fmean(values), 3),
            "p50_ms": round(1000 * ordered[len(ordered) // 2], 3),
            "p90_ms": round(1000 * ordered[int(len(ordered) * 0.9)], 3),
            "p99_ms": round(1000 * ordered[int(len(ordered) * 0.99)], 3),
            "max_ms": round(1000 * ordered[-1], 3),
        }
        if SIZES.get(key):
            entry["batch_mean"] = round(statistics.fmean(SIZES[key]), 2)
            entry["batch_max"] = max(SIZES[key])
        out[key] = entry
    return out


def _dump() -> None:
    path = os.environ.get("JDXMAIL_PROBE_OUT")
    if path:
        with open(path, "w") as f:
            json.dump(_summary(), f, indent=2)


def _reset(signum: int, frame: object) -> None:
    TIMES.clear()
    SIZES.clear()


def main() -> int:
    """Install the probes and run the jdxmail CLI with this process's arguments."""
    install()
    switch = os.environ.get("JDXMAIL_PROBE_SWITCHINTERVAL")
    if switch:  # an experiment: how much of the loop lag is GIL hand-over between threads
        sys.setswitchinterval(float(switch))
    atexit.register(_dump)
    signal.signal(signal.SIGUSR1, _reset)
    from jdxmail.cli import main as jdxmail_main  # noqa: PLC0415

    sys.argv[0] = "jdxmail"
    jdxmail_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
