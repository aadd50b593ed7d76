"""doctor: one report with a row per TROUBLESHOOTING-MAP id, non-zero exit on failure."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from typer.testing import CliRunner

from tests.conftest import WriteConfig, invoke
from tests.diagnostics.conftest import (
    GMAIL_APP_PASSWORD_REQUIRED,
    GOOD_PASSWORD,
    GOOD_USER,
    ProviderSpec,
    StartProvider,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(port: int, relay: dict[str, Any] | None = None) -> str:
    data: dict[str, Any] = {
        "SmtpServer": {"Port": port, "TrustedNetworks": ["127.0.0.0/8"]},
        "Paths": {"Logs": "logs", "Spool": "spool"},
    }
    if relay is not None:
        data["RelayServer"] = relay
    return json.dumps(data, indent=2)


async def _doctor(runner: CliRunner, *args: str) -> tuple[int, str]:
    # never let a check connect to this machine's real interface addresses
    if "--network-address" not in args:
        args = (*args, "--network-address", "127.0.0.2")
    code, out, err = await asyncio.to_thread(invoke, runner, "doctor", *args)
    return code, out + err


@pytest.fixture
def ca_path(ca: trustme.CA, tmp_path: Path) -> str:
    """The test CA as a PEM file."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def test_healthy_setup_passes_every_row(
    fake_provider: StartProvider, runner: CliRunner, write_config: WriteConfig, ca_path: str
) -> None:
    """A free port, a working relay and a writable config give ✓ rows and exit 0."""
    fake = await fake_provider()
    port = _free_port()
    relay = {
        "Host": "127.0.0.1",
        "Port": fake.port,
        "Username": GOOD_USER,
        "Password": GOOD_PASSWORD,
        "CaFile": ca_path,
    }
    path = write_config(_config(port, relay))
    code, out = await _doctor(runner, "--config", str(path))
    assert code == 0, out
    assert f"JDX-A1     ✓ port {port} free" in out
    assert "✓ relay RelayServer" not in out
    assert "every stage passed" in out
    assert "JDX-F1     ✓" in out
    assert "all checks passed" in out
    assert GOOD_PASSWORD not in out


async def test_port_in_use_and_relay_534_fail_with_fixes(
    fake_provider: StartProvider, runner: CliRunner, write_config: WriteConfig, ca_path: str
) -> None:
    """A held port (A1) and a relay answering 534 5.7.9 (C5) are ✗ rows with fixes, exit 1."""
    fake = await fake_provider(ProviderSpec(auth_failure=GMAIL_APP_PASSWORD_REQUIRED))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        relay = {
            "Host": "127.0.0.1",
            "Port": fake.port,
            "Username": GOOD_USER,
            "Password": "wrong",
            "CaFile": ca_path,
        }
        path = write_config(_config(port, relay))
        code, out = await _doctor(runner, "--config", str(path))
    assert code == 1
    assert "JDX-A1     ✗" in out
    assert f"PID {os.getpid()}" in out
    assert "JDX-C5     ✗" in out
    assert "apppasswords" in out
    assert "failed" in out


async def test_unparsable_config_is_a_failed_row(
    runner: CliRunner, write_config: WriteConfig
) -> None:
    """A config that does not parse is reported as a failed row, not a traceback."""
    path = write_config('{"SmtpServer": {"Port": }')
    code, out = await _doctor(runner, "--config", str(path))
    assert code == 1
    assert "config     ✗" in out


