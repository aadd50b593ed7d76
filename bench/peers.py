"""The servers the benchmark drives, each started as its own process(es) on 127.0.0.1.

Every peer has the same small lifecycle: ``start()`` (raises ``Unavailable`` with the
reason when it cannot run here), ``stop()``, ``port``, ``processes()`` for CPU and
memory accounting, and, for relays, ``queued()`` (messages still in its queue).
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"


class Unavailable(Exception):
    """This server cannot be measured here; the message says why and how to fix it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait until something accepts connections on *port*; raise Unavailable if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return
        time.sleep(0.05)
    raise Unavailable(f"nothing listened on port {port} within {timeout:.0f} s")


def tail(path: Path, lines: int = 3) -> str:
    """The last *lines* lines of a text file, joined with ' | ' (empty if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def tree_cpu_seconds(root: psutil.Process) -> float:
    """CPU seconds used by *root*, its live descendants and every child they reaped.

    Reaped children are in their parent's children_* times, live ones are added
    directly, so a difference of two readings stays right when children exit between.
    """
    total = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_rss(root: psutil.Process) -> int:
    """Resident memory of *root* and its descendants, in bytes."""
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


class Peer(abc.ABC):
    """A server under test: started once, loaded by the client many times."""

    #: name shown in the table
    name = "peer"
    #: True when the server relays to the upstream sink (so it has an end-to-end figure)
    relays = False

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server; raise Unavailable with the reason if it cannot run."""

    def root_process(self) -> psutil.Process | None:
        """The process whose tree is this server (for CPU and memory)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far (all its processes)."""
        root = self.root_process()
        return tree_cpu_seconds(root) if root is not None else 0.0

    def rss(self) -> int:
        """Resident memory of the server's processes now."""
        root = self.root_process()
        return tree_rss(root) if root is not None else 0

    def queued(self) -> int | None:
        """Messages still queued (relays), None when unknown."""
        return None

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.root_process() is not None

    def stop(self) -> None:
        """Stop the server and wait for it (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def _spawn(self, argv: list[str], log_name: str, **kwargs: object) -> subprocess.Popen[bytes]:
        log = open(self.workdir / log_name, "wb")  # noqa: SIM115 - the child keeps it open
        try:
            return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kwargs
            )
        finally:
            log.close()


class SmtpSink(Peer):
    """Postfix's ``smtp-sink``: a C server that throws mail away, the physical limit.

    With *counting* it prints a running message counter to a file, which is how the
    benchmark knows when a relay has delivered everything upstream.
    """

    name = "smtp-sink"

    def __init__(
        self,
        workdir: Path,
        *,
        counting: bool = False,
        label: str = "",
        extra_args: list[str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.counting = counting
        self.log_name = f"smtp-sink{label}.out"
        self.extra_args = extra_args or []

    def start(self) -> None:
        """Start smtp-sink on a free loopback port."""
        exe = shutil.which("smtp-sink")
        if exe is None:
            raise Unavailable("smtp-sink not found: apt-get install postfix")
        self.port = free_port()
        argv = [exe]
        if self.counting:
            argv.append("-c")
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += [*self.extra_args, "-m", "1024", f"{LOOPBACK}:{self.port}", "1024"]
        self.proc = self._spawn(argv, self.log_name)
        wait_listening(self.port, self.proc, 10)

    def received(self) -> int:
        """Messages received so far (counting sinks only): the last ``mesg=N`` printed."""
        path = self.workdir / self.log_name
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 200))
                chunk = f.read()
        except OSError:
            return 0
        found = re.findall(rb"mesg=(\d+)", chunk)
        return int(found[-1]) if found else 0


class AiosmtpdSink(Peer):
    """aiosmtpd's ``Sink`` handler in its own process: the Python library ceiling."""

    name = "aiosmtpd Sink"

    def start(self) -> None:
        """Start ``python -m aiosmtpd -c aiosmtpd.handlers.Sink`` on a free port."""
        try:
            import aiosmtpd  # noqa: F401, PLC0415
        except ImportError:
            raise Unavailable("aiosmtpd is not installed: pip install aiosmtpd") from None
        self.port = free_port()
        argv = [
            sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink",
            "-l", f"{LOOPBACK}:{self.port}",
        ]  # fmt: skip
        self.proc = self._spawn(argv, "aiosmtpd.out")
        wait_listening(self.port, self.proc, 20)


POSTFIX_MAIN = """\
# jdxmail benchmark: Postfix as a loopback smarthost relay, own config and queue
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.invalid
mydomain = bench.invalid
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink_port}
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_peername_lookup = no
smtp_host_lookup = native
message_size_limit = 67108864
maillog_file_prefixes = {root}
maillog_file = {root}/postfix.log
biff = no
smtputf8_enable = no
"""

# chroot off everywhere ("n" in column 5), so the private queue needs no copied /etc.
POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


