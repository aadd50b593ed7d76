"""Side-by-side SMTP benchmark: jdxmail ``serve`` against the servers a user would pick.

Usage::

    python bench/run.py            # full run (~16 min): 9 workloads, 5 rounds of ~3 s
    python bench/run.py --quick    # ~2 min: 7 workloads, 3 short rounds
    python bench/run.py --smoke    # seconds: every path once with tiny counts (CI)
    python bench/run.py --plot bench.png --json bench.json   # also a picture and the samples
    python bench/run.py --plot-from bench.json --plot bench.png   # redraw the picture
    python bench/run.py --profile prof/   # py-spy profiles of jdxmail under load

It installs nothing. It looks for Postfix's ``smtp-source``/``smtp-sink`` and
``postfix`` (``apt-get install postfix``) and says what is missing; a missing peer is
reported as unavailable, and without ``smtp-source`` a Python client stands in (its
figures are client-bound). Everything runs on 127.0.0.1, every run is bounded in count
and time, and the servers are measured interleaved (A B C A B C …) so that drift of the
machine hits all of them alike; each figure is the median of the rounds.

Rows: ``smtp-sink`` (C, stores nothing: the machine's limit), aiosmtpd's ``Sink``
handler (stores nothing: the Python library ceiling), Postfix as a smarthost relay and
jdxmail ``serve`` (both fsync before 250) in several variants (the dev inbox, console
off, delivery held, ``--workers``, ``--loop``), each relay measured for ingest
(messages accepted per second) and end to end (until the upstream ``smtp-sink`` has
every message), with the CPU per message of all its processes. The targets table at
the end holds each goal of issues 6, 13 and 15 as a ratio of this run's figures.
docs/performance.md explains the figures and records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load
from peers import (
    AiosmtpdSink,
    JdxmailServe,
    Peer,
    PostfixRelay,
    SmtpSink,
    Unavailable,
    jdxmail_command,
    serve_supports,
)

BENCH_DIR = Path(__file__).resolve().parent
KB = 1024


@dataclass(frozen=True)
class Workload:
    """One client load shape: message size, parallel sessions, reuse, recipients."""

    key: str
    size: int
    sessions: int
    persistent: bool = True
    recipients: int = 1
    #: the recipient address (bob@localhost: jdxmail stores it in a local mailbox)
    to: str = load.RECIPIENT
    #: only these servers run it (None: every server without a list of its own)
    servers: tuple[str, ...] | None = None
    #: the jdxmail row the ratio columns compare with
    reference: str = "jdxmail"
    #: a fresh spool's first burst (its own phase, see run_fresh), not interleaved rounds
    fresh: bool = False

    @property
    def label(self) -> str:
        """Human description, e.g. ``1 KB, 20 sess, reuse``."""
        size = f"{self.size // KB} KB"
        reuse = "reuse" if self.persistent else "1/conn"
        rcpt = f", {self.recipients} rcpt" if self.recipients > 1 else ""
        kind = ", inbox" if self.reference == "jdxmail inbox" else ", fresh" if self.fresh else ""
        return f"{size}, {self.sessions} sess, {reuse}{rcpt}{kind}"


WORKLOADS = [
    Workload("1k-s20", 1 * KB, 20),
    Workload("100k-s20", 100 * KB, 20),
    Workload("1k-s1", 1 * KB, 1),
    Workload("100k-s1", 100 * KB, 1),
    Workload("1k-s20-conn", 1 * KB, 20, persistent=False),
    Workload("100k-s20-conn", 100 * KB, 20, persistent=False),
    Workload("1k-s20-r10", 1 * KB, 20, recipients=10),
    # the dev inbox (no relay, mail to bob@localhost stored in a mailbox) beside the Sink
    Workload(
        "1k-s20-inbox", 1 * KB, 20, to="bob@localhost",
        servers=("aiosmtpd Sink", "jdxmail inbox"), reference="jdxmail inbox",
    ),
    # a new spool directory's first burst ÷ the same server's rate once warmed
    Workload("1k-s20-fresh", 1 * KB, 20, servers=("jdxmail fresh",), fresh=True),
]  # fmt: skip
QUICK_WORKLOADS = [
    "1k-s20", "100k-s20", "1k-s1", "1k-s20-conn", "1k-s20-r10", "1k-s20-inbox", "1k-s20-fresh",
]  # fmt: skip
SMOKE_WORKLOADS = ["1k-s20", "100k-s20", "1k-s20-inbox", "1k-s20-fresh"]
PROFILE_WORKLOADS = ["1k-s20", "100k-s20"]


@dataclass(frozen=True)
class Mode:
    """How big a run is."""

    name: str
    rounds: int
    seconds: float
    workloads: list[str]
    idle_sessions: int
    big_message: int
    startup_reps: int
    #: messages in a fresh spool's first burst (and in the warmed burst it is compared with)
    fresh_count: int
    #: fixed message counts (no calibration) by size, for --smoke
    fixed_counts: dict[int, int] | None = None


MODES = {
    "full": Mode("full", 5, 3.0, [w.key for w in WORKLOADS], 1000, 25_000_000, 21, 4000),
    "quick": Mode("quick", 3, 0.6, QUICK_WORKLOADS, 1000, 25_000_000, 7, 1000),
    "smoke": Mode("smoke", 1, 0.2, SMOKE_WORKLOADS, 50, 1_000_000, 1, 40, {KB: 30, 100 * KB: 8}),
}


@dataclass
class Figure:
    """Rates measured for one server, workload and metric (ingest or end to end)."""

    workload: str
    server: str
    metric: str
    rates: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)
    loop_cores: list[float] = field(default_factory=list)
    client_cores: list[float] = field(default_factory=list)
    #: CPU milliseconds of all the server's processes per message (the figure's period)
    cpu_ms: list[float] = field(default_factory=list)
    #: the part of cpu_ms used by jdxmail's delivery process
    delivery_ms: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        """Median msgs/s over the rounds, None if nothing was measured."""
        return statistics.median(self.rates) if self.rates else None

    @property
    def cpu_per_message(self) -> float | None:
        """Median CPU milliseconds per message, all processes; None if not measured."""
        return statistics.median(self.cpu_ms) if self.cpu_ms else None

    @property
    def delivery_per_message(self) -> float | None:
        """Median CPU milliseconds per message of the delivery process alone."""
        return statistics.median(self.delivery_ms) if self.delivery_ms else None

    @property
    def spread(self) -> float | None:
        """Half the max-min range relative to the median (0.05 = ±5 %)."""
        if len(self.rates) < 2 or not self.median:
            return None
        return (max(self.rates) - min(self.rates)) / 2 / self.median


@dataclass
class Target:
    """One goal of the issue: a figure, the goal, and whether it was met."""

    name: str
    goal: str
    value: float | None
    #: None: a figure reported beside the targets, with no goal of its own
    limit: float | None
    higher_is_better: bool = True
    shown: str = ""
    note: str = ""

    @property
    def status(self) -> str:
        """``met``, ``MISSED``, ``not measured`` or ``info`` (no goal)."""
        if self.value is None:
            return "not measured"
        if self.limit is None:
            return "info"
        ok = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return "met" if ok else "MISSED"


@dataclass
class Run:
    """Everything one invocation measured, for the report and --json."""

    mode: str
    machine: dict[str, str]
    #: when the run started (UTC, ISO 8601)
    date: str
    client: str
    upstream: str
    rounds: int
    seconds: float
    notices: list[str] = field(default_factory=list)
    servers: dict[str, str] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    memory: list[dict[str, object]] = field(default_factory=list)
    startup: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    #: msgs/s projected for bigger machines from this run's CPU per message
    projection: list[dict[str, object]] = field(default_factory=list)
    #: /metrics scrapes made during the measured runs: {"ok": n, "failed": n, "error": …}
    scrapes: dict[str, object] = field(default_factory=dict)

    def figure(self, workload: str, server: str, metric: str) -> Figure:
        """The figure for this triple, created empty on first use."""
        for fig in self.figures:
            if (fig.workload, fig.server, fig.metric) == (workload, server, metric):
                return fig
        fig = Figure(workload, server, metric)
        self.figures.append(fig)
        return fig

    def median(self, workload: str, server: str, metric: str) -> float | None:
        """Median rate of a figure, None if absent or not measured."""
        found = self.find(workload, server, metric)
        return found.median if found else None

    def find(self, workload: str, server: str, metric: str) -> Figure | None:
        """The figure for this triple, None if absent."""
        for fig in self.figures:
            if (fig.workload, fig.server, fig.metric) == (workload, server, metric):
                return fig
        return None


# -- the environment ------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    """CPU, core count, Python, kernel, tool versions and the jdxmail commit."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": model or platform.processor() or "unknown",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["postconf", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if out.returncode == 0:
            info["postfix"] = out.stdout.strip()
    with contextlib.suppress(ImportError):
        from importlib.metadata import version  # noqa: PLC0415

        info["aiosmtpd"] = version("aiosmtpd")
        info["jdxmail"] = version("jdxmail")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(BENCH_DIR.parent), "status", "--porcelain", "--", "src"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if rev.returncode == 0:
            info["commit"] = rev.stdout.strip() + ("+dirty src" if dirty.stdout.strip() else "")
    return info


def raise_fd_limit(needed: int) -> str | None:
    """Raise RLIMIT_NOFILE (inherited by the servers) to *needed*; a notice if it can't."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        return f"open-file limit is {target} (hard), {needed} wanted: raise it with ulimit -n"
    return None


# -- one measured run ------------------------------------------------------------------


@dataclass
class Sample:
    """What one load run gave."""

    count: int
    ingest: float | None = None
    e2e: float | None = None
    cores: float = 0.0
    ingest_cores: float = 0.0
    #: CPU of the server's main thread (the event loop for jdxmail), per wall second
    loop_cores: float | None = None
    client_cores: float = 0.0
    #: CPU seconds of all the server's processes over the run (relays: until delivered)
    cpu_seconds: float = 0.0
    #: the part of cpu_seconds used by jdxmail's delivery process
    delivery_seconds: float | None = None
    error: str | None = None
    e2e_error: str | None = None
    delivered: int | None = None


def main_thread_cpu(peer: Peer) -> float | None:
    """CPU seconds of the main thread of a single-process Python server, else None."""
    root = peer.root_process()
    if root is None or not isinstance(peer, (JdxmailServe, AiosmtpdSink)):
        return None
    if isinstance(peer, JdxmailServe) and (peer.workers or 1) > 1:
        return None  # (several loops, one per worker: the supervisor's is idle)
    with contextlib.suppress(psutil.Error):
        for thread in root.threads():
            if thread.id == root.pid:
                return float(thread.user_time + thread.system_time)
    return None


def cpu_split(peer: Peer) -> tuple[float, float | None]:
    """CPU seconds so far of all the server's processes, and of jdxmail's delivery process."""
    if isinstance(peer, JdxmailServe):
        server, delivery = peer.cpu_split()
        return server + delivery, delivery
    return peer.cpu_seconds(), None


class Scraper:
    """GETs a server's /metrics once a second in a thread, as a busy Prometheus would."""

    def __init__(self, url: str, counts: dict[str, object]) -> None:
        self.url = url
        self.counts = counts
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:  # noqa: S310 - loopback
                    reply.read()
                self.counts["ok"] = int(self.counts.get("ok", 0)) + 1  # type: ignore[call-overload]
            except (OSError, ValueError) as exc:
                self.counts["failed"] = int(self.counts.get("failed", 0)) + 1  # type: ignore[call-overload]
                self.counts["error"] = str(exc)
            if self.stop.wait(1.0):
                return


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Bench:
    """Holds the peers, the client choice and the upstream sink for one invocation."""

    def __init__(
        self, workdir: Path, client: str, upstream: Peer, e2e_timeout: float, run_limit: float
    ) -> None:
        self.workdir = workdir
        self.client = client
        self.upstream = upstream
        self.e2e_timeout = e2e_timeout
        #: seconds one client run may take before it is stopped and reported
        self.run_limit = run_limit
        #: relays whose end-to-end figure cannot be had, with the reason
        self.no_e2e: dict[str, str] = {}
        #: servers whose /metrics the bench scrapes once a second while it loads them
        self.scraped: set[str] = set()
        #: how those scrapes went (see Scraper)
        self.scrapes: dict[str, object] = {"ok": 0, "failed": 0}

    def client_argv(self, workload: Workload, port: int, count: int) -> list[str]:
        """The load generator's command line for one run."""
        if self.client == "smtp-source":
            argv = ["smtp-source", "-s", str(workload.sessions), "-m", str(count)]
            argv += ["-l", str(workload.size), "-f", load.SENDER, "-t", workload.to]
            argv += ["-M", load.HELO]
            if workload.persistent:
                argv.append("-d")
            if workload.recipients > 1:
                argv += ["-r", str(workload.recipients)]
            return [*argv, f"127.0.0.1:{port}"]
        argv = [sys.executable, str(BENCH_DIR / "load.py"), f"127.0.0.1:{port}"]
        argv += ["--messages", str(count), "--sessions", str(workload.sessions)]
        argv += ["--size", str(workload.size), "--recipients", str(workload.recipients)]
        argv += ["--to", workload.to]
        return argv + (["--persistent"] if workload.persistent else [])

    def delivered(self) -> int | None:
        """Messages the upstream sink has received, None if it does not count."""
        return self.upstream.received() if isinstance(self.upstream, SmtpSink) else None

    def settle(self, peer: Peer, limit: float = 30) -> None:
        """Wait until a relay's (or the inbox's) queue is empty (left from an earlier run)."""
        inbox = isinstance(peer, JdxmailServe) and peer.inbox
        if not (peer.relays or inbox) or peer.name in self.no_e2e:
            return
        deadline = time.monotonic() + limit
        while peer.queued() and time.monotonic() < deadline:
            time.sleep(0.05)

    def measure(self, peer: Peer, workload: Workload, count: int) -> Sample:
        """Send *count* messages to *peer*; ingest and (relays) end-to-end rates."""
        sample = Sample(count)
        if not peer.alive():
            sample.error = "the server is no longer running"
            return sample
        self.settle(peer)
        wants_e2e = peer.relays and peer.name not in self.no_e2e
        base_delivered = self.delivered()
        base_failed = peer.failed() if isinstance(peer, JdxmailServe) else 0
        (cpu0, delivery0), client0, loop0 = cpu_split(peer), children_cpu(), main_thread_cpu(peer)
        url = getattr(peer, "metrics_url", None)
        scraping = Scraper(url, self.scrapes) if url and peer.name in self.scraped else None
        start = time.perf_counter()
        try:
            with scraping or contextlib.nullcontext():
                proc = subprocess.run(
                    self.client_argv(workload, peer.port, count),
                    capture_output=True,
                    timeout=self.run_limit,
                    check=False,
                )
        except subprocess.TimeoutExpired:
            sample.error = f"the client did not finish within {self.run_limit:.0f} s"
            return sample
        ingest_end = time.perf_counter()
        client_cpu = children_cpu() - client0
        sample.ingest_cores = (peer.cpu_seconds() - cpu0) / (ingest_end - start)
        if proc.returncode != 0:
            text = (proc.stderr or proc.stdout).decode(errors="replace").strip()
            sample.error = f"client failed: {text.splitlines()[-1] if text else proc.returncode}"
            return sample
        sample.ingest = count / (ingest_end - start)
        end = ingest_end
        if wants_e2e:
            timeout = max(self.e2e_timeout, 5 * (ingest_end - start))
            deadline = time.monotonic() + timeout
            done = False
            while time.monotonic() < deadline:
                got = self.delivered()
                enough = got is None or base_delivered is None or got - base_delivered >= count
                if enough and peer.queued() == 0:
                    done = True
                    break
                time.sleep(0.01)
            end = time.perf_counter()
            now = self.delivered()
            if now is not None and base_delivered is not None:
                sample.delivered = now - base_delivered
            failed = (peer.failed() if isinstance(peer, JdxmailServe) else 0) - base_failed
            if isinstance(peer, PostfixRelay) and peer.deferred():
                sample.e2e_error = f"{peer.deferred()} messages deferred (see postfix.log)"
            elif failed:
                sample.e2e_error = f"{failed} messages failed delivery"
            elif done:
                sample.e2e = count / (end - start)
            else:
                sample.e2e_error = (
                    f"not all delivered within {timeout:.0f} s "
                    f"({sample.delivered if sample.delivered is not None else '?'} of {count}"
                    f" reached the upstream, {peer.queued()} still queued)"
                )
        cpu1, delivery1 = cpu_split(peer)
        sample.cpu_seconds = cpu1 - cpu0
        if delivery0 is not None and delivery1 is not None:
            sample.delivery_seconds = delivery1 - delivery0
        sample.cores = sample.cpu_seconds / (end - start)
        loop1 = main_thread_cpu(peer)
        if loop0 is not None and loop1 is not None:
            sample.loop_cores = (loop1 - loop0) / (end - start)
        sample.client_cores = client_cpu / (ingest_end - start)
        return sample


def record(run: Run, peer: Peer, workload: Workload, sample: Sample, bench: Bench) -> None:
    """Add one sample's rates (or its error) to the run's figures."""
    ingest = run.figure(workload.key, peer.name, "ingest")
    if sample.error:
        ingest.error = sample.error
        return
    assert sample.ingest is not None
    ingest.rates.append(sample.ingest)
    ingest.counts.append(sample.count)
    ingest.client_cores.append(sample.client_cores)
    ingest.cores.append(sample.ingest_cores)
    if not peer.relays:
        if sample.loop_cores is not None:
            ingest.loop_cores.append(sample.loop_cores)
        _add_cpu(ingest, sample)
        return
    e2e = run.figure(workload.key, peer.name, "e2e")
    if peer.name in bench.no_e2e:
        e2e.error = bench.no_e2e[peer.name]
    elif sample.e2e is not None:
        e2e.rates.append(sample.e2e)
        e2e.cores.append(sample.cores)
        e2e.counts.append(sample.count)
        _add_cpu(e2e, sample)
        if sample.loop_cores is not None:
            e2e.loop_cores.append(sample.loop_cores)
    else:
        e2e.error = sample.e2e_error


def _add_cpu(fig: Figure, sample: Sample) -> None:
    """CPU per message (all processes, and the delivery process's part) into *fig*."""
    fig.cpu_ms.append(1000 * sample.cpu_seconds / sample.count)
    if sample.delivery_seconds is not None:
        fig.delivery_ms.append(1000 * sample.delivery_seconds / sample.count)


def calibrate(bench: Bench, peer: Peer, workload: Workload, mode: Mode) -> tuple[int, Sample]:
    """A warm-up run; returns the message count that takes about ``mode.seconds``."""
    if mode.fixed_counts is not None:
        first = max(mode.fixed_counts.get(workload.size, 10), workload.sessions)
    else:
        first = max(2 * workload.sessions, 40 if workload.size <= 10 * KB else 10)
    sample = bench.measure(peer, workload, first)
    if sample.error or sample.ingest is None:
        return first, sample
    if peer.relays and sample.e2e is None and peer.name not in bench.no_e2e:
        reached = sample.delivered
        queued = peer.queued()
        if reached == 0 or (reached is None and queued is not None and queued >= first):
            bench.no_e2e[peer.name] = (
                f"unavailable: no message left the {peer.name} queue within "
                f"{bench.e2e_timeout:.0f} s (delivery engine not running?)"
            )
    if mode.fixed_counts is not None:
        return first, sample
    rate = sample.e2e or sample.ingest
    count = int(rate * mode.seconds)
    return max(2 * workload.sessions, 20, min(count, 500_000)), sample


def runs(server: str, workload: Workload, only: dict[str, list[str]]) -> bool:
    """True when *server* takes part in *workload*'s interleaved rounds."""
    if workload.fresh:
        return False  # its own phase, with a server of its own (run_fresh)
    if server in only and workload.key not in only[server]:
        return False
    return workload.servers is None or server in workload.servers


def run_throughput(
    run: Run, bench: Bench, peers: list[Peer], workloads: list[Workload], mode: Mode,
    only: dict[str, list[str]], log: Callable[[str], None],
) -> None:  # fmt: skip
    """Interleaved rounds per workload: calibrate each server, then A B C A B C …."""
    for workload in workloads:
        active = [p for p in peers if runs(p.name, workload, only)]
        if not active:
            continue
        counts: dict[str, int] = {}
        for peer in active:
            count, sample = calibrate(bench, peer, workload, mode)
            if sample.error:
                run.figure(workload.key, peer.name, "ingest").error = sample.error
                log(f"  {workload.key:<14} {peer.name:<14} error: {sample.error}")
                continue
            counts[peer.name] = count
            if mode.fixed_counts is not None:
                record(run, peer, workload, sample, bench)
        for rnd in range(mode.rounds if mode.fixed_counts is None else 0):
            for peer in active:
                if peer.name not in counts:
                    continue
                sample = bench.measure(peer, workload, counts[peer.name])
                record(run, peer, workload, sample, bench)
                if sample.error:
                    del counts[peer.name]
                shown = f"{sample.ingest:,.0f}" if sample.ingest else sample.error
                e2e = f" e2e {sample.e2e:,.0f}" if sample.e2e else ""
                log(f"  {workload.key:<14} {peer.name:<14} round {rnd + 1}: {shown}{e2e}")
        for peer in active:
            if peer.relays and peer.name in bench.no_e2e:
                run.figure(workload.key, peer.name, "e2e").error = bench.no_e2e[peer.name]


def run_drain(
    run: Run, bench: Bench, workloads: list[Workload], mode: Mode, stalled_port: int,
    log: Callable[[str], None],
) -> None:  # fmt: skip
    """Delivery alone: fill a spool with delivery held, then time a fresh serve draining it.

    Recorded as the ``jdxmail drain`` row, metric ``deliver``: messages that reached the
    upstream sink per second, from the draining engine's start log line (after the spool
    opening, after the interpreter's start-up) until its queue is empty.
    """
    assert isinstance(bench.upstream, SmtpSink)
    for workload in workloads:
        held = run.median(workload.key, "jdxmail held", "ingest")
        if held is None:
            continue
        if mode.fixed_counts is not None:
            count = max(mode.fixed_counts.get(workload.size, 10), workload.sessions)
        else:
            count = max(2 * workload.sessions, min(int(held * mode.seconds), 500_000))
        fig = run.figure(workload.key, "jdxmail drain", "deliver")
        for rnd in range(mode.rounds):
            root = _fresh(bench.workdir, f"drain-{workload.key}")
            filler = JdxmailServe(
                root, stalled_port, label="jdxmail drain", relays=False,
                extra_args=["--grace", "1"],
            )  # fmt: skip
            drainer = JdxmailServe(root, bench.upstream.port, label="jdxmail drain")
            try:
                filler.start()
                sample = bench.measure(filler, workload, count)
                filler.stop()
                if sample.error:
                    fig.error = f"filling the spool: {sample.error}"
                    break
                queued = filler.queued()
                base, spawned = bench.upstream.received(), time.time()
                drainer.start()
                cpu0 = drainer.cpu_seconds()
                deadline = time.monotonic() + max(60.0, 10 * mode.seconds)
                while drainer.queued() and time.monotonic() < deadline:
                    time.sleep(0.01)
                elapsed = time.time() - first_log_time(drainer.root / "serve.out", spawned)
                delivered = bench.upstream.received() - base
                if drainer.queued():
                    fig.error = f"{drainer.queued()} of {queued} still queued after the limit"
                    break
                fig.rates.append(delivered / elapsed)
                fig.cores.append((drainer.cpu_seconds() - cpu0) / elapsed)
                fig.counts.append(delivered)
                log(f"  {workload.key:<14} jdxmail drain  round {rnd + 1}: {fig.rates[-1]:,.0f}")
            except Unavailable as exc:
                fig.error = f"unavailable: {exc}"
                break
            finally:
                filler.stop()
                drainer.stop()


def run_fresh(
    run: Run, bench: Bench, workload: Workload, mode: Mode, log: Callable[[str], None],
) -> None:  # fmt: skip
    """A fresh spool's first burst against the same server's rate once its spool is warm.

    Each round starts a relaying ``jdxmail serve`` on a new, empty directory (no spool
    yet), sends ``mode.fresh_count`` messages (metric ``first``), waits until they are
    relayed, and sends as many again (metric ``steady``: the spool now has its folders
    and recycled files). Both are ingest rates, like the other rows.
    """
    count = max(mode.fresh_count, workload.sessions)
    first = run.figure(workload.key, "jdxmail fresh", "first")
    steady = run.figure(workload.key, "jdxmail fresh", "steady")
    for rnd in range(mode.rounds):
        peer = JdxmailServe(
            _fresh(bench.workdir, "fresh"), bench.upstream.port, label="jdxmail fresh"
        )
        try:
            peer.start()
            for fig in (first, steady):
                sample = bench.measure(peer, workload, count)
                if sample.error or sample.ingest is None:
                    fig.error = sample.error or "no rate"
                    return
                fig.rates.append(sample.ingest)
                fig.cores.append(sample.ingest_cores)
                fig.counts.append(count)
                fig.client_cores.append(sample.client_cores)
            log(
                f"  {workload.key:<14} jdxmail fresh  round {rnd + 1}: first {first.rates[-1]:,.0f}"
                f", steady {steady.rates[-1]:,.0f}"
            )
        except Unavailable as exc:
            first.error = steady.error = f"unavailable: {exc}"
            return
        finally:
            peer.stop()


def first_log_time(path: Path, default: float) -> float:
    """The time stamp of the delivery engine's start line, else *default*.

    Timing a drain from there leaves out the interpreters' start-up (serve's and its
    delivery process's); the moment serve listens would be too late, as the engine
    starts before the listener.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text(errors="replace").splitlines():
            found = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) ", line)
            if found and "delivery engine:" in line:
                stamp = time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S"))
                return stamp + int(found.group(2)) / 1000
    return default


# -- memory and start-up ---------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/PID/status, in kB (0 if unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pids: list[int]) -> bool:
    """Reset the peak-RSS mark (VmHWM) of *pids*; False where the kernel refuses."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


@contextlib.contextmanager
def rss_sampler(peer: Peer) -> Iterator[list[int]]:
    """Sample the server's RSS every 5 ms in a thread; yields [max seen]."""
    peak = [peer.rss()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], peer.rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def server_pids(peer: Peer) -> list[int]:
    """The pids of the server's processes."""
    root = peer.root_process()
    if root is None:
        return []
    with contextlib.suppress(psutil.Error):
        return [root.pid, *(c.pid for c in root.children(recursive=True))]
    return [root.pid]


def num_fds(peer: Peer) -> int:
    """Open file descriptors of the server's processes."""
    total = 0
    for pid in server_pids(peer):
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).num_fds()
    return total


