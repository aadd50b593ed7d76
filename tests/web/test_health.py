"""``/healthz`` and ``/readyz`` on the console, and ``jdxmail doctor``'s ready rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from jdxmail.passwords import hash_password
from tests.conftest import BOTH_LOOPS
from tests.server.test_lifecycle import ServeProcess, serve
from tests.web.conftest import Console, MakeConsole

pytestmark = BOTH_LOOPS  # uvicorn on serve's loop, uvloop too (serve --loop)

__all__ = ["serve"]  # the fixture

UNREACHABLE_FREE_SPACE = 2**62  # more than any disk here has


def _config(extra: str = "") -> str:
    return (
        '{"SmtpServer": {"BindAddress": "127.0.0.1", "TrustedNetworks": ["127.0.0.0/8"]}'
        + extra
        + "}"
    )


async def test_healthz_and_readyz_answer_when_all_is_well(
    console: Console, http: httpx.AsyncClient
) -> None:
    """A running dev inbox is alive and ready: its listener accepts, its spool is writable."""
    alive = await http.get("/healthz")
    assert alive.status_code == 200
    assert alive.text == "ok\n"
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["reasons"] == []
    checks = {c["check"]: c for c in body["checks"]}
    assert checks["listener"]["ok"] is True
    assert f"smtp://127.0.0.1:{console.smtp_port}" in checks["listener"]["detail"]
    assert "writable" in checks["spool"]["detail"]
    assert "delivery" not in checks  # a dev inbox has no delivery process


async def test_readyz_is_503_when_the_disk_has_too_little_free_space(
    make_console: MakeConsole,
) -> None:
    """A free-space threshold above what the disk has makes /readyz 503, naming the key."""
    console = await make_console(
        _config(f', "Health": {{"MinFreeBytes": {UNREACHABLE_FREE_SPACE}}}')
    )
    async with httpx.AsyncClient(base_url=console.url) as http:
        ready = await http.get("/readyz")
        alive = await http.get("/healthz")
    assert ready.status_code == 503
    assert ready.headers["cache-control"] == "no-store"
    (reason,) = ready.json()["reasons"]
    assert reason.startswith("spool: only ")
    assert "Health.MinFreeBytes" in reason
    assert alive.status_code == 200


async def test_readyz_is_503_once_the_server_is_asked_to_stop(
    console: Console, http: httpx.AsyncClient
) -> None:
    """While serve drains for a shutdown, /readyz says the listener no longer takes traffic."""
    console.app.request_stop()
    ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert any("does not accept connections" in r for r in ready.json()["reasons"])


async def test_health_checks_need_no_login_when_console_users_exist(
    make_console: MakeConsole,
) -> None:
    """With console users, /healthz and /readyz still answer without credentials."""
    user = json.dumps({"UserName": "admin", "Password": hash_password("pw"), "HashType": "SHA256"})
    console = await make_console(_config(f', "WebUI": {{"Users": [{user}]}}'))
    async with httpx.AsyncClient(base_url=console.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/api/v1/events")).status_code == 401


def test_metrics_listener_serves_health_checks_without_the_console(
    tmp_path: Path, serve: list[ServeProcess]
) -> None:
    """serve --no-web --metrics-port 0 prints the URL; /healthz and /readyz answer there."""
    server = ServeProcess(tmp_path, "--no-web", "--metrics-port", "0")
    serve.append(server)
    assert server.proc.stdout is not None
    url = ""
    for line in server.proc.stdout:
        found = re.search(r"metrics and health checks on (http://\S+)/metrics", line)
        if found:
            url = found.group(1)
            break
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{url}/healthz").text == "ok\n"
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert httpx.get(f"{url}/inbox").status_code == 404  # nothing of the console there
    assert server.stop()[0] == 0


async def test_readyz_is_503_while_the_listeners_are_stopped(
    console: Console, http: httpx.AsyncClient
) -> None:
    """Listeners stopped from the dashboard make /readyz 503; started again, 200."""
    assert await console.app.pause_listeners()
    paused = await http.get("/readyz")
    assert paused.status_code == 503
    assert paused.json()["reasons"] == ["listener: no SMTP listener"]
    assert await console.app.resume_listeners()
    assert (await http.get("/readyz")).status_code == 200