class PostfixRelay(Peer):
    """Postfix ``smtpd`` as a smarthost relay (``relayhost`` = the upstream sink).

    Its own config and queue directories under the work dir, every service unchrooted,
    listening on a loopback port; defaults otherwise (fsync before 250, up to 20
    parallel upstream connections, connection cache on demand).
    """

    name = "postfix"
    relays = True

    def __init__(self, workdir: Path, sink_port: int) -> None:
        super().__init__(workdir)
        self.sink_port = sink_port
        self.root = workdir / "postfix"
        self.conf = self.root / "conf"

    def _postfix(self, *args: str, timeout: float = 60) -> tuple[int, str]:
        # postfix(1) prints its errors only when stderr is a terminal, so give it one.
        leader, follower = pty.openpty()
        try:
            proc = subprocess.run(
                ["postfix", "-c", str(self.conf), *args],
                stdin=subprocess.DEVNULL,
                stdout=follower,
                stderr=follower,
                timeout=timeout,
                check=False,
            )
        finally:
            os.close(follower)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(leader, 65536):
                out += chunk
        os.close(leader)
        return proc.returncode, out.decode(errors="replace").strip()

    def start(self) -> None:
        """Write main.cf/master.cf, ``postfix -c DIR start`` and wait for the port."""
        if shutil.which("postfix") is None:
            raise Unavailable("postfix not found: apt-get install postfix")
        if os.geteuid() != 0:
            raise Unavailable("postfix must be started as root (it switches to its own user)")
        try:
            import pwd  # noqa: PLC0415

            pwd.getpwnam("postfix")
        except KeyError:
            raise Unavailable("no 'postfix' user: apt-get install postfix") from None
        self.port = free_port()
        self.conf.mkdir(parents=True)
        (self.root / "data").mkdir()
        (self.root / "queue").mkdir()
        shutil.chown(self.root / "data", "postfix")
        for parent in (self.workdir, self.root):
            parent.chmod(0o755)
        (self.conf / "main.cf").write_text(
            POSTFIX_MAIN.format(root=self.root, sink_port=self.sink_port)
        )
        (self.conf / "master.cf").write_text(POSTFIX_MASTER.format(port=self.port))
        code, out = self._postfix("start")
        if code != 0:
            raise Unavailable(f"postfix start failed: {out or tail(self.root / 'postfix.log')}")
        wait_listening(self.port, None, 20)

    def root_process(self) -> psutil.Process | None:
        """The Postfix master process (from its pid file)."""
        try:
            pid = int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
            return psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.Error):
            return None

    def queued(self) -> int:
        """Queue files in maildrop/incoming/active/deferred/hold."""
        count = 0
        for name in POSTFIX_QUEUES:
            for _, _, files in os.walk(self.root / "queue" / name):
                count += len(files)
        return count

    def deferred(self) -> int:
        """Queue files Postfix deferred (a delivery problem)."""
        return sum(len(files) for _, _, files in os.walk(self.root / "queue" / "deferred"))

    def stop(self) -> None:
        """``postfix stop``, then wait for the master to exit."""
        master = self.root_process()
        if not self.conf.exists():
            return
        self._postfix("stop")
        if master is not None:
            with contextlib.suppress(psutil.Error):
                master.wait(15)
            with contextlib.suppress(psutil.Error):
                master.kill()


#: RelayServer.TimeOut of a server whose delivery is held (the key's maximum, s)
HELD_RELAY_TIMEOUT = 3600


