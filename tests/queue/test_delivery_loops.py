"""``serve --loop``: the delivery process runs the loop its server runs and relays on it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import psutil
import pytest
import trustme
from tests.conftest import HAVE_UVLOOP
from tests.queue.conftest import RELAY_PASSWORD, RELAY_USER, StartUpstream, UpstreamSpec
from tests.queue.test_delivery_process import ADDRESS, Serve, send

both = pytest.mark.parametrize(
    "loop",
    [
        "asyncio",
        pytest.param(
            "uvloop",
            marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed"),
        ),
    ],
)


async def _serve(tmp_path: Path, relay: dict[str, object], loop: str) -> Serve:
    """Start ``serve --loop LOOP`` relaying through *relay* (a RelayServer section)."""
    config = tmp_path / "appsettings.json"
    config.write_text(
        json.dumps({"SmtpServer": {"TrustedNetworks": ["127.0.0.0/8"]}, "RelayServer": relay}),
        encoding="utf-8",
    )
    err = tmp_path / "serve.err"
    with err.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "jdxmail", "serve", "--config", str(config), "--port", "0"),
            *("--no-web", "--loop", loop),
            stdout=asyncio.subprocess.PIPE,
            stderr=sink,
            cwd=tmp_path,
        )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while line := await proc.stdout.readline():
            if found := ADDRESS.search(line):
                return Serve(proc, int(found.group(1)), err)
    proc.kill()
    await proc.wait()
    raise AssertionError(err.read_text())


@both
async def test_delivery_process_runs_the_loop_of_serve_and_relays_over_starttls(
    tmp_path: Path, upstream_factory: StartUpstream, ca: trustme.CA, loop: str
) -> None:
    """serve --loop X starts its delivery process with --loop X, which relays over
    STARTTLS with a login; SIGTERM ends both cleanly."""
    upstream = await upstream_factory(
        UpstreamSpec(tls="starttls", users={RELAY_USER: RELAY_PASSWORD})
    )
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    relay = {
        "Host": "127.0.0.1",
        "Port": upstream.port,
        "UseTls": True,
        "CaFile": str(bundle),
        "Username": RELAY_USER,
        "Password": RELAY_PASSWORD,
    }
    serve = await _serve(tmp_path, relay, loop)
    try:
        deliverers = serve.deliverers()
        assert len(deliverers) == 1
        command = deliverers[0].cmdline()
        assert command[command.index("--loop") + 1] == loop
        for number in range(3):
            await send(serve.port, number)
        async with asyncio.timeout(10):
            await upstream.wait_for(3)
        for number in range(3):
            subject = f"Subject: test {number}\r\n".encode()
            assert sum(subject in m.data for m in upstream.received) == 1
        assert all(m.tls for m in upstream.received)
        assert await serve.stop() == 0
        _, alive = psutil.wait_procs(deliverers, timeout=10)
        assert not alive
    finally:
        if serve.proc.returncode is None:
            serve.proc.kill()
            await serve.proc.wait()
    log = serve.err.read_text()
    assert f"event loop: {loop} " in log
    assert f"delivery process (PID {deliverers[0].pid}) stopped (exit status 0)" in log
    assert RELAY_PASSWORD not in log
