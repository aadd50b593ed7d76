"""``serve --delivery process``: the delivery engine runs in a child process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiosmtplib
import psutil
import pytest
from tests.queue.conftest import StartUpstream, Upstream

from jdxmail.queue.admin import flush_queue
from jdxmail.server.delivery import DeliveryProcess
from jdxmail.server.errors import ServerError

ADDRESS = re.compile(rb"listening on smtp://127\.0\.0\.1:(\d+)")
DELIVERER = "jdxmail.queue.deliverer"


class Serve:
    """A ``jdxmail serve`` subprocess started in the test's event loop."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, err: Path) -> None:
        self.proc = proc
        self.port = port
        self.err = err

    def deliverers(self) -> list[psutil.Process]:
        """The delivery processes below this serve."""
        tree = psutil.Process(self.proc.pid).children(recursive=True)
        return [p for p in tree if DELIVERER in " ".join(p.cmdline())]

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send *sig* and return the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(30):
            return await self.proc.wait()


StartServe = Callable[..., Awaitable[Serve]]


@pytest.fixture
async def start_serve(tmp_path: Path) -> AsyncIterator[StartServe]:
    """Start serve with a config relaying to an upstream; killed after the test."""
    started: list[Serve] = []

    async def start(upstream: Upstream, *args: str) -> Serve:
        config = tmp_path / "appsettings.json"
        config.write_text(
            json.dumps(
                {
                    "SmtpServer": {"TrustedNetworks": ["127.0.0.0/8"]},
                    "RelayServer": {"Host": "127.0.0.1", "Port": upstream.port, "UseTls": False},
                }
            ),
            encoding="utf-8",
        )
        err = tmp_path / f"serve{len(started)}.err"
        with err.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "jdxmail",
                "serve",
                "--config",
                str(config),
                "--port",
                "0",
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=sink,
                cwd=tmp_path,
                start_new_session=True,  # its own process group, for killpg
            )
        assert proc.stdout is not None
        port = 0
        async with asyncio.timeout(30):
            while line := await proc.stdout.readline():
                if found := ADDRESS.search(line):
                    port = int(found.group(1))
                    break
        assert port, err.read_text()
        serve = Serve(proc, port, err)
        started.append(serve)
        return serve

    yield start
    for serve in started:
        if serve.proc.returncode is None:
            serve.proc.kill()
            await serve.proc.wait()


async def send(port: int, number: int) -> None:
    """Send one small message to the server on *port*."""
    await aiosmtplib.send(
        f"Subject: test {number}\r\n\r\nbody {number}\r\n",
        sender="app@localhost",
        recipients=["far@example.org"],
        hostname="127.0.0.1",
        port=port,
        start_tls=False,
        use_tls=False,
    )


async def test_serve_relays_through_its_delivery_process(
    start_serve: StartServe, upstream_factory: StartUpstream
) -> None:
    """With relays, serve starts one delivery process; mail reaches the relay; SIGTERM ends both."""
    upstream = await upstream_factory()
    serve = await start_serve(upstream)
    deliverers = serve.deliverers()
    assert len(deliverers) == 1
    assert serve.proc.stdout is not None
    said = await serve.proc.stdout.readline()
    assert f"a delivery process (PID {deliverers[0].pid}) relays to 127.0.0.1:{upstream.port}" in (
        said.decode()
    )
    await send(serve.port, 1)
    async with asyncio.timeout(10):
        await upstream.wait_for(1)
    assert b"Subject: test 1" in upstream.received[0].data
    assert await serve.stop() == 0
    _, alive = psutil.wait_procs(deliverers, timeout=10)
    assert not alive
    log = serve.err.read_text()
    assert f"delivery process started (PID {deliverers[0].pid})" in log
    assert f"delivery process (PID {deliverers[0].pid}) stopped (exit status 0)" in log
    assert log.count("0 queued, 0 failed") == 1  # the spool is announced once


async def test_workers_share_one_delivery_process(
    start_serve: StartServe, upstream_factory: StartUpstream
) -> None:
    """With --workers 2 there is one delivery process, and it relays what both store."""
    upstream = await upstream_factory()
    serve = await start_serve(upstream, "--workers", "2")
    assert len(serve.deliverers()) == 1
    for number in range(20):
        await send(serve.port, number)
    async with asyncio.timeout(10):
        await upstream.wait_for(20)
    subjects = {re.search(rb"Subject: test \d+", m.data) for m in upstream.received}
    assert {s.group() for s in subjects if s} == {f"Subject: test {n}".encode() for n in range(20)}
    assert await serve.stop() == 0


async def test_delivery_process_death_stops_serve_with_an_error(
    start_serve: StartServe, upstream_factory: StartUpstream
) -> None:
    """If the delivery process dies, serve says so and exits 1 instead of taking mail on."""
    upstream = await upstream_factory()
    serve = await start_serve(upstream)
    serve.deliverers()[0].kill()
    async with asyncio.timeout(20):
        code = await serve.proc.wait()
    assert code == 1
    assert "the delivery process" in serve.err.read_text()
    assert "ended unexpectedly" in serve.err.read_text()


