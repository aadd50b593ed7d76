"""Side-by-side SMTP benchmark: jdxmail ``serve`` against the servers a user would pick.

Usage::

    python bench/run.py            # full run (~10 min): 7 workloads, 5 rounds of ~3 s
    python bench/run.py --quick    # ~1 min: 5 workloads, 3 short rounds
    python bench/run.py --smoke    # seconds: every path once with tiny counts (CI)
    python bench/run.py --profile prof/   # py-spy profiles of jdxmail under load

It installs nothing. It looks for Postfix's ``smtp-source``/``smtp-sink`` and
``postfix`` (``apt-get install postfix``) and says what is missing; a missing peer is
reported as unavailable, and without ``smtp-source`` a Python client stands in (its
figures are client-bound). Everything runs on 127.0.0.1, every run is bounded in count
and time, and the servers are measured interleaved (A B C A B C …) so that drift of the
machine hits all of them alike; each figure is the median of the rounds.

Rows: ``smtp-sink`` (C, stores nothing: the machine's limit), aiosmtpd's ``Sink``
handler (stores nothing: the Python library ceiling), Postfix as a smarthost relay and
jdxmail ``serve`` (both fsync before 250), each relay measured for ingest (messages
accepted per second) and end to end (until the upstream ``smtp-sink`` has every
message). docs/performance.md explains the figures and records a run.
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

    @property
    def label(self) -> str:
        """Human description, e.g. ``1 KB, 20 sess, reuse``."""
        size = f"{self.size // KB} KB"
        reuse = "reuse" if self.persistent else "1/conn"
        rcpt = f", {self.recipients} rcpt" if self.recipients > 1 else ""
        return f"{size}, {self.sessions} sess, {reuse}{rcpt}"


WORKLOADS = [
    Workload("1k-s20", 1 * KB, 20),
    Workload("100k-s20", 100 * KB, 20),
    Workload("1k-s1", 1 * KB, 1),
    Workload("100k-s1", 100 * KB, 1),
    Workload("1k-s20-conn", 1 * KB, 20, persistent=False),
    Workload("100k-s20-conn", 100 * KB, 20, persistent=False),
    Workload("1k-s20-r10", 1 * KB, 20, recipients=10),
]
QUICK_WORKLOADS = ["1k-s20", "100k-s20", "1k-s1", "1k-s20-conn", "1k-s20-r10"]
SMOKE_WORKLOADS = ["1k-s20", "100k-s20"]
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
    #: fixed message counts (no calibration) by size, for --smoke
    fixed_counts: dict[int, int] | None = None


MODES = {
    "full": Mode("full", 5, 3.0, [w.key for w in WORKLOADS], 1000, 25_000_000, 21),
    "quick": Mode("quick", 3, 0.6, QUICK_WORKLOADS, 1000, 25_000_000, 7),
    "smoke": Mode("smoke", 1, 0.2, SMOKE_WORKLOADS, 50, 1_000_000, 1, {KB: 30, 100 * KB: 8}),
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
    counts: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        """Median msgs/s over the rounds, None if nothing was measured."""
        return statistics.median(self.rates) if self.rates else None

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
    limit: float
    higher_is_better: bool = True
    shown: str = ""
    note: str = ""

    @property
    def status(self) -> str:
        """``met``, ``MISSED`` or ``not measured``."""
        if self.value is None:
            return "not measured"
        ok = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        return "met" if ok else "MISSED"


@dataclass
class Run:
    """Everything one invocation measured, for the report and --json."""

    mode: str
    machine: dict[str, str]
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
        for fig in self.figures:
            if (fig.workload, fig.server, fig.metric) == (workload, server, metric):
                return fig.median
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
    error: str | None = None
    e2e_error: str | None = None
    delivered: int | None = None


def main_thread_cpu(peer: Peer) -> float | None:
    """CPU seconds of the main thread of a single-process Python server, else None."""
    root = peer.root_process()
    if root is None or not isinstance(peer, (JdxmailServe, AiosmtpdSink)):
        return None
    with contextlib.suppress(psutil.Error):
        for thread in root.threads():
            if thread.id == root.pid:
                return float(thread.user_time + thread.system_time)
    return None


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

    def client_argv(self, workload: Workload, port: int, count: int) -> list[str]:
        """The load generator's command line for one run."""
        if self.client == "smtp-source":
            argv = ["smtp-source", "-s", str(workload.sessions), "-m", str(count)]
            argv += ["-l", str(workload.size), "-f", load.SENDER, "-t", load.RECIPIENT]
            argv += ["-M", load.HELO]
            if workload.persistent:
                argv.append("-d")
            if workload.recipients > 1:
                argv += ["-r", str(workload.recipients)]
            return [*argv, f"127.0.0.1:{port}"]
        argv = [sys.executable, str(BENCH_DIR / "load.py"), f"127.0.0.1:{port}"]
        argv += ["--messages", str(count), "--sessions", str(workload.sessions)]
        argv += ["--size", str(workload.size), "--recipients", str(workload.recipients)]
        return argv + (["--persistent"] if workload.persistent else [])

    def delivered(self) -> int | None:
        """Messages the upstream sink has received, None if it does not count."""
        return self.upstream.received() if isinstance(self.upstream, SmtpSink) else None

    def settle(self, peer: Peer, limit: float = 30) -> None:
        """Wait until a relay's queue is empty (left over from a slow earlier run)."""
        if not peer.relays or peer.name in self.no_e2e:
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
        cpu0, client0, loop0 = peer.cpu_seconds(), children_cpu(), main_thread_cpu(peer)
        start = time.perf_counter()
        try:
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
        sample.cores = (peer.cpu_seconds() - cpu0) / (end - start)
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
        return
    e2e = run.figure(workload.key, peer.name, "e2e")
    if peer.name in bench.no_e2e:
        e2e.error = bench.no_e2e[peer.name]
    elif sample.e2e is not None:
        e2e.rates.append(sample.e2e)
        e2e.cores.append(sample.cores)
        e2e.counts.append(sample.count)
        if sample.loop_cores is not None:
            e2e.loop_cores.append(sample.loop_cores)
    else:
        e2e.error = sample.e2e_error


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


