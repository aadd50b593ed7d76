"""``serve --loop``: the delivery process runs the loop its server runs and relays on it."""

from __future__ import annotations

import asyncio

import psutil
import pytest
from tests.conftest import HAVE_UVLOOP
from tests.queue.conftest import StartUpstream
from tests.queue.test_delivery_process import StartServe, send, start_serve

__all__ = ["start_serve"]  # the fixture, shared with test_delivery_process


@pytest.mark.parametrize(
    "loop",
    [
        "asyncio",
        pytest.param(
            "uvloop",
            marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed"),
        ),
    ],
)
async def test_delivery_process_runs_the_loop_of_serve_and_relays(
    start_serve: StartServe, upstream_factory: StartUpstream, loop: str
) -> None:
    """serve --loop X starts its delivery process with --loop X; mail reaches the relay."""
    upstream = await upstream_factory()
    serve = await start_serve(upstream, "--loop", loop, "--no-web")
    deliverers = serve.deliverers()
    assert len(deliverers) == 1
    command = deliverers[0].cmdline()
    assert command[command.index("--loop") + 1] == loop
    for number in range(3):
        await send(serve.port, number)
    async with asyncio.timeout(10):
        await upstream.wait_for(3)
    for number in range(3):
        assert sum(f"Subject: test {number}\r\n".encode() in m.data for m in upstream.received) == 1
    assert await serve.stop() == 0
    _, alive = psutil.wait_procs(deliverers, timeout=10)
    assert not alive
    log = serve.err.read_text()
    assert f"event loop: {loop} " in log
    assert f"delivery process (PID {deliverers[0].pid}) stopped (exit status 0)" in log