@pytest.mark.parametrize("args", [(), ("--workers", "2")])
async def test_sigterm_to_the_whole_group_is_a_clean_stop(
    start_serve: StartServe, upstream_factory: StartUpstream, args: tuple[str, ...]
) -> None:
    """SIGTERM to every process at once (systemd's default stop) is a clean stop.

    The delivery process ends at once while serve still lets a client finish its
    transaction: serve must not take that for a crash.
    """
    upstream = await upstream_factory()
    serve = await start_serve(upstream, *args)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=serve.port, start_tls=False)
    await client.connect()
    await client.mail("app@localhost")
    await client.rcpt("far@example.org")
    deliverer = serve.deliverers()[0]
    os.killpg(serve.proc.pid, signal.SIGTERM)
    await asyncio.to_thread(deliverer.wait, 10)
    await asyncio.sleep(1.5)  # longer than serve waits for its own stop to begin
    reply = await client.data(b"Subject: late\r\n\r\nstill taken\r\n")
    assert reply.code == 250
    async with asyncio.timeout(30):
        assert await serve.proc.wait() == 0
    assert "ended unexpectedly" not in serve.err.read_text()


@pytest.mark.parametrize("args", [(), ("--workers", "2")])
async def test_killed_serve_takes_its_processes_along(
    start_serve: StartServe, upstream_factory: StartUpstream, args: tuple[str, ...]
) -> None:
    """SIGKILL of serve leaves no worker and no delivery process running on the spool."""
    upstream = await upstream_factory()
    serve = await start_serve(upstream, *args)
    below = psutil.Process(serve.proc.pid).children(recursive=True)
    assert len(below) == 1 + (2 if args else 0)
    assert await serve.stop(signal.SIGKILL) == -signal.SIGKILL
    _, alive = psutil.wait_procs(below, timeout=15)
    assert not alive


async def test_inline_delivery_has_no_child_and_still_relays(
    start_serve: StartServe, upstream_factory: StartUpstream
) -> None:
    """--delivery inline relays from the server process itself."""
    upstream = await upstream_factory()
    serve = await start_serve(upstream, "--delivery", "inline")
    assert serve.deliverers() == []
    await send(serve.port, 7)
    async with asyncio.timeout(10):
        await upstream.wait_for(1)
    assert await serve.stop() == 0


async def test_delivery_process_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    """A delivery process that cannot read its config makes start() fail with the fix."""
    process = DeliveryProcess(tmp_path / "missing.json", grace=1.0, on_exit=lambda: None)
    with pytest.raises(ServerError) as caught:
        await process.start()
    assert "cannot read" in str(caught.value)
    assert "validate-config" in caught.value.fix
    assert process.pid is not None
    assert not psutil.pid_exists(process.pid) or psutil.Process(process.pid).status() == "zombie"


async def test_delivery_process_uses_the_config_text_serve_read(
    tmp_path: Path, upstream_factory: StartUpstream
) -> None:
    """The child gets the config as serve read it: a file broken since then does not matter."""
    upstream = await upstream_factory()
    config = tmp_path / "appsettings.json"
    text = json.dumps(
        {
            "Paths": {"Spool": "spool", "Mailbox": "mailbox", "Logs": "logs"},
            "RelayServer": {"Host": "127.0.0.1", "Port": upstream.port, "UseTls": False},
        }
    )
    config.write_text("{ this is not JSON any more", encoding="utf-8")
    process = DeliveryProcess(config, grace=1.0, on_exit=lambda: None, config_text=text)
    await process.start()
    try:
        assert process.pid is not None
        assert (tmp_path / "spool" / "queue").is_dir()  # relative to the config's folder
    finally:
        await process.stop(1.0)
    broken = DeliveryProcess(config, grace=1.0, on_exit=lambda: None)
    with pytest.raises(ServerError, match="cannot read"):
        await broken.start()


def _follow(path: Path, text: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while path.read_text(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged in 20 s:\n{path.read_text()}")
        time.sleep(0.05)  # (a subprocess's log file: there is no event to wait for)


async def logged(path: Path, text: str, count: int = 1) -> None:
    """Wait until *text* appears *count* times in the log file *path* (a subprocess's)."""
    await asyncio.to_thread(_follow, path, text, count)


@pytest.mark.parametrize(
    "args",
    [(), ("--delivery", "inline"), ("--workers", "2")],
    ids=["process", "inline", "workers"],
)
async def test_sighup_moves_relaying_to_the_new_relay(
    tmp_path: Path,
    start_serve: StartServe,
    upstream_factory: StartUpstream,
    args: tuple[str, ...],
) -> None:
    """After the relay in the config changes and serve gets SIGHUP, new mail and the
    mail still queued go to the new relay; nothing queued is lost."""
    old = await upstream_factory()
    new = await upstream_factory()
    serve = await start_serve(old, *args)
    await send(serve.port, 1)
    async with asyncio.timeout(10):
        await old.wait_for(1)
    old.spec.data_reply = "451 4.3.0 try again later"  # the next one stays queued
    await send(serve.port, 2)
    await logged(serve.err, "still pending after 1 attempt(s)")
    config = tmp_path / "appsettings.json"
    settings = json.loads(config.read_text())
    settings["RelayServer"]["Port"] = new.port
    config.write_text(json.dumps(settings), encoding="utf-8")
    serve.proc.send_signal(signal.SIGHUP)
    await logged(serve.err, f"relays reloaded: 127.0.0.1:{new.port}")
    await send(serve.port, 3)
    async with asyncio.timeout(10):
        await new.wait_for(1)
    assert b"Subject: test 3" in new.received[0].data
    flush_queue(tmp_path / "data" / "smtp" / "spool")  # `jdxmail queue flush`
    async with asyncio.timeout(10):
        await new.wait_for(2)
    assert b"Subject: test 2" in new.received[1].data
    assert len(old.received) == 1
    assert await serve.stop() == 0
    assert "Traceback" not in serve.err.read_text()
