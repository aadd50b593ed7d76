"""Soak: mixed real clients and faults against one ``jdxmail serve`` for N minutes.

    python bench/soak.py --minutes 30 [--dir DIR]

A relaying serve (its delivery process and web console included) relays to an upstream
that this script runs on loopback and that counts what it receives. For the whole run:

- clients: smtplib (threads, one message per connection and several per connection),
  swaks and Postfix's smtp-source (when installed) send mail with known Message-IDs or
  envelope senders; each acknowledged (250) message is recorded;
- idle clients hold connections and say nothing; slowloris clients trickle a byte a
  second (both within MaxConnections; the server must close them at its deadlines);
- faults on a schedule: serve SIGKILLed (with its delivery process) and restarted on
  the same spool, the upstream down (refusing connections) and slow (seconds per
  message).

Every 10 s a line gives messages sent / acknowledged / delivered and serve's RSS and
open files (serve and its children). At the end faults stop, the queue drains, and the
totals are printed: lost = acknowledged but never delivered (must be 0); duplicates are
the at-least-once window (a message relayed in the instant before a SIGKILL).
Loopback only; bounded in time; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from aiosmtpd.smtp import SMTP, Envelope, Session

RECIPIENT = "far@example.org"
MESSAGE_ID = re.compile(rb"Message-ID: <(soak-[^>]+)>", re.IGNORECASE)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Tally:
    """What was sent, acknowledged and delivered."""

    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    #: smtp-source batches: envelope sender -> messages acknowledged
    batches: Counter[str] = field(default_factory=Counter)
    delivered: Counter[str] = field(default_factory=Counter)
    delivered_senders: Counter[str] = field(default_factory=Counter)


class Upstream:
    """The relay jdxmail hands mail to: counts Message-IDs; can be down or slow."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.port = free_port()
        self.delay = 0.0
        self.server: asyncio.Server | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Count the message (by Message-ID, or by sender for smtp-source)."""
        if self.delay:
            await asyncio.sleep(self.delay)
        content = envelope.original_content or b""
        found = MESSAGE_ID.search(content)
        if found:
            self.tally.delivered[found.group(1).decode()] += 1
        else:
            self.tally.delivered_senders[envelope.mail_from or ""] += 1
        return "250 2.0.0 OK soak"

    async def up(self) -> None:
        """Listen (again)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, hostname="upstream.soak"), "127.0.0.1", self.port
        )

    async def down(self) -> None:
        """Stop listening: jdxmail's connections are refused and mail waits."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


class Serve:
    """The serve process under test, restartable on the same ports and spool."""

    def __init__(self, work: Path, upstream: Upstream) -> None:
        self.work = work
        self.port, self.web_port = free_port(), free_port()
        self.config = work / "appsettings.json"
        self.config.write_text(
            json.dumps(
                {
                    "SmtpServer": {
                        "Port": self.port,
                        "TrustedNetworks": ["127.0.0.0/8"],
                        "TimeOut": 10,
                        "MaxConnections": 100,
                    },
                    "RelayServer": {"Host": "127.0.0.1", "Port": upstream.port, "UseTls": False},
                    "Delivery": {"RetryDelay": 1, "RetryMaxDelay": 5},
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start serve and wait until it accepts."""
        err = (self.work / "serve.err").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jdxmail", "serve", "--config", str(self.config),
             "--web-port", str(self.web_port)],
            cwd=self.work, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise SystemExit("serve did not start; see serve.err")

    def kill(self) -> None:
        """SIGKILL serve and its delivery process."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def figures(self) -> tuple[float, int]:
        """RSS (MB) and open files of serve and its children."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0, 0
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs) / 1e6
            fds = sum(p.num_fds() for p in procs)
        except psutil.Error:
            return 0.0, 0
        return rss, fds