def measure_idle(peer: Peer, count: int) -> dict[str, object]:
    """RSS and file descriptors of *peer* with *count* idle sessions (after EHLO)."""
    time.sleep(0.3)
    base_rss, base_fds = peer.rss(), num_fds(peer)

    async def hold() -> tuple[int, int]:
        writers = await load.open_idle("127.0.0.1", peer.port, count)
        try:
            await asyncio.sleep(0.3)
            return peer.rss(), num_fds(peer)
        finally:
            await asyncio.gather(*(load.close_session(w) for w in writers))

    rss, fds = asyncio.run(hold())
    return {
        "test": "idle",
        "server": peer.name,
        "sessions": count,
        "baseline_rss": base_rss,
        "rss": rss,
        "per_session": (rss - base_rss) / count,
        "baseline_fds": base_fds,
        "fds": fds,
        "fds_per_session": (fds - base_fds) / count,
    }


def measure_big(peer: Peer, size: int, bench: Bench) -> dict[str, object]:
    """Peak RSS added while *peer* receives (and, for relays, forwards) one message."""
    data = load.message_bytes(size)
    time.sleep(0.3)
    pids = server_pids(peer)
    base = peer.rss()
    hwm_ok = reset_peak(pids)
    result: dict[str, object] = {"test": "big", "server": peer.name, "size": len(data)}
    with rss_sampler(peer) as peak:
        start = time.perf_counter()
        asyncio.run(load.send_one("127.0.0.1", peer.port, data))
        result["seconds"] = time.perf_counter() - start
        hwm = sum(proc_status_kb(pid, "VmHWM") * KB for pid in pids) if hwm_ok else 0
        result["peak_receive"] = max(peak[0], hwm) - base
        if peer.relays and peer.name not in bench.no_e2e:
            deadline = time.monotonic() + 120
            while peer.queued() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not peer.queued():
                hwm = sum(proc_status_kb(pid, "VmHWM") * KB for pid in pids) if hwm_ok else 0
                result["peak_relay"] = max(peak[0], hwm) - base
    result["baseline_rss"] = base
    return result