async def test_error_lines_of_today_are_shown(
    runner: CliRunner, write_config: WriteConfig, tmp_path: Path
) -> None:
    """Today's ERROR lines of logs/jdxmail.log (written by jdxmail's own logging) appear in
    the G1 row; lines of older days do not."""
    import logging

    from jdxmail.logs import configure_logging

    path = write_config(_config(_free_port()))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "jdxmail.log").write_text(
        "2001-01-01 10:00:00.000 ERROR Relay [-] old problem\n", encoding="utf-8"
    )
    configure_logging(logs, console=None)
    try:
        logging.getLogger("jdxmail.smtp").info("started")
        logging.getLogger("jdxmail.relay").error("relay gmail: 535 5.7.8 refused")
    finally:
        configure_logging(None, console=None)
    code, out = await _doctor(runner, "--config", str(path), "--json")
    data = json.loads(out)
    g1 = next(r for r in data["rows"] if r["id"] == "JDX-G1")
    assert code == 0
    assert g1["ok"] is None
    assert "1 ERROR line" in g1["summary"]
    assert "Relay [-] relay gmail: 535 5.7.8 refused" in g1["summary"]
    assert "old problem" not in g1["summary"]
    assert "grep ERROR" in g1["fix"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder under /tmp that other users may enter (tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="jdxmail-doctor-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not hasattr(os, "setuid") or os.geteuid() != 0, reason="needs root")
def test_read_only_config_fails_f1_as_another_user(shared_dir: Path) -> None:
    """Run as uid 65534, a root-owned 0644 config fails row F1 naming the chmod fix."""
    config = shared_dir / "appsettings.json"
    config.write_text(_config(_free_port()), encoding="utf-8")
    config.chmod(0o644)
    script = textwrap.dedent(
        f"""
        import os, sys
        from typer.testing import CliRunner
        from jdxmail.cli.app import app
        runner = CliRunner()
        args = ["doctor", "--config", {str(config)!r}, "--network-address", "127.0.0.2"]
        runner.invoke(app, args)  # warm up every import while the interpreter is readable
        os.setgid(65534)
        os.setuid(65534)
        result = runner.invoke(app, args)
        sys.stdout.write(result.stdout)
        sys.exit(result.exit_code)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=shared_dir,
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "JDX-F1     ✗" in out
    assert "is not writable by this user (nobody; owner root, mode 644)" in out
    assert f"sudo chown nobody {config}" in out


@pytest.fixture
def running_jdxmail(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A real `jdxmail serve` on 0.0.0.0:PORT (probed only via 127.x), until the test ends."""
    port = _free_port()
    config = tmp_path / "appsettings.json"
    config.write_text(
        json.dumps({"SmtpServer": {"BindAddress": "0.0.0.0", "Port": port}}), encoding="utf-8"
    )
    config.chmod(0o600)
    process = subprocess.Popen(
        [sys.executable, "-m", "jdxmail", "serve", "--config", str(config)],
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


async def test_running_jdxmail_is_checked_for_answers(
    running_jdxmail: tuple[Path, int], runner: CliRunner
) -> None:
    """With jdxmail already on the port, doctor checks that it answers instead of failing A1."""
    config, port = running_jdxmail
    code, out = await _doctor(runner, "--config", str(config))
    assert code == 0, out
    assert f"JDX-A1     ✓ port {port}: jdxmail is running" in out
    assert "JDX-B4     ✓ the server answers" in out


async def test_config_causes_are_rows_with_fixes_a3_b2_b3(
    runner: CliRunner, write_config: WriteConfig
) -> None:
    """A disabled server (A3), a hash that does not fit HashType (B2) and a relay nobody may
    use (B3) each get their row and fix; the errors make doctor exit 1."""
    data = {
        "SmtpServer": {
            "Enabled": False,
            "Port": _free_port(),
            "Users": [{"UserName": "app", "Password": "password", "HashType": "SHA256"}],
        },
        "RelayServer": {"Host": "smtp.example.invalid", "Port": 587},
    }
    path = write_config(json.dumps(data, indent=2))
    code, out = await _doctor(runner, "--config", str(path), "--json")
    rows = {r["id"]: r for r in json.loads(out)["rows"]}
    assert code == 1
    assert rows["JDX-A3"]["ok"] is None
    assert rows["JDX-A3"]["fix"] == 'set "Enabled": true'
    assert rows["JDX-B2"]["ok"] is False
    assert "jdxmail hash-password" in rows["JDX-B2"]["fix"]
    data["SmtpServer"]["Users"] = []
    path = write_config(json.dumps(data, indent=2))
    code, out = await _doctor(runner, "--config", str(path), "--json")
    rows = {r["id"]: r for r in json.loads(out)["rows"]}
    assert code == 1
    assert rows["JDX-B3"]["ok"] is False
    assert "jdxmail user add" in rows["JDX-B3"]["fix"]


async def test_spool_counts_queued_and_failed(
    runner: CliRunner, write_config: WriteConfig, tmp_path: Path
) -> None:
    """Messages in the spool are counted; a failed one turns the queue row into a warning."""
    from jdxmail.queue.spool import AcceptedMessage, Spool

    path = write_config(_config(_free_port()))
    spool = Spool(tmp_path / "spool", tmp_path / "mailbox")
    await spool.open()
    try:
        ids = [
            await spool.store(
                AcceptedMessage(
                    mail_from="app@example.com",
                    relay_recipients=("x@example.net",),
                    local_recipients=(),
                    data=b"Subject: t\r\n\r\nhi\r\n",
                    message_id=f"<{n}@test>",
                    auth_user=None,
                    client_address="127.0.0.1",
                    session_id="s",
                    received_at=0.0,
                )
            )
            for n in range(2)
        ]
    finally:
        await spool.close()
    code, out = await _doctor(runner, "--config", str(path), "--json")
    queue = next(r for r in json.loads(out)["rows"] if r["id"] == "queue")
    assert code == 0
    assert queue["ok"] is True
    assert queue["summary"].startswith("spool: 2 queued, 0 failed, oldest waiting")
    failed_dir = tmp_path / "spool" / "failed"
    failed_dir.mkdir(exist_ok=True)
    queued = tmp_path / "spool" / "queue" / f"{ids[0]}.msg"
    queued.rename(failed_dir / queued.name)
    code, out = await _doctor(runner, "--config", str(path), "--json")
    queue = next(r for r in json.loads(out)["rows"] if r["id"] == "queue")
    assert code == 0
    assert queue["ok"] is None
    assert "1 queued, 1 failed" in queue["summary"]
    assert "jdxmail queue" in queue["fix"]
