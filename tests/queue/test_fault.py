"""End to end through ``jdxmail serve``: every acknowledged message reaches the relay.

The server is a real subprocess, killed with SIGKILL while clients send and while
the relay is down; the relay is an aiosmtpd server in the test's loop. Messages are
counted by Message-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from tests.queue.conftest import StartUpstream, Upstream, relay_for

from jdxmail.settings.model import PathSettings, RelaySettings, Settings, SmtpServerSettings

ADDRESS = re.compile(r"smtp://(\[[^\]]+\]|[\d.]+):(\d+)")
MESSAGE_ID = re.compile(rb"(?im)^Message-ID:\s*<([^>]+)>")


class Serve:
    """A ``jdxmail serve`` subprocess on a free port; its log goes to a file."""

    def __init__(
        self, cwd: Path, config: Path, index: int, *, extra: Sequence[str] = (), group: bool = False
    ) -> None:
        """Start it with *extra* arguments; *group*: in a process group of its own."""
        self.log = cwd / f"serve-{index}.err"
        argv = [sys.executable, "-m", "jdxmail", "serve", "--port", "0", "--config", str(config)]
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [*argv, *extra],
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=group,
            )
        self.port = 0
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            found = ADDRESS.search(line)
            if found:
                self.port = int(found.group(2))
                break
        if not self.port:
            self.kill()
            raise AssertionError(f"serve did not start: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def terminate(self) -> int:
        """SIGTERM and wait; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def _message(n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "app@jdx.test"
    message["To"] = "someone@example.net"
    message["Subject"] = f"fault {n}"
    message["Message-ID"] = f"<fault-{n}@jdx.test>"
    message.set_content(f"message {n}\n" + "x" * (n * 53 % 4000))
    return message


async def _send(port: int, n: int) -> bool:
    """Send message *n*; True when the server answered 250."""
    try:
        await aiosmtplib.send(_message(n), hostname="127.0.0.1", port=port, timeout=10)
    except (aiosmtplib.SMTPException, OSError):
        return False
    return True


def _received_ids(upstream: Upstream) -> set[str]:
    ids = set()
    for item in upstream.received:
        found = MESSAGE_ID.search(item.data)
        if found:
            ids.add(found.group(1).decode())
    return ids


async def test_sigkill_and_relay_outage_lose_nothing(
    tmp_path: Path, upstream_factory: StartUpstream
) -> None:
    """SIGKILL during a stream of mail and a relay outage: every 250'd message arrives."""
    upstream = await upstream_factory()
    relay_port = upstream.port
    relay: RelaySettings = relay_for(upstream, name="up")
    settings = Settings(
        smtp_server=SmtpServerSettings(
            host_name="jdx.test", trusted_networks=["127.0.0.0/8"], local_domains=["jdx.test"]
        ),
        relay_servers=[relay],
        paths=PathSettings(spool=tmp_path / "spool", mailbox=tmp_path / "mailbox"),
    )
    config = tmp_path / "appsettings.json"
    config.write_text(json.dumps(settings.model_dump(mode="json", by_alias=True)))
    acked: set[str] = set()
    counter = 0
    index = 0

    async def start() -> Serve:
        nonlocal index
        index += 1
        return await asyncio.to_thread(Serve, tmp_path, config, index)

    async def stream(server: Serve, count: int) -> None:
        nonlocal counter
        for _ in range(count):
            counter += 1
            if await _send(server.port, counter):
                acked.add(f"fault-{counter}@jdx.test")

    async def stream_until_killed(server: Serve, kill_after: int) -> None:
        """Four clients send at once; SIGKILL once *kill_after* more were acknowledged."""
        target = len(acked) + kill_after

        async def client() -> None:
            nonlocal counter
            while server.proc.poll() is None:
                counter += 1
                n = counter
                if await _send(server.port, n):
                    acked.add(f"fault-{n}@jdx.test")
                    if len(acked) >= target and server.proc.poll() is None:
                        server.kill()

        await asyncio.gather(*(client() for _ in range(4)))

    first = await start()
    await stream(first, 10)
    await stream_until_killed(first, 25)

    second = await start()
    await upstream.close()
    await stream(second, 10)
    await stream_until_killed(second, 10)

    third = await start()
    before_outage = upstream
    upstream = await upstream_factory(port=relay_port)

    def arrived() -> set[str]:
        return _received_ids(before_outage) | _received_ids(upstream)

    (tmp_path / "spool" / "flush").touch()
    await stream(third, 10)
    async with asyncio.timeout(90):
        while not acked <= arrived():
            upstream.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(upstream.arrived.wait(), timeout=2)
            if not acked <= arrived():
                (tmp_path / "spool" / "flush").touch()
    assert third.terminate() == 0
    assert len(acked) >= 50
    assert acked <= arrived()
    log = "".join(p.read_text() for p in sorted(tmp_path.glob("serve-*.err")))  # noqa: ASYNC240
    assert "Traceback" not in log
    assert re.search(r"delivery engine: \d+ queued", log)