def run_memory(
    run: Run, bench: Bench, factories: dict[str, Callable[[], Peer]], mode: Mode,
    log: Callable[[str], None],
) -> None:  # fmt: skip
    """Idle-session and big-message memory, each on a freshly started server."""
    for name, factory in factories.items():
        for test in ("idle", "big"):
            peer = factory()
            try:
                peer.start()
                if test == "idle":
                    result = measure_idle(peer, mode.idle_sessions)
                else:
                    result = measure_big(peer, mode.big_message, bench)
            except (Unavailable, OSError, load.SmtpLoadError) as exc:
                result = {"test": test, "server": name, "error": str(exc) or repr(exc)}
            finally:
                peer.stop()
            run.memory.append(result)
            log(f"  memory {test:<5} {name:<14} {_memory_line(result)}")


def _memory_line(result: dict[str, object]) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    mb = 1e6
    if result["test"] == "idle":
        return (
            f"{result['sessions']} idle sessions: RSS {float(result['rss']) / mb:.1f} MB "  # type: ignore[arg-type]
            f"(baseline {float(result['baseline_rss']) / mb:.1f} MB, "  # type: ignore[arg-type]
            f"+{float(result['per_session']) / KB:.1f} KiB/session); "  # type: ignore[arg-type]
            f"fds {result['baseline_fds']} → {result['fds']} "
            f"({float(result['fds_per_session']):.2f}/session)"  # type: ignore[arg-type]
        )
    size = float(result["size"])  # type: ignore[arg-type]
    text = (
        f"one {size / mb:.0f} MB message: +{float(result['peak_receive']) / mb:.1f} MB "  # type: ignore[arg-type]
        f"peak while receiving ({float(result['peak_receive']) / size:.2f}x its size)"  # type: ignore[arg-type]
    )
    if "peak_relay" in result:
        relay = float(result["peak_relay"])  # type: ignore[arg-type]
        text += f", +{relay / mb:.1f} MB until relayed ({relay / size:.2f}x)"
    return text