class JdxmailServe(Peer):
    """``jdxmail serve`` with a config made for the benchmark, relaying to the sink."""

    name = "jdxmail"
    relays = True

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        *,
        label: str = "jdxmail",
        workers: int | None = None,
        max_connections: int = 1100,
        wrapper: list[str] | None = None,
        probe: Path | None = None,
        extra_args: list[str] | None = None,
        relays: bool = True,
        web: bool = True,
        inbox: bool = False,
    ) -> None:
        super().__init__(workdir)
        self.name = label
        #: False for a variant whose delivery is held on purpose (ingest only)
        self.relays = relays and not inbox
        #: the dev inbox a new user meets: no relay, mail stored in local mailboxes
        self.inbox = inbox
        #: the web console (and its /metrics) on a free port, as serve runs by default;
        #: False turns it off (``JDXMAIL_WebUI__Enabled=false``), no metrics listener
        self.web = web
        #: the console's /metrics address once started (None: console off or not started)
        self.metrics_url: str | None = None
        self.extra_args = extra_args or []
        #: where bench/serve_probe.py writes its timings (run through it when set)
        self.probe = probe
        self.sink_port = sink_port
        self.workers = workers
        self.max_connections = max_connections
        self.wrapper = wrapper or []
        self.root = workdir / label.replace(" ", "-")
        self.spool = self.root / "spool"

    def config(self) -> dict[str, object]:
        """The settings file contents (see docs/configuration.md for the keys)."""
        config: dict[str, object] = {
            "SmtpServer": {
                "Enabled": True,
                "BindAddress": LOOPBACK,
                "HostName": "jdxmail.bench.invalid",
                "TrustedNetworks": ["127.0.0.0/8"],
                "MaxConnections": self.max_connections,
                "MaxMessageSize": 64 * 1024 * 1024,
                "MaxRecipients": 100,
                "TimeOut": 120,
            },
            "Paths": {
                "Spool": str(self.spool),
                "Mailbox": str(self.root / "mailbox"),
                "Logs": str(self.root / "logs"),
            },
        }
        if not self.inbox:
            relay: dict[str, object] = {"Host": LOOPBACK, "Port": self.sink_port, "UseTls": False}
            if not self.relays:
                # Delivery held on purpose (a relay that never answers the data): its
                # sessions must stay stalled for the whole run (~16 min), not time out
                # after SmtpServer.TimeOut and open the breaker, reschedule and log
                # while the server is measured. 3600 s is the key's maximum.
                relay["TimeOut"] = HELD_RELAY_TIMEOUT
            config["RelayServer"] = relay
        return config

    def start(self) -> None:
        """Start ``jdxmail serve --config … --port 0`` and read the bound port."""
        argv = jdxmail_command()
        if argv is None:
            raise Unavailable("jdxmail is not installed in this Python: pip install -e .")
        env = dict(os.environ)
        if self.probe is not None:
            argv = [sys.executable, str(Path(__file__).resolve().parent / "serve_probe.py")]
            env["JDXMAIL_PROBE_OUT"] = str(self.probe)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "appsettings.json"
        config.write_text(json.dumps(self.config(), indent=2))
        argv = [*self.wrapper, *argv, "serve", "--config", str(config), "--port", "0"]
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        if self.web:
            argv += ["--web-port", "0"]
        else:
            env["JDXMAIL_WebUI__Enabled"] = "false"
            env["JDXMAIL_Metrics__Enabled"] = "false"
        argv += self.extra_args
        out = self.root / "serve.out"
        self.proc = self._spawn(argv, str(out.relative_to(self.workdir)), env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = _read(out)
            found = re.search(r"listening on smtp://127\.0\.0\.1:(\d+)", text)
            if found:
                self.port = int(found.group(1))
                console = re.search(r"web console on (http://[^/\s]+)", text)
                self.metrics_url = f"{console.group(1)}/metrics" if console else None
                return
            if self.proc.poll() is not None:
                raise Unavailable(
                    f"jdxmail serve exited with status {self.proc.returncode}: {tail(out)}"
                )
            time.sleep(0.05)
        raise Unavailable(f"jdxmail serve did not report a listening port in 30 s: {tail(out)}")

    def root_process(self) -> psutil.Process | None:
        """The serve process (under a wrapper such as py-spy: the wrapper's child)."""
        root = super().root_process()
        if root is None or not self.wrapper:
            return root
        with contextlib.suppress(psutil.Error):
            children = root.children()
            if children:
                return children[0]
        return None

    def stop(self) -> None:
        """SIGTERM the serve process (not a wrapper, which must see it exit) and wait."""
        if self.wrapper:
            serve = self.root_process()
            if serve is not None:
                with contextlib.suppress(psutil.Error):
                    serve.terminate()
            if self.proc is not None:
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                self.proc = None
            return
        super().stop()

    def cpu_split(self) -> tuple[float, float]:
        """CPU seconds so far of (the server and its workers, the delivery process)."""
        root = self.root_process()
        if root is None:
            return 0.0, 0.0
        total = tree_cpu_seconds(root)
        delivery = 0.0
        with contextlib.suppress(psutil.Error):
            for proc in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "jdxmail.queue.deliverer" in " ".join(proc.cmdline()):
                        delivery += tree_cpu_seconds(proc)
        return total - delivery, delivery

    def queued(self) -> int:
        """Messages in the spool's queue/ folder (removed once delivered or failed)."""
        try:
            return sum(1 for _ in os.scandir(self.spool / "queue"))
        except OSError:
            return 0

    def failed(self) -> int:
        """Messages the delivery engine gave up on (spool failed/ folder)."""
        try:
            return sum(1 for e in os.scandir(self.spool / "failed") if e.name.endswith(".msg"))
        except OSError:
            return 0


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def jdxmail_command() -> list[str] | None:
    """How to run jdxmail from this Python: its console script, else None."""
    script = Path(sys.executable).parent / "jdxmail"
    if script.exists():
        return [str(script)]
    found = shutil.which("jdxmail")
    return [found] if found else None


def serve_supports(option: str) -> bool:
    """True when ``jdxmail serve --help`` lists *option* (e.g. ``--workers``)."""
    argv = jdxmail_command()
    if argv is None:
        return False
    try:
        out = subprocess.run(
            [*argv, "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in out.stdout
