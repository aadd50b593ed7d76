"""doctor's ``ready`` rows: the readiness /readyz reports, judged from outside."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import invoke


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def running_serve(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A real `jdxmail serve` on 127.0.0.1:PORT from a config file with a relay (so a
    delivery process runs), until the test ends."""
    port = _free_port()
    config = tmp_path / "appsettings.json"
    relay = {"Name": "up", "Host": "127.0.0.1", "Port": _free_port(), "UseTls": False}
    config.write_text(
        json.dumps(
            {
                "SmtpServer": {"Port": port, "TrustedNetworks": ["127.0.0.0/8"]},
                "RelayServers": [relay],
            }
        ),
        encoding="utf-8",
    )
    config.chmod(0o600)
    process = subprocess.Popen(
        [sys.executable, "-m", "jdxmail", "serve", "--config", str(config), "--no-web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "listening on" in line:
                break
        else:
            pytest.fail("jdxmail serve did not start")
        yield config, port
    finally:
        process.terminate()
        process.wait(timeout=20)


async def _ready_rows(runner: CliRunner, config: Path) -> tuple[int, list[dict[str, object]]]:
    code, out, _ = await asyncio.to_thread(
        invoke,
        runner,
        "doctor",
        "--config",
        str(config),
        "--network-address",
        "127.0.0.2",
        "--json",
    )
    return code, [r for r in json.loads(out)["rows"] if r["id"] == "ready"]


async def test_doctor_reports_a_running_server_ready(
    running_serve: tuple[Path, int], runner: CliRunner
) -> None:
    """With serve running, doctor's ready rows say its port accepts, the spool is fine
    and the delivery process relays."""
    config, port = running_serve
    code, rows = await _ready_rows(runner, config)
    delivery = [r for r in rows if str(r["summary"]).startswith("delivery: ")]
    assert len(delivery) == 1, rows
    assert delivery[0]["ok"] is True
    assert "the delivery process (PID " in str(delivery[0]["summary"])
    assert {(r["ok"], r["summary"]) for r in rows if "listener" in str(r["summary"])} == {
        (True, f"listener: 127.0.0.1:{port} accepts connections")
    }
    assert any(r["ok"] is True and str(r["summary"]).startswith("spool: ") for r in rows)
    assert code == 1  # the relay (nothing listens there) fails its own rows


async def test_doctor_fails_on_a_disk_below_the_free_space_threshold(
    tmp_path: Path, runner: CliRunner
) -> None:
    """Before serve starts, doctor says so (a note) and fails a spool disk below
    Health.MinFreeBytes."""
    config = tmp_path / "appsettings.json"
    config.write_text(
        json.dumps(
            {
                "SmtpServer": {"Port": _free_port(), "TrustedNetworks": ["127.0.0.0/8"]},
                "Health": {"MinFreeBytes": 2**62},
            }
        ),
        encoding="utf-8",
    )
    code, rows = await _ready_rows(runner, config)
    assert (None, "serve is not running: not ready for traffic yet") in {
        (r["ok"], r["summary"]) for r in rows
    }
    spool = [r for r in rows if str(r["summary"]).startswith("spool: ")]
    assert len(spool) == 1
    assert spool[0]["ok"] is False
    assert "Health.MinFreeBytes" in str(spool[0]["summary"])
    assert code == 1