def run_startup(run: Run, reps: int) -> None:
    """Median wall time of ``python -c pass``, ``jdxmail --version`` and ``--help``."""
    jdx = jdxmail_command()
    commands = {"python -c pass": [sys.executable, "-c", "pass"]}
    if jdx is not None:
        commands["jdxmail --version"] = [*jdx, "--version"]
        commands["jdxmail --help"] = [*jdx, "--help"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(reps):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=False, timeout=60)
            times[name].append(time.perf_counter() - start)
    run.startup = {name: statistics.median(t) for name, t in times.items()}


# -- report ----------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def _fresh_note(run: Run) -> str:
    first = run.find("1k-s20-fresh", "jdxmail fresh", "first")
    steady = run.find("1k-s20-fresh", "jdxmail fresh", "steady")
    if not (first and steady and first.median and steady.median):
        return first.error or "" if first else ""
    return (
        f"first {first.counts[0]:,} messages {first.median:,.0f} msgs/s, "
        f"then {steady.median:,.0f} msgs/s"
    )


def _e2e_ratio_note(run: Run, key: str) -> str:
    asyncio_e2e = run.median(key, "jdxmail asyncio", "e2e")
    uv_e2e = run.median(key, "jdxmail uvloop", "e2e")
    ratio = _ratio(uv_e2e, asyncio_e2e)
    return f"end to end {_fmt_ratio(ratio)}" if ratio else ""


def project(run: Run) -> None:
    """msgs/s (and per core) on 4, 8 and 16 cores from this run's CPU per relayed message.

    Model: every core busy, as many ingest workers as it takes, and the one delivery
    process, which cannot use more than one core: msgs/s = min(N ÷ (ingest + delivery
    CPU per message), 1 ÷ delivery CPU per message). The load generator and the
    upstream are elsewhere; contention between the processes is what the --workers 2
    CPU ratio measures, and is left out.
    """
    fig = run.find("1k-s20", "jdxmail", "e2e")
    if fig is None or fig.cpu_per_message is None or fig.delivery_per_message is None:
        return
    delivery = fig.delivery_per_message / 1000
    ingest = fig.cpu_per_message / 1000 - delivery
    if delivery <= 0 or ingest <= 0:
        return
    for cores in (4, 8, 16):
        by_cores, by_delivery = cores / (ingest + delivery), 1 / delivery
        rate = min(by_cores, by_delivery)
        run.projection.append(
            {
                "cores": cores,
                "msgs_per_s": rate,
                "per_core": rate / cores,
                "bound": "all cores" if by_cores <= by_delivery else "the delivery process",
                "ingest_ms": ingest * 1000,
                "delivery_ms": delivery * 1000,
            }
        )