class Soak:
    """The run: clients, faults, sampling, the final account."""

    def __init__(self, work: Path, minutes: float, pause: float) -> None:
        #: seconds each smtplib client waits between its sessions (the load's knob)
        self.pause = pause
        self.tally = Tally()
        self.upstream = Upstream(self.tally)
        self.serve = Serve(work, self.upstream)
        self.end = time.monotonic() + minutes * 60
        self.ids = itertools.count()
        self.samples: list[tuple[float, float, int]] = []
        self.started = time.monotonic()

    def running(self) -> bool:
        """True until the run's time is up."""
        return time.monotonic() < self.end

    # -- clients ----------------------------------------------------------------------

    def _smtplib_batch(self, count: int) -> None:
        ids = [f"soak-{next(self.ids)}@soak.test" for _ in range(count)]
        self.tally.sent += count
        with smtplib.SMTP("127.0.0.1", self.serve.port, timeout=15) as client:
            for message_id in ids:
                client.sendmail(
                    "app@soak.test",
                    [RECIPIENT],
                    f"Message-ID: <{message_id}>\r\nSubject: soak\r\n\r\n{'x' * 700}\r\n",
                )
                self.tally.acknowledged.add(message_id)

    async def smtplib_client(self, per_connection: int) -> None:
        """Send with smtplib in a thread, *per_connection* messages per session."""
        while self.running():
            with contextlib.suppress(OSError, smtplib.SMTPException):
                await asyncio.to_thread(self._smtplib_batch, per_connection)
            await asyncio.sleep(self.pause)

    async def swaks_client(self) -> None:
        """One message per swaks run."""
        while self.running() and shutil.which("swaks"):
            message_id = f"soak-{next(self.ids)}@soak.test"
            self.tally.sent += 1
            proc = await asyncio.create_subprocess_exec(
                "swaks", "--server", f"127.0.0.1:{self.serve.port}", "--to", RECIPIENT,
                "--from", "swaks@soak.test", "--header", f"Message-ID: <{message_id}>",
                "--timeout", "15",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await proc.wait() == 0:
                self.tally.acknowledged.add(message_id)
            await asyncio.sleep(0.5)

    async def smtp_source_client(self) -> None:
        """Batches of 50 by Postfix's smtp-source, each with its own envelope sender."""
        binary = shutil.which("smtp-source", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
        if binary is None:
            return
        for batch in itertools.count():
            if not self.running():
                return
            sender = f"batch{batch}@source.soak"
            self.tally.sent += 50
            proc = await asyncio.create_subprocess_exec(
                binary, "-s", "5", "-m", "50", "-l", "2048", "-f", sender, "-t", RECIPIENT,
                f"127.0.0.1:{self.serve.port}",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            # smtp-source exits non-zero on any failure; only a clean batch is counted
            # as acknowledged (a batch cut by a SIGKILL is sent but not counted)
            if await proc.wait() == 0:
                self.tally.batches[sender] = 50
            await asyncio.sleep(2)

    async def idle_client(self) -> None:
        """Connect and say nothing; the server closes at TimeOut; connect again."""
        while self.running():
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.serve.port)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(), 30)
                writer.close()
            await asyncio.sleep(1)

    async def slowloris_client(self) -> None:
        """Trickle a command a byte a second; the line deadline must close it."""
        while self.running():
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.serve.port)
                await reader.readline()
                for byte in itertools.cycle(b"EHLO slow.soak"):
                    if reader.at_eof() or not self.running():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1)
                writer.close()
            await asyncio.sleep(1)

    # -- faults -----------------------------------------------------------------------

    async def faults(self) -> None:
        """Every 90 s one fault in turn: SIGKILL serve, upstream down 20 s, slow 20 s."""
        for turn in itertools.count():
            for _ in range(90):  # a second at a time, so the run's end is not overshot
                if not self.running():
                    return
                await asyncio.sleep(1)
            kind = turn % 3
            if kind == 0:
                self.log("fault: SIGKILL serve, restart")
                await asyncio.to_thread(self.serve.kill)
                await asyncio.to_thread(self.serve.start)
                self.serve.restarts += 1
            elif kind == 1:
                self.log("fault: upstream down for 20 s")
                await self.upstream.down()
                await asyncio.sleep(20)
                await self.upstream.up()
            else:
                self.log("fault: upstream slow (2 s a message) for 20 s")
                self.upstream.delay = 2.0
                await asyncio.sleep(20)
                self.upstream.delay = 0.0

    # -- reporting --------------------------------------------------------------------

    def delivered(self) -> int:
        """Messages the upstream received (once each)."""
        return len(self.tally.delivered) + sum(self.tally.delivered_senders.values())

    def acknowledged(self) -> int:
        """Messages serve acknowledged with 250."""
        return len(self.tally.acknowledged) + sum(self.tally.batches.values())

    def log(self, text: str) -> None:
        """A line with the minute of the run."""
        print(f"[{(time.monotonic() - self.started) / 60:6.2f} min] {text}", flush=True)

    async def sampler(self) -> None:
        """Every 10 s: counts, RSS and open files."""
        while self.running():
            rss, fds = self.serve.figures()
            self.samples.append((time.monotonic() - self.started, rss, fds))
            self.log(
                f"sent {self.tally.sent}  acknowledged {self.acknowledged()}  "
                f"delivered {self.delivered()}  RSS {rss:.1f} MB  open files {fds}"
            )
            await asyncio.sleep(10)

    def lost(self) -> tuple[list[str], list[str]]:
        """Acknowledged Message-IDs and smtp-source batches the upstream lacks."""
        ids = sorted(self.tally.acknowledged - set(self.tally.delivered))
        batches = [s for s, n in self.tally.batches.items() if self.tally.delivered_senders[s] < n]
        return ids, batches

    async def run(self) -> int:
        """The whole soak; exit status 1 when anything acknowledged was lost."""
        await self.upstream.up()
        await asyncio.to_thread(self.serve.start)
        self.log(f"serve on 127.0.0.1:{self.serve.port}, upstream on {self.upstream.port}")
        tasks: list[Any] = [
            self.smtplib_client(1),
            self.smtplib_client(1),
            self.smtplib_client(10),
            self.swaks_client(),
            self.smtp_source_client(),
            *(self.idle_client() for _ in range(5)),
            *(self.slowloris_client() for _ in range(5)),
            self.faults(),
            self.sampler(),
        ]
        await asyncio.gather(*tasks)
        self.log("clients and faults stopped; waiting up to 180 s for the queue to drain")
        self.upstream.delay = 0.0
        if self.upstream.server is None:
            await self.upstream.up()
        deadline = time.monotonic() + 180
        while any(self.lost()) and time.monotonic() < deadline:  # noqa: ASYNC110 (counts, no event)
            await asyncio.sleep(1)
        rss, fds = self.serve.figures()
        await asyncio.to_thread(self.serve.stop)
        await self.upstream.down()
        return self.report(rss, fds)

    def report(self, rss: float, fds: int) -> int:
        """Print the totals; 1 when mail was lost."""
        ids, batches = self.lost()
        twice = sum(1 for n in self.tally.delivered.values() if n > 1)
        first = [s for s in self.samples if s[0] >= 60][:1] or self.samples[:1]
        print("\n== soak result")
        print(f"minutes             {(time.monotonic() - self.started) / 60:.1f}")
        print(f"serve restarts      {self.serve.restarts} (SIGKILL)")
        print(f"sent                {self.tally.sent}")
        print(f"acknowledged        {self.acknowledged()}")
        print(f"delivered           {self.delivered()}")
        print(f"lost                {len(ids)} messages, {len(batches)} smtp-source batches")
        print(f"delivered twice     {twice}")
        if first:
            print(f"RSS after 1 min     {first[0][1]:.1f} MB, at the end {rss:.1f} MB")
            print(f"open files 1 min    {first[0][2]}, at the end {fds}")
        if ids or batches:
            print("lost:", ids[:20], batches[:5])
            return 1
        return 0


def main() -> None:
    """Parse arguments and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    parser.add_argument(
        "--pause", type=float, default=0.02, help="seconds between smtplib sessions (load)"
    )
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="jdxmail-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory {work}", flush=True)
    sys.exit(asyncio.run(Soak(work, args.minutes, args.pause).run()))


if __name__ == "__main__":
    main()