def run_throughput(
    run: Run, bench: Bench, peers: list[Peer], workloads: list[Workload], mode: Mode,
    only: dict[str, list[str]], log: Callable[[str], None],
) -> None:  # fmt: skip
    """Interleaved rounds per workload: calibrate each server, then A B C A B C …."""
    for workload in workloads:
        active = [p for p in peers if p.name not in only or workload.key in only[p.name]]
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


def evaluate_targets(run: Run) -> None:
    """The issue's targets, as ratios of figures from this run."""
    m = run.median
    run.targets = [
        Target(
            "durable ingest 1 KB x20 ÷ aiosmtpd Sink", "≥ 1.0x",
            _ratio(m("1k-s20", "jdxmail", "ingest"), m("1k-s20", "aiosmtpd Sink", "ingest")), 1.0,
        ),
        Target(
            "durable ingest 1 KB x20 ÷ Postfix ingest", "≈ 2.5x",
            _ratio(m("1k-s20", "jdxmail", "ingest"), m("1k-s20", "postfix", "ingest")), 2.5,
            note="follows from the target above",
        ),
        Target(
            "durable ingest 100 KB x20 ÷ aiosmtpd Sink", "≥ 3.0x",
            _ratio(m("100k-s20", "jdxmail", "ingest"), m("100k-s20", "aiosmtpd Sink", "ingest")),
            3.0,
        ),
        Target(
            "end to end 1 KB x20 ÷ Postfix end to end", "≥ 1.5x",
            _ratio(m("1k-s20", "jdxmail", "e2e"), m("1k-s20", "postfix", "e2e")), 1.5,
        ),
        Target(
            "end to end 100 KB x20 ÷ Postfix end to end", "≥ 1.0x",
            _ratio(m("100k-s20", "jdxmail", "e2e"), m("100k-s20", "postfix", "e2e")), 1.0,
        ),
    ]  # fmt: skip
    for key, size, goal in (("1k-s20", "1 KB", 1.0), ("100k-s20", "100 KB", 3.0)):
        held = m(key, "jdxmail held", "ingest")
        if held is not None:
            run.targets.append(
                Target(
                    f"ingest alone {size} x20 (delivery held) ÷ aiosmtpd Sink",
                    f"(≥ {goal:.1f}x)", _ratio(held, m(key, "aiosmtpd Sink", "ingest")), goal,
                    note="informational: the target above without the delivery engine's load",
                )
            )  # fmt: skip
    w1, w2 = m("1k-s20", "jdxmail w1 held", "ingest"), m("1k-s20", "jdxmail w2 held", "ingest")
    run.targets.append(
        Target(
            "serve --workers 2 ÷ --workers 1 (1 KB x20 ingest, delivery held)", "≥ 1.7x",
            _ratio(w2, w1), 1.7,
            note="" if w1 else run.servers.get("jdxmail w2 held", "not measured"),
        )
    )  # fmt: skip
    r1, r2 = m("1k-s20", "jdxmail w1", "e2e"), m("1k-s20", "jdxmail w2", "e2e")
    if r1 is not None:
        run.targets.append(
            Target(
                "serve --workers 2 ÷ --workers 1 (1 KB x20 end to end)", "(≥ 1.7x)",
                _ratio(r2, r1), 1.7,
                note="informational: one delivery process relays for both workers",
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
    header = (
        f"{'workload':<24} {'server':<14} {'metric':<7} {'msgs/s':>8} {'spread':>7} "
        f"{'cores':>5} {'loop':>5}  {'jdx ingest ÷':>12} {'jdx e2e ÷':>10}"
    )
    lines += [header, "-" * len(header)]
    for workload in workloads:
        figs = [f for f in run.figures if f.workload == workload.key]
        if not figs:
            continue
        jdx_in = run.median(workload.key, "jdxmail", "ingest")
        jdx_e2e = run.median(workload.key, "jdxmail", "e2e")
        first = True
        for fig in figs:
            label = workload.label if first else ""
            first = False
            metric = fig.metric
            if fig.median is None:
                lines.append(f"{label:<24} {fig.server:<14} {metric:<7} {fig.error or '—'}")
                continue
            spread = f"±{fig.spread * 100:.0f}%" if fig.spread is not None else ""
            cores = f"{statistics.median(fig.cores):.2f}" if fig.cores else ""
            loop = f"{statistics.median(fig.loop_cores):.2f}" if fig.loop_cores else ""
            mine = fig.server.startswith("jdxmail")
            r_in = "" if mine else _fmt_ratio(_ratio(jdx_in, fig.median))
            r_e2e = "" if mine else _fmt_ratio(_ratio(jdx_e2e, fig.median))
            lines.append(
                f"{label:<24} {fig.server:<14} {metric:<7} {fig.median:>8,.0f} {spread:>7} "
                f"{cores:>5} {loop:>5}  {r_in:>12} {r_e2e:>10}"
            )
        lines.append("")
    lines.append(
        "cores: CPU seconds of the server's processes per wall second of the run (e2e rows:"
        " until delivered); loop: the same for its main thread (the event loop), whose"
        " ceiling is 1.00"
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
                            wrapper=wrapper, probe=probe)  # fmt: skip
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

        run = Run(mode.name, machine_info(), client, upstream_name, mode.rounds, mode.seconds)
        run.notices = notices
        sink_port = upstream.port
        candidates: list[tuple[str, Peer]] = [
            ("smtp-sink", SmtpSink(workdir)),
            ("aiosmtpd", AiosmtpdSink(workdir)),
            ("postfix", PostfixRelay(workdir, sink_port)),
            ("jdxmail", JdxmailServe(workdir, sink_port)),
        ]
        only: dict[str, list[str]] = {}
        stalled_port: int | None = None
        if "jdxmail" in wanted and have_sink:
            # Ingest alone: the upstream never answers DATA, so the delivery engine's
            # connections stay busy and it does no per-message work during the run.
            # -t 3600 too: with smtp-sink's default of 100 s it dropped those
            # connections mid-run, and the held servers' delivery processes then
            # churned through thousands of queued messages (rescheduling each) while
            # the other servers were being measured.
            stalled = SmtpSink(
                workdir, label="-stalled", extra_args=["-t", "3600", "-w", "3600"]
            )
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
            if key not in wanted:
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
        evaluate_targets(run)
        print(report(run, workloads))
        if args.json:
            Path(args.json).write_text(json.dumps(_jsonable(run), indent=2) + "\n")
        return 0
    finally:
        for peer in reversed(started):
            with contextlib.suppress(Exception):
                peer.stop()
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)


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