PROJECTION_MODEL = (
    "model: N cores all busy with ingest workers and the one delivery process, which uses "
    "at most one core: msgs/s = min(N ÷ (ingest + delivery CPU per message), "
    "1 ÷ delivery CPU per message); client and upstream on other machines"
)


def _ms(value: float | None) -> str:
    return f"{value:.2f} ms" if value is not None else "—"


def evaluate_targets(run: Run) -> None:
    """The issues' targets (15, and 13's metrics cost), as ratios of this run's figures."""
    m = run.median

    def cpu(workload: str, server: str) -> float | None:
        fig = run.find(workload, server, "e2e")
        return fig.cpu_per_message if fig else None

    sink = "aiosmtpd Sink"
    run.targets = [
        Target(
            "durable ingest 1 KB x20 ÷ aiosmtpd Sink, while relaying", "≥ 1.3x",
            _ratio(m("1k-s20", "jdxmail", "ingest"), m("1k-s20", sink, "ingest")), 1.3,
        ),
        Target(
            "dev inbox 1 KB x20 (mailboxes, no relay) ÷ aiosmtpd Sink", "≥ 1.3x",
            _ratio(m("1k-s20-inbox", "jdxmail inbox", "ingest"), m("1k-s20-inbox", sink, "ingest")),
            1.3,
        ),
        Target(
            "durable ingest 100 KB x20 ÷ aiosmtpd Sink, while relaying", "≥ 4.0x",
            _ratio(m("100k-s20", "jdxmail", "ingest"), m("100k-s20", sink, "ingest")), 4.0,
        ),
        Target(
            "fresh spool's first burst ÷ the same server warmed (1 KB x20)", "≥ 0.8x",
            _ratio(m("1k-s20-fresh", "jdxmail fresh", "first"),
                   m("1k-s20-fresh", "jdxmail fresh", "steady")), 0.8,
            note=_fresh_note(run),
        ),
        Target(
            "end to end 1 KB x20 ÷ Postfix end to end", "≥ 3.0x",
            _ratio(m("1k-s20", "jdxmail", "e2e"), m("1k-s20", "postfix", "e2e")), 3.0,
        ),
        Target(
            "end to end 100 KB x20 ÷ Postfix end to end", "≥ 2.0x",
            _ratio(m("100k-s20", "jdxmail", "e2e"), m("100k-s20", "postfix", "e2e")), 2.0,
        ),
    ]  # fmt: skip
    for key, size in (("1k-s20", "1 KB"), ("100k-s20", "100 KB")):
        jdx, postfix = cpu(key, "jdxmail"), cpu(key, "postfix")
        if jdx is not None or key == "1k-s20":
            run.targets.append(
                Target(
                    f"CPU per relayed message {size} x20, jdxmail ÷ Postfix",
                    "≤ 0.33x" if key == "1k-s20" else "(≤ 0.33x)",
                    _ratio(jdx, postfix), 1 / 3 if key == "1k-s20" else None,
                    higher_is_better=False,
                    note=f"jdxmail {_ms(jdx)}, Postfix {_ms(postfix)} per message, all processes",
                )
            )  # fmt: skip
    w1, w2 = cpu("1k-s20", "jdxmail w1"), cpu("1k-s20", "jdxmail w2")
    run.targets.append(
        Target(
            "CPU per message, --workers 2 ÷ --workers 1 (1 KB x20 e2e)", "≤ 1.1x",
            _ratio(w2, w1), 1.1, higher_is_better=False,
            note=(
                f"--workers 1 {_ms(w1)}, --workers 2 {_ms(w2)} per relayed message"
                if w1 else run.servers.get("jdxmail w2", "")
            ),
        )
    )  # fmt: skip
    h1 = run.find("1k-s20", "jdxmail w1 held", "ingest")
    h2 = run.find("1k-s20", "jdxmail w2 held", "ingest")
    if h1 and h2 and h1.cpu_per_message and h2.cpu_per_message:
        run.targets.append(
            Target(
                "CPU per message, --workers 2 ÷ 1, delivery held (ingest only)", "(≤ 1.1x)",
                _ratio(h2.cpu_per_message, h1.cpu_per_message), None, higher_is_better=False,
                note=f"{_ms(h1.cpu_per_message)} and {_ms(h2.cpu_per_message)} per message",
            )
        )  # fmt: skip
        run.targets.append(
            Target(
                "msgs/s, --workers 2 ÷ 1, delivery held (two cores shared)", "",
                _ratio(h2.median, h1.median), None,
            )
        )  # fmt: skip
    for key, size in (("1k-s20", "1 KB"), ("100k-s20", "100 KB")):
        on, off = m(key, "jdxmail", "ingest"), m(key, "jdxmail bare", "ingest")
        if off is not None or key == "1k-s20":
            scrapes = run.scrapes
            run.targets.append(
                Target(
                    f"metrics on ÷ off, {size} x20 ingest (console + /metrics each s)",
                    "≥ 0.97x" if key == "1k-s20" else "(≥ 0.97x)",
                    _ratio(on, off), 0.97 if key == "1k-s20" else None,
                    note=(
                        f"{scrapes.get('ok', 0)} scrapes of /metrics, "
                        f"{scrapes.get('failed', 0)} failed" if key == "1k-s20" else ""
                    ),
                )
            )  # fmt: skip
    skipped = run.servers.get("jdxmail uvloop", "ok")
    if skipped != "ok":
        run.targets.append(
            Target("--loop uvloop ÷ --loop asyncio, 1 KB and 100 KB x20", "", None, None,
                   note=skipped)
        )  # fmt: skip
    for key, size in (("1k-s20", "1 KB"), ("100k-s20", "100 KB")):
        asyncio_rate = m(key, "jdxmail asyncio", "ingest")
        if asyncio_rate is not None:
            uv = m(key, "jdxmail uvloop", "ingest")
            run.targets.append(
                Target(
                    f"--loop uvloop ÷ --loop asyncio, {size} x20 ingest", "",
                    _ratio(uv, asyncio_rate), None, note=_e2e_ratio_note(run, key),
                )
            )  # fmt: skip
    for key, size, goal in (("1k-s20", "1 KB", 1.3), ("100k-s20", "100 KB", 4.0)):
        held = m(key, "jdxmail held", "ingest")
        if held is not None:
            run.targets.append(
                Target(
                    f"ingest alone {size} x20 (delivery held) ÷ aiosmtpd Sink",
                    f"(≥ {goal:.1f}x)", _ratio(held, m(key, sink, "ingest")), None,
                    note="informational: the first targets without the delivery engine's load",
                )
            )  # fmt: skip
    idle = next((r for r in run.memory if r.get("test") == "idle" and r["server"] == "jdxmail"), {})
    if idle.get("rss") is not None:
        sessions = int(idle["sessions"])  # type: ignore[call-overload]
        rss = float(idle["rss"]) / 1e6  # type: ignore[arg-type]
        run.targets.append(
            Target(
                f"RSS with {sessions} idle sessions (MB)", "≤ 150 MB", rss, 150,
                higher_is_better=False, shown=f"{rss:.1f} MB",
                note="" if sessions >= 1000 else "fewer sessions than the target's 1000",
            )
        )  # fmt: skip
    big = next((r for r in run.memory if r.get("test") == "big" and r["server"] == "jdxmail"), {})
    if big.get("peak_receive") is not None:
        worst = max(float(big["peak_receive"]), float(big.get("peak_relay", 0)))  # type: ignore[arg-type]
        factor = worst / float(big["size"])  # type: ignore[arg-type]
        run.targets.append(
            Target(
                "RSS added by one 25 MB message ÷ its size", "≤ 2.0x", factor, 2.0,
                higher_is_better=False,
                note="" if float(big["size"]) >= 25e6 else "smaller message than 25 MB",  # type: ignore[arg-type]
            )
        )  # fmt: skip
    base, version = run.startup.get("python -c pass"), run.startup.get("jdxmail --version")
    run.targets.append(
        Target(
            "jdxmail --version ÷ python -c pass", "≤ 2.0x", _ratio(version, base), 2.0,
            higher_is_better=False,
        )
    )  # fmt: skip
    caveat = []
    if run.mode == "smoke":
        caveat.append("smoke counts")
    if run.client == "python":
        caveat.append("Python client")
    if caveat:
        for target in run.targets:
            extra = f"indicative only: {', '.join(caveat)}"
            target.note = f"{target.note}; {extra}" if target.note else extra


