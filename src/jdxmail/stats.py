"""Counters of what the server and the delivery engine did, shared through the spool.

Each process counts in memory (:class:`Counters`: plain integer attributes, one
``+= 1`` on the SMTP path) and a :class:`StatsRecorder` writes them about once a
second, when they changed, to ``<spool>/stats/<role>.<pid>.json`` together with what
the process knows besides (its open sessions, the health of each relay it sends to).
Whoever wants the figures of the whole server — the web console, later the
Prometheus endpoint — reads every file there with :func:`collect`: the SMTP workers
of ``serve --workers N`` and the delivery process each have their own file, so the
sum covers all of them, and a process that ended today still counts for today.

Figures on disk lag behind by up to a second; a reader in the same process passes
its own live snapshot to :func:`collect` instead of its (older) file.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

from jdxmail.process import process_alive
from jdxmail.queue.state import StateError, read_json, write_json_atomic

__all__ = [
    "COMMIT_BUCKETS",
    "LATENCY_BUCKETS",
    "STATS_DIR",
    "Counters",
    "ProcessStats",
    "RelayHealth",
    "StatsRecorder",
    "Totals",
    "collect",
    "parse_series_key",
    "series_key",
]

logger = logging.getLogger("jdxmail.queue")

#: the folder under the spool holding one file per process
STATS_DIR = "stats"
#: seconds between two writes of a process's file (only when something changed)
WRITE_EVERY = 1.0
#: upper bounds (seconds) of the spool commit histogram: a message made durable
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: upper bounds (seconds) of the delivery latency histogram: accepted -> relayed
LATENCY_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)


@dataclass(slots=True)
class Counters:
    """What one process did since it started; monotonic, like Prometheus counters.

    The SMTP side counts ``connections`` (sessions admitted), ``accepted`` (messages
    stored: queued or in a local mailbox), ``rejected`` (a sender, recipient or
    message refused for policy or limits: relay denied, too big, too many
    recipients...) and ``auth_failures``; the delivery engine counts ``relayed``
    (messages every recipient of which a relay accepted), ``deferred`` (attempts
    that left recipients waiting for a retry) and ``bounced`` (messages given up on,
    kept in ``failed/``).
    """

    connections: int = 0
    accepted: int = 0
    rejected: int = 0
    auth_failures: int = 0
    relayed: int = 0
    deferred: int = 0
    bounced: int = 0
    #: for /metrics (docs/operations.md): connections turned away by MaxConnections
    #: and by MaxConnectionsPerClient, sessions with TLS from the first byte and
    #: upgraded by STARTTLS, successful logins, bytes of message data accepted
    refused_max_connections: int = 0
    refused_per_client: int = 0
    tls_implicit: int = 0
    tls_starttls: int = 0
    auth_successes: int = 0
    received_bytes: int = 0
    #: ``rejected`` by reason (each rejection counts in one of these too)
    rejected_size: int = 0
    rejected_recipients: int = 0
    rejected_policy: int = 0
    rejected_smuggling: int = 0
    rejected_throttled: int = 0
    rejected_content: int = 0
    rejected_storage: int = 0
    #: labelled counts and histogram buckets (see count() and observe()), by series key
    series: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> dict[str, int]:
        """The current values by name (the plain counters; ``series`` apart)."""
        return {name: getattr(self, name) for name in COUNTER_NAMES}

    def reject(self, reason: str) -> None:
        """A sender, recipient, message or client refused for *reason* (``size``,
        ``recipients``, ``policy``, ``smuggling``, ``throttled``, ``content``,
        ``storage``)."""
        self.rejected += 1
        name = f"rejected_{reason}"
        setattr(self, name, getattr(self, name) + 1)

    def count(self, metric: str, labels: tuple[tuple[str, str], ...], amount: float = 1) -> None:
        """Add *amount* to the labelled series *metric* {*labels*}."""
        key = series_key(metric, labels)
        self.series[key] = self.series.get(key, 0) + amount

    def observe(self, metric: str, value: float, buckets: tuple[float, ...]) -> None:
        """Count *value* in histogram *metric*: its bucket (upper bounds *buckets*,
        not cumulative; past the last: ``+Inf``), the sum and the count."""
        keys = _histogram_keys(metric, buckets)
        series = self.series
        bucket = keys[bisect.bisect_left(buckets, value)]
        series[bucket] = series.get(bucket, 0.0) + 1.0
        series[keys[-2]] = series.get(keys[-2], 0.0) + value
        series[keys[-1]] = series.get(keys[-1], 0.0) + 1.0


@functools.cache
def _histogram_keys(metric: str, buckets: tuple[float, ...]) -> tuple[str, ...]:
    """The series keys of histogram *metric*: each bucket's, ``+Inf``'s, sum, count
    (made once: observe() runs once per message)."""
    bounds = [repr(float(b)) for b in buckets] + ["+Inf"]
    return (
        *(f'{metric}_bucket{{le="{bound}"}}' for bound in bounds),
        f"{metric}_sum",
        f"{metric}_count",
    )


@functools.lru_cache(maxsize=4096)  # (relays by outcomes: a handful, made per message)
def series_key(metric: str, labels: tuple[tuple[str, str], ...]) -> str:
    """``metric{name="value",...}`` with the values JSON-quoted (a relay's name may hold
    anything); parsed back by parse_series_key."""
    if not labels:
        return metric
    inner = ",".join(f"{name}={json.dumps(value)}" for name, value in labels)
    return f"{metric}{{{inner}}}"


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """The metric name and labels of a series_key (or an observe() key)."""
    metric, brace, rest = key.partition("{")
    if not brace:
        return key, {}
    labels: dict[str, str] = {}
    decoder = json.JSONDecoder()
    position, body = 0, rest[:-1]
    while position < len(body):
        name, _, _ = body[position:].partition("=")
        position += len(name) + 1
        value, end = decoder.raw_decode(body, position)
        labels[name] = str(value)
        position = end + 1  # past the comma
    return metric, labels


#: the counter names, in the order the console shows them
COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Counters) if f.name != "series")


@dataclass(slots=True)
class RelayHealth:
    """What a delivery engine knows about one relay: its breaker and the last outcome.

    ``failures`` counts failures in a row that trip the breaker (connection, TLS,
    login); ``open_until`` is when the breaker lets the relay be tried again (0:
    closed). ``last_reply`` is the last failure's text, also of a relay that
    answered but refused the message (a 4xx/5xx to MAIL or DATA): "failing" is
    shown while that was the relay's last outcome.
    """

    name: str
    failures: int = 0
    open_until: float = 0.0
    last_reply: str = ""
    last_failure_at: float = 0.0
    last_success_at: float = 0.0

    @property
    def last_event(self) -> float:
        """When this engine last tried the relay."""
        return max(self.last_failure_at, self.last_success_at)

    def state(self, now: float) -> str:
        """``resting`` (breaker open), ``failing``, ``ok`` or ``unused`` (not tried)."""
        if self.open_until > now:
            return "resting"
        if self.last_failure_at and self.last_failure_at >= self.last_success_at:
            return "failing"
        if self.last_success_at:
            return "ok"
        return "unused"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> RelayHealth | None:
        """Parse what to_json() wrote; None when it is not that."""
        try:
            return cls(
                name=str(data["name"]),
                failures=int(data.get("failures", 0)),
                open_until=float(data.get("open_until", 0.0)),
                last_reply=str(data.get("last_reply", "")),
                last_failure_at=float(data.get("last_failure_at", 0.0)),
                last_success_at=float(data.get("last_success_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def _today(now: float | None = None) -> str:
    """The local date, ``YYYY-MM-DD`` (days of the log files: local midnight)."""
    return date.fromtimestamp(time.time() if now is None else now).isoformat()


@dataclass(slots=True)
class ProcessStats:
    """One process's figures as its stats file holds them."""

    pid: int
    role: str
    started: float
    updated: float
    day: str
    today: dict[str, int]
    total: dict[str, int]
    sessions: int = 0
    relays: list[RelayHealth] = field(default_factory=list)
    #: the labelled series and histograms since the process started (Counters.series)
    series: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what the file holds)."""
        data = asdict(self)
        data["relays"] = [r.to_json() for r in self.relays]
        return data

    @classmethod
    def from_json(cls, data: Any) -> ProcessStats | None:
        """Parse a stats file's content; None when it is not one."""
        try:
            relays = [RelayHealth.from_json(r) for r in data.get("relays", [])]
            return cls(
                pid=int(data["pid"]),
                role=str(data["role"]),
                started=float(data["started"]),
                updated=float(data["updated"]),
                day=str(data["day"]),
                today={str(k): int(v) for k, v in dict(data["today"]).items()},
                total={str(k): int(v) for k, v in dict(data["total"]).items()},
                sessions=int(data.get("sessions", 0)),
                relays=[r for r in relays if r is not None],
                series={str(k): float(v) for k, v in dict(data.get("series", {})).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


class StatsRecorder:
    """Writes a process's counters to ``<spool>/stats/`` about once a second.

    A component of ``serve`` (``start()`` / ``stop(grace)``) and of the delivery
    process. *sessions* and *relays* are asked for at each write. Files of earlier
    days whose process has ended are removed at start.
    """

    def __init__(
        self,
        spool_dir: Path,
        role: str,
        counters: Counters,
        *,
        sessions: Callable[[], int] = lambda: 0,
        relays: Callable[[], Iterable[RelayHealth]] = tuple,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(spool_dir) / STATS_DIR
        self.role = role
        self.counters = counters
        self._sessions = sessions
        #: the relays' health at each write (set by whoever runs a delivery engine)
        self.relays = relays
        self.clock = clock
        self.pid = os.getpid()
        self.started = clock()
        self.path = self.directory / f"{role}.{self.pid}.json"
        self._day = _today(self.started)
        self._base = dict.fromkeys(COUNTER_NAMES, 0)
        self._written: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def snapshot(self) -> ProcessStats:
        """The figures now; a new local day starts today's counts at zero."""
        now = self.clock()
        total = self.counters.snapshot()
        day = _today(now)
        if day != self._day:
            self._day, self._base = day, dict(total)
        today = {name: total[name] - self._base.get(name, 0) for name in total}
        return ProcessStats(
            pid=self.pid,
            role=self.role,
            started=self.started,
            updated=now,
            day=day,
            today=today,
            total=total,
            sessions=self._sessions(),
            relays=[RelayHealth(**asdict(r)) for r in self.relays()],
            series=dict(self.counters.series),
        )

    async def start(self) -> None:
        """Make the folder, clear old files, write the first file, start writing."""
        await asyncio.to_thread(self._prepare)
        await self.write()
        self._task = asyncio.create_task(self._run(), name=f"jdxmail-stats-{self.role}")

    async def stop(self, grace: float = 0.0) -> None:
        """Stop writing, after writing the last figures."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.write()

    async def write(self) -> None:
        """Write the figures now if they changed since the last write."""
        stats = self.snapshot().to_json()
        compare = {k: v for k, v in stats.items() if k != "updated"}
        if compare == self._written:
            return
        try:
            await asyncio.to_thread(write_json_atomic, self.path, stats)
        except OSError as exc:
            logger.debug("could not write %s: %s", self.path, exc)
            return
        self._written = compare

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(WRITE_EVERY)
            await self.write()

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        today = _today(self.clock())
        for path in self.directory.glob("*.json"):
            stats = _read(path)
            if stats is None or (stats.day != today and not process_alive(stats.pid)):
                with contextlib.suppress(OSError):
                    path.unlink()


def _read(path: Path) -> ProcessStats | None:
    try:
        return ProcessStats.from_json(read_json(path))
    except (StateError, OSError):
        return None


@dataclass(slots=True)
class Totals:
    """The figures of every process using a spool, for today (local time)."""

    day: str
    today: dict[str, int]
    #: open sessions of the processes that still run
    sessions: int
    #: per relay name, the most recent health any engine recorded
    relays: dict[str, RelayHealth]
    #: the processes counted: role, pid, running, started, updated
    processes: list[dict[str, Any]]
    #: the counts since start of the processes still running (monotonic per process,
    #: like Prometheus counters: a restart starts them over)
    total: dict[str, int] = field(default_factory=dict)
    #: the labelled series and histogram buckets of the processes still running, summed
    series: dict[str, float] = field(default_factory=dict)


def collect(
    spool_dir: Path, *, live: Iterable[ProcessStats] = (), now: float | None = None
) -> Totals:
    """Sum today's figures of every process that wrote to *spool_dir*'s stats folder.

    *live* snapshots (of this process) replace that process's file. Blocking file
    reads: call it in a thread.
    """
    now = time.time() if now is None else now
    day = _today(now)
    by_file: dict[tuple[str, int], ProcessStats] = {}
    directory = Path(spool_dir) / STATS_DIR
    with contextlib.suppress(OSError):
        for path in sorted(directory.glob("*.json")):
            stats = _read(path)
            if stats is not None:
                by_file[(stats.role, stats.pid)] = stats
    for stats in live:
        by_file[(stats.role, stats.pid)] = stats
    today = dict.fromkeys(COUNTER_NAMES, 0)
    total = dict.fromkeys(COUNTER_NAMES, 0)
    sessions = 0
    series: dict[str, float] = {}
    relays: dict[str, RelayHealth] = {}
    processes: list[dict[str, Any]] = []
    own = os.getpid()
    for stats in by_file.values():
        running = stats.pid == own or process_alive(stats.pid)
        if stats.day == day:
            for name, value in stats.today.items():
                if name in today:
                    today[name] += value
        elif not running:
            continue
        if running:
            sessions += stats.sessions
            for name, value in stats.total.items():
                if name in total:
                    total[name] += value
            for key, amount in stats.series.items():
                series[key] = series.get(key, 0.0) + amount
        for health in stats.relays:
            known = relays.get(health.name)
            if known is None or health.last_event > known.last_event:
                relays[health.name] = health
        processes.append(
            {
                "role": stats.role,
                "pid": stats.pid,
                "running": running,
                "started": stats.started,
                "updated": stats.updated,
                # it runs a delivery engine (the delivery process, or --delivery inline)
                "relaying": bool(stats.relays),
            }
        )
    return Totals(
        day=day,
        today=today,
        sessions=sessions,
        relays=relays,
        processes=processes,
        total=total,
        series=series,
    )