def report(run: Run, workloads: list[Workload]) -> str:
    """The table of msgs/s and ratios, then targets, memory and start-up."""
    lines: list[str] = []
    info = run.machine
    lines.append(
        f"jdxmail benchmark ({run.mode}): {run.rounds} round(s) of ~{run.seconds:g} s, "
        f"median; client {run.client}; upstream {run.upstream}"
    )
    machine = f"{info['nproc']} x {info['cpu']}, {info['memory']}, Python {info['python']}"
    machine += f", Linux {info['kernel']}"
    for key in ("postfix", "aiosmtpd", "jdxmail", "commit"):
        if key in info:
            machine += f", {key} {info[key]}"
    lines.append(f"machine: {machine}")
    lines.extend(f"note: {notice}" for notice in run.notices)
    for name, status in run.servers.items():
        if status != "ok":
            lines.append(f"{name}: {status}")
    lines.append("")
    wide = max([24, *(len(w.label) for w in workloads)])
    header = (
        f"{'workload':<{wide}} {'server':<16} {'metric':<7} {'msgs/s':>8} {'spread':>7} "
        f"{'cores':>5} {'loop':>5} {'ms/msg':>6}  {'jdx ingest ÷':>12} {'jdx e2e ÷':>10}"
    )
    lines += [header, "-" * len(header)]
    for workload in workloads:
        figs = [f for f in run.figures if f.workload == workload.key]
        if not figs:
            continue
        jdx_in = run.median(workload.key, workload.reference, "ingest")
        jdx_e2e = run.median(workload.key, workload.reference, "e2e")
        first = True
        for fig in figs:
            label = workload.label if first else ""
            first = False
            metric = fig.metric
            if fig.median is None:
                lines.append(f"{label:<{wide}} {fig.server:<16} {metric:<7} {fig.error or '—'}")
                continue
            spread = f"±{fig.spread * 100:.0f}%" if fig.spread is not None else ""
            cores = f"{statistics.median(fig.cores):.2f}" if fig.cores else ""
            loop = f"{statistics.median(fig.loop_cores):.2f}" if fig.loop_cores else ""
            per = fig.cpu_per_message
            cpu_ms = f"{per:.2f}" if per is not None else ""
            mine = fig.server.startswith("jdxmail")
            r_in = "" if mine else _fmt_ratio(_ratio(jdx_in, fig.median))
            r_e2e = "" if mine else _fmt_ratio(_ratio(jdx_e2e, fig.median))
            lines.append(
                f"{label:<{wide}} {fig.server:<16} {metric:<7} {fig.median:>8,.0f} {spread:>7} "
                f"{cores:>5} {loop:>5} {cpu_ms:>6}  {r_in:>12} {r_e2e:>10}"
            )
        lines.append("")
    lines.append(
        "cores: CPU seconds of the server's processes per wall second of the run (e2e rows:"
        " until delivered); loop: the same for its main thread (the event loop), whose"
        " ceiling is 1.00 (blank with --workers: one loop per worker); ms/msg: CPU"
        " milliseconds of all the server's processes per message (relays: end to end,"
        " so ingest and delivery)"
    )
    lines.append("")
    if run.memory:
        lines.append("memory:")
        lines.extend(f"  {r['server']:<14} {_memory_line(r)}" for r in run.memory)
        lines.append("")
    if run.startup:
        base = run.startup.get("python -c pass")
        parts = []
        for name, seconds in run.startup.items():
            ratio = f" ({seconds / base:.1f}x)" if base and name != "python -c pass" else ""
            parts.append(f"{name} {seconds * 1000:.0f} ms{ratio}")
        lines.append("start-up (median wall time): " + ", ".join(parts))
        lines.append("")
    if run.targets:
        width = max(len(t.name) for t in run.targets)
        lines.append(f"{'target':<{width}} {'goal':<9} {'this run':>10}  status")
        for target in run.targets:
            value = target.shown or (_fmt_ratio(target.value) if target.value is not None else "—")
            note = f" ({target.note})" if target.note else ""
            lines.append(
                f"{target.name:<{width}} {target.goal:<9} {value:>10}  {target.status}{note}"
            )
    if run.targets and not run.projection:
        lines += [
            "",
            "projection: not made (the 1 KB x20 end-to-end jdxmail row has no CPU per message"
            " of both its server and its delivery process; too few clock ticks in --smoke)",
        ]
    if run.projection:
        basis = run.projection[0]
        lines += [
            "",
            f"projection from the 1 KB x20 end-to-end run: ingest {basis['ingest_ms']:.2f} ms"
            f" + delivery {basis['delivery_ms']:.2f} ms of CPU per relayed message",
            PROJECTION_MODEL,
            f"{'cores':>5} {'msgs/s':>8} {'per core':>8}  bound by",
        ]
        lines.extend(
            f"{row['cores']:>5} {row['msgs_per_s']:>8,.0f} {row['per_core']:>8,.0f}  {row['bound']}"
            for row in run.projection
        )
    return "\n".join(lines)


# -- profiling -------------------------------------------------------------------------


def summarize_profile(raw: Path, top: int = 20) -> str:
    """Where the samples of a py-spy ``raw`` (collapsed stacks) file went.

    Stacks inside an import (start-up, first use of a module) are counted apart and
    left out of the rest, which shows the steady state under load: per thread, self
    time by function, then inclusive time of jdxmail's own functions.
    """
    per_thread: dict[str, Counter[str]] = {}
    names: dict[str, str] = {}
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    total = imports = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit():
            continue
        n = int(n_text)
        frames = stack.split(";")
        tid = "?"
        if frames and frames[0].startswith(("thread", "process")):
            head, _, name = frames.pop(0).partition(": ")
            tid = head.split("(")[-1].rstrip(")")
            if name:
                names[tid] = name
        if not frames:
            continue
        total += n
        if any("_find_and_load" in f for f in frames):
            imports += n
            continue
        short = [_short_frame(f) for f in frames]
        per_thread.setdefault(tid, Counter())[short[-1]] += n
        by_file[short[-1].rsplit("(", 1)[-1].rstrip(")")] += n
        for name in set(short):
            if name.endswith("py)") and "jdxmail/" in name and "jdxmail/cli/" not in name:
                inclusive[name] += n
    if not total:
        return "no samples"

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    out = [f"{total} samples; {pct(imports).strip()} inside imports (left out below)"]
    ranked = sorted(per_thread.items(), key=lambda item: -sum(item[1].values()))
    for tid, counter in ranked:
        share = sum(counter.values())
        if share < total * 0.02:
            continue
        out.append(f"thread {names.get(tid, tid)}: {pct(share).strip()} of samples; self time:")
        out += [f"  {pct(n)}  {name}" for name, n in counter.most_common(top)]
    out.append("self time by file (all threads):")
    out += [f"  {pct(n)}  {name}" for name, n in by_file.most_common(top)]
    out.append("inclusive time of jdxmail functions (all threads):")
    out += [f"  {pct(n)}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def _short_frame(frame: str) -> str:
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/lib/python3.12/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


def run_profile(
    args: argparse.Namespace, bench: Bench, workloads: list[Workload], mode: Mode,
    log: Callable[[str], None],
) -> int:  # fmt: skip
    """Profile jdxmail serve with py-spy under each workload; write raw stacks + summary."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        log("py-spy not found: pip install py-spy (into this Python's environment)")
        return 2
    outdir = Path(args.profile)
    outdir.mkdir(parents=True, exist_ok=True)
    for workload in workloads:
        raw = outdir / f"{workload.key}.txt"
        wrapper = [pyspy, "record", "--nonblocking", "--threads", "--subprocesses", "--rate", "200"]
        if args.profile_gil:
            wrapper.append("--gil")
        wrapper += ["-f", "raw", "-o", str(raw), "--"]
        probe = outdir / f"{workload.key}-probe.json"
        peer = JdxmailServe(bench.workdir / f"profile-{workload.key}", _upstream_port(bench),
                            wrapper=wrapper, probe=probe,
                            inbox=workload.to != load.RECIPIENT)  # fmt: skip
        (bench.workdir / f"profile-{workload.key}").mkdir()
        try:
            peer.start()
            count, sample = calibrate(bench, peer, workload, mode)
            if sample.error:
                log(f"{workload.key}: {sample.error}")
                continue
            serve = peer.root_process()
            if serve is not None:
                serve.send_signal(signal.SIGUSR1)  # the probe's figures: this run only
            sample = bench.measure(peer, workload, count)
            log(
                f"{workload.key}: {count} messages, ingest {sample.ingest or 0:,.0f} msgs/s"
                + (f", e2e {sample.e2e:,.0f}" if sample.e2e else "")
                + f", {sample.cores:.2f} cores, loop {sample.loop_cores or 0:.2f} (under py-spy)"
            )
        except Unavailable as exc:
            log(f"{workload.key}: jdxmail unavailable: {exc}")
            continue
        finally:
            peer.stop()
        if raw.exists():
            kind = "GIL holders only (--gil)" if args.profile_gil else "all active threads"
            summary = f"py-spy, 200 Hz, {kind}\n" + summarize_profile(raw)
            (outdir / f"{workload.key}-summary.txt").write_text(summary + "\n")
            log(f"--- profile {workload.key} ({raw})\n{summary}\n")
        else:
            log(f"{workload.key}: py-spy wrote no profile ({peer.root / 'serve.out'})")
        if probe.exists():
            text = format_probe(json.loads(probe.read_text()))
            (outdir / f"{workload.key}-probe.txt").write_text(text + "\n")
            log(f"--- timings {workload.key} ({probe})\n{text}\n")
    return 0


def format_probe(data: dict[str, object]) -> str:
    """bench/serve_probe.py's JSON as a small table (milliseconds)."""
    lines = [f"{'what':<42} {'count':>7} {'mean':>8} {'p50':>8} {'p90':>8} {'p99':>8}  batch"]
    for key, entry in data.items():
        if not isinstance(entry, dict):
            continue
        batch = f"{entry['batch_mean']} (max {entry['batch_max']})" if "batch_mean" in entry else ""
        lines.append(
            f"{key:<42} {entry['count']:>7} {entry['mean_ms']:>8} {entry['p50_ms']:>8} "
            f"{entry['p90_ms']:>8} {entry['p99_ms']:>8}  {batch}"
        )
    if data.get("missing"):
        lines.append(f"not probed (renamed?): {data['missing']}")
    return "\n".join(lines)


def _upstream_port(bench: Bench) -> int:
    return bench.upstream.port


# -- the picture -----------------------------------------------------------------------

#: bar colours by the server's family (jdxmail's paths share one hue)
PLOT_COLOURS = {"jdxmail": "#1f77b4", "aiosmtpd Sink": "#ff7f0e", "postfix": "#2ca02c"}


def draw_plot(data: dict[str, object], path: Path) -> str | None:
    """Draw msgs/s per workload and server from a run's JSON shape into a PNG.

    One panel per workload, one bar per server and metric (jdxmail's paths beside
    aiosmtpd's Sink and Postfix; smtp-sink, the machine's limit, is left out as it
    would flatten the rest). Returns a problem to report, or None when drawn.
    """
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "--plot needs matplotlib: pip install -e '.[bench]'"
    labels = {w.key: w.label for w in WORKLOADS}
    panels: dict[str, list[tuple[str, float, str]]] = {}
    for fig in data.get("figures", []):  # type: ignore[attr-defined]
        if not fig.get("median") or fig["server"] == "smtp-sink":
            continue
        family = next((k for k in PLOT_COLOURS if fig["server"].startswith(k)), "")
        name = f"{fig['server']} {fig['metric']}"
        panels.setdefault(fig["workload"], []).append((name, fig["median"], family))
    if not panels:
        return "nothing to plot: the run has no measured figures"
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    items = list(panels.items())
    # the bars of every panel in a row as thick as those of its fullest panel
    per_row = [max(len(bars) for _, bars in items[r * cols : (r + 1) * cols]) for r in range(rows)]
    figure, axes = plt.subplots(
        rows, cols, figsize=(7.5 * cols, sum(0.3 * n + 1.3 for n in per_row) + 0.8),
        squeeze=False, gridspec_kw={"height_ratios": [0.3 * n + 1.3 for n in per_row]},
    )  # fmt: skip
    for index, (ax, (key, bars)) in enumerate(zip(axes.flat, items, strict=False)):
        names = [b[0] for b in bars]
        values = [b[1] for b in bars]
        colours = [PLOT_COLOURS.get(b[2], "#7f7f7f") for b in bars]
        shown = ax.barh(names, values, color=colours)
        ax.bar_label(shown, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
        title = labels.get(key, key)
        if key.endswith("-inbox"):
            title += " (jdxmail: dev inbox, mailboxes, no relay)"
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("messages per second (median of rounds)", fontsize=8)
        ax.set_xlim(0, max(values) * 1.18)
        ax.set_ylim(per_row[index // cols] - 0.4, -0.6)  # top down, in the table's order
        ax.tick_params(axis="y", labelsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    machine = data.get("machine", {})
    assert isinstance(machine, dict)
    when = str(data.get("date", "date unknown")).replace("T", " ").replace("Z", " UTC")
    figure.suptitle(
        f"jdxmail benchmark ({data.get('mode')}, {data.get('rounds')} round(s)): "
        f"msgs/s by workload and server\n{when}, commit {machine.get('commit', '?')}, "
        f"{machine.get('nproc', '?')} x {machine.get('cpu', '?')}",
        fontsize=11,
    )
    figure.text(
        0.01, 0.005,
        "ingest: until the client's last 250; e2e: until the upstream has every message; "
        "blue: jdxmail, orange: aiosmtpd Sink, green: Postfix; smtp-sink left out",
        fontsize=7, color="#555555",
    )  # fmt: skip
    figure.tight_layout(rect=(0, 0.02, 1, 0.97))
    try:
        figure.savefig(path, dpi=110)
    except OSError as exc:
        return f"cannot write {path}: {exc}"
    finally:
        plt.close(figure)
    return None


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Side-by-side SMTP benchmark of jdxmail serve against its peers."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="~1 minute run")
    size.add_argument("--smoke", action="store_true", help="seconds: every path, tiny counts")
    parser.add_argument("--rounds", type=int, help="rounds per workload (median of these)")
    parser.add_argument("--seconds", type=float, help="target length of one run")
    parser.add_argument(
        "--workloads", help="comma-separated keys: " + ", ".join(w.key for w in WORKLOADS)
    )
    parser.add_argument(
        "--servers", help="comma-separated: smtp-sink,aiosmtpd,postfix,jdxmail (default: all)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory tests")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up times")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--plot", metavar="PNG", help="also draw msgs/s per workload and server (matplotlib)"
    )
    parser.add_argument(
        "--plot-from", metavar="JSON", help="only redraw --plot from a --json file of a run"
    )
    parser.add_argument(
        "--client", choices=["auto", "smtp-source", "python"], default="auto",
        help="load generator (auto: smtp-source when installed)",
    )  # fmt: skip
    parser.add_argument("--dir", help="work directory (default: a new temp dir, removed)")
    parser.add_argument(
        "--profile", metavar="DIR", help="profile jdxmail serve with py-spy instead"
    )
    parser.add_argument(
        "--profile-gil", action="store_true",
        help="with --profile: only samples holding the GIL (Python CPU, not waits)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when it ran (whatever the figures), 2 on bad usage."""
    args = parse_args(argv)
    if args.plot_from:
        if not args.plot:
            sys.stderr.write("--plot-from needs --plot PNG (where to draw)\n")
            return 2
        try:
            data = json.loads(Path(args.plot_from).read_text())
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"cannot read {args.plot_from}: {exc}\n")
            return 2
        problem = draw_plot(data, Path(args.plot))
        sys.stderr.write(f"{problem}\n" if problem else f"wrote {args.plot}\n")
        return 2 if problem else 0
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    mode = Mode(
        mode.name,
        args.rounds or mode.rounds,
        args.seconds or mode.seconds,
        args.workloads.split(",") if args.workloads else (
            PROFILE_WORKLOADS if args.profile else mode.workloads
        ),
        mode.idle_sessions,
        mode.big_message,
        mode.startup_reps,
        mode.fresh_count,
        mode.fixed_counts,
    )  # fmt: skip
    by_key = {w.key: w for w in WORKLOADS}
    unknown = [k for k in mode.workloads if k not in by_key]
    if unknown:
        sys.stderr.write(f"unknown workload(s): {', '.join(unknown)}\n")
        return 2
    workloads = [by_key[k] for k in mode.workloads]
    wanted = set((args.servers or "smtp-sink,aiosmtpd,postfix,jdxmail").split(","))

    def log(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    notices: list[str] = []
    have_source = shutil.which("smtp-source") is not None
    have_sink = shutil.which("smtp-sink") is not None
    if not (have_source and have_sink and shutil.which("postfix")):
        notices.append(
            "Postfix tools missing (smtp-source, smtp-sink, postfix): "
            "apt-get install postfix  (then run this again)"
        )
    client = args.client
    if client == "auto":
        client = "smtp-source" if have_source else "python"
    if client == "smtp-source" and not have_source:
        sys.stderr.write("smtp-source not found: apt-get install postfix\n")
        return 2
    if client == "python":
        notices.append(
            "client: bench/load.py (Python) stands in for smtp-source; "
            "its figures are client-bound, not comparable with smtp-source runs"
        )
    notice = raise_fd_limit(mode.idle_sessions * 2 + 512)
    if notice:
        notices.append(notice)
    busy = psutil.cpu_percent(interval=1.0)
    if busy > 20:
        notices.append(
            f"the machine was {busy:.0f}% busy before the run (other processes): "
            "figures will be low and noisy; ratios suffer less (interleaved rounds)"
        )

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="jdxbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    upstream: Peer = (
        SmtpSink(workdir, counting=True, label="-upstream") if have_sink else AiosmtpdSink(workdir)
    )
    started: list[Peer] = []
    try:
        try:
            upstream.start()
        except Unavailable as exc:
            sys.stderr.write(f"cannot start the upstream sink: {exc}\n")
            return 1
        started.append(upstream)
        upstream_name = "smtp-sink" if isinstance(upstream, SmtpSink) else "aiosmtpd Sink"
        if upstream_name != "smtp-sink":
            notices.append("upstream: aiosmtpd Sink stands in for smtp-sink (not installed)")
        bench = Bench(
            workdir,
            client,
            upstream,
            e2e_timeout=5 if mode.name == "smoke" else 20,
            run_limit=max(60.0, 10 * mode.seconds),
        )
        if args.profile:
            return run_profile(args, bench, workloads, mode, log)

        date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        run = Run(mode.name, machine_info(), date, client, upstream_name, mode.rounds, mode.seconds)
        run.notices = notices
        sink_port = upstream.port
        candidates: list[tuple[str, Peer]] = [
            ("smtp-sink", SmtpSink(workdir)),
            ("aiosmtpd", AiosmtpdSink(workdir)),
            ("postfix", PostfixRelay(workdir, sink_port)),
            ("jdxmail", JdxmailServe(workdir, sink_port)),
            # issue 13: the same without the console and its /metrics (and no metrics
            # listener), beside the default, whose /metrics the bench scrapes each second
            ("jdxmail", JdxmailServe(workdir, sink_port, label="jdxmail bare", web=False)),
            # the dev inbox a new user meets: no relay, mail stored in local mailboxes
            ("jdxmail", JdxmailServe(workdir, sink_port, label="jdxmail inbox", inbox=True)),
        ]
        bench.scraped.add("jdxmail")
        only: dict[str, list[str]] = {
            "jdxmail bare": ["1k-s20", "100k-s20"],
            "jdxmail inbox": ["1k-s20-inbox"],
        }
        if "jdxmail" in wanted:
            loops = loop_rows_unavailable()
            if loops:
                run.servers["jdxmail uvloop"] = f"skipped: {loops}"
            else:
                for loop in ("asyncio", "uvloop"):
                    label = f"jdxmail {loop}"
                    candidates.append(
                        ("jdxmail", JdxmailServe(workdir, sink_port, label=label,
                                                 extra_args=["--loop", loop]))
                    )  # fmt: skip
                    only[label] = ["1k-s20", "100k-s20"]
        stalled_port: int | None = None
        if "jdxmail" in wanted and have_sink:
            # Ingest alone: the upstream never answers DATA, so the delivery engine's
            # connections stay busy and it does no per-message work during the run.
            # -t 3600 too: with smtp-sink's default of 100 s it dropped those
            # connections mid-run, and the held servers' delivery processes then
            # churned through thousands of queued messages (rescheduling each) while
            # the other servers were being measured.
            stalled = SmtpSink(workdir, label="-stalled", extra_args=["-t", "3600", "-w", "3600"])
            try:
                stalled.start()
                started.append(stalled)
                held = JdxmailServe(
                    workdir, stalled.port, label="jdxmail held", relays=False,
                    extra_args=["--grace", "1"],
                )  # fmt: skip
                candidates.append(("jdxmail", held))
                only[held.name] = ["1k-s20", "100k-s20"]
                stalled_port = stalled.port
            except Unavailable as exc:
                run.servers["jdxmail held"] = f"unavailable: {exc}"
        if "jdxmail" in wanted:
            if serve_supports("--workers"):
                for n in (1, 2):
                    label = f"jdxmail w{n}"
                    candidates.append(
                        ("jdxmail", JdxmailServe(workdir, sink_port, label=label, workers=n))
                    )
                    only[label] = ["1k-s20"]
                    if stalled_port is not None:
                        # the servers' own scaling: no delivery work competes for the cores
                        held_label = f"{label} held"
                        candidates.append(
                            (
                                "jdxmail",
                                JdxmailServe(
                                    workdir, stalled_port, label=held_label, workers=n,
                                    relays=False, extra_args=["--grace", "1"],
                                ),
                            )
                        )  # fmt: skip
                        only[held_label] = ["1k-s20"]
            else:
                run.servers["jdxmail w2"] = "unavailable: jdxmail serve has no --workers option"
        peers: list[Peer] = []
        for key, peer in candidates:
            if key not in wanted or not any(runs(peer.name, w, only) for w in workloads):
                continue
            try:
                peer.start()
            except Unavailable as exc:
                run.servers[peer.name] = f"unavailable: {exc}"
                log(f"{peer.name}: unavailable: {exc}")
                peer.stop()
                continue
            started.append(peer)
            peers.append(peer)
            run.servers[peer.name] = "ok"
        log(f"work dir {workdir}; servers: {', '.join(p.name for p in peers) or 'none'}")
        run_throughput(run, bench, peers, workloads, mode, only, log)
        for peer in peers:
            if peer.relays and peer.name in bench.no_e2e:
                run.servers[f"{peer.name} e2e"] = bench.no_e2e[peer.name]
        for peer in peers:
            peer.stop()
        if stalled_port is not None and isinstance(upstream, SmtpSink):
            held_workloads = [w for w in workloads if w.key in only.get("jdxmail held", [])]
            if mode.fixed_counts is not None:
                held_workloads = held_workloads[:1]  # smoke: the path once is enough
            run_drain(run, bench, held_workloads, mode, stalled_port, log)
        fresh = [w for w in workloads if w.fresh]
        if fresh and "jdxmail" in wanted:
            run_fresh(run, bench, fresh[0], mode, log)
        if not args.no_memory:
            factories: dict[str, Callable[[], Peer]] = {}
            idle_max = mode.idle_sessions + 100
            if "jdxmail" in wanted:
                factories["jdxmail"] = lambda: JdxmailServe(
                    _fresh(workdir, "mem-jdxmail"), sink_port, max_connections=idle_max
                )
            if "aiosmtpd" in wanted:
                factories["aiosmtpd Sink"] = lambda: AiosmtpdSink(_fresh(workdir, "mem-aiosmtpd"))
            run_memory(run, bench, factories, mode, log)
        if not args.no_startup:
            run_startup(run, mode.startup_reps)
        run.scrapes = dict(bench.scrapes)
        evaluate_targets(run)
        project(run)
        print(report(run, workloads))
        data = _jsonable(run)
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        if args.plot:
            problem = draw_plot(data, Path(args.plot))
            log(problem or f"wrote {args.plot}")
        return 0
    finally:
        for peer in reversed(started):
            with contextlib.suppress(Exception):
                peer.stop()
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)


def loop_rows_unavailable() -> str | None:
    """Why the ``--loop asyncio``/``--loop uvloop`` rows cannot run here, else None."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed in this Python (pip install uvloop)"
    if not serve_supports("--loop"):
        return "jdxmail serve has no --loop option yet"
    return None


_fresh_count = Counter[str]()


def _fresh(workdir: Path, name: str) -> Path:
    _fresh_count[name] += 1
    path = workdir / f"{name}-{_fresh_count[name]}"
    path.mkdir(parents=True)
    return path


def _jsonable(run: Run) -> dict[str, object]:
    data = asdict(run)
    for fig, out in zip(run.figures, data["figures"], strict=True):
        out["median"] = fig.median
    for target, out in zip(run.targets, data["targets"], strict=True):
        out["status"] = target.status
    return data


if __name__ == "__main__":
    sys.exit(main())
