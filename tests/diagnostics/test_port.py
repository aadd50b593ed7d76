"""check-port: rows A1 (in use), A2 (privilege), B4 (firewall), H1 (any port)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jdxmail.cli.exitcodes import PortExit
from jdxmail.diagnostics.port import (
    PortStatus,
    PrivilegeFacts,
    check_listening,
    check_port,
    firewall_commands,
    privilege_fix,
)
from tests.conftest import WriteConfig, invoke
from tests.diagnostics.conftest import NetNs

JDXMAIL = str(Path(sys.executable).with_name("jdxmail"))


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket of this test process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _free_privileged_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


def test_free_port_exits_0(runner: CliRunner) -> None:
    """A free port is reported free with exit 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, _ = invoke(runner, "check-port", "--port", str(port), "--bind", "127.0.0.1")
    assert code == PortExit.FREE
    assert f"port {port} is free" in out


def test_port_in_use_names_this_process_a1(
    held_port: int, runner: CliRunner, write_config: WriteConfig
) -> None:
    """A port held by this test's socket exits 1 naming this PID and Port 2525 (JDX-A1)."""
    path = write_config(json.dumps({"SmtpServer": {"Port": held_port}}, indent=2))
    code, out, _ = invoke(runner, "check-port", "--config", str(path))
    assert code == PortExit.IN_USE
    assert f"PID {os.getpid()}" in out
    assert "JDX-A1" in out
    assert '"Port": 2525' in out
    assert "SmtpServer.Port (line 3)" in out


def test_port_in_use_json_has_holder(held_port: int, runner: CliRunner) -> None:
    """--json names the holder's PID, user and command line."""
    code, out, _ = invoke(
        runner, "check-port", "--port", str(held_port), "--bind", "127.0.0.1", "--json"
    )
    data = json.loads(out)
    assert code == 1
    assert data["status"] == "in-use"
    assert data["holder"]["pid"] == os.getpid()
    assert data["holder"]["user"]
    assert data["findings"][0]["row"] == "JDX-A1"


def _check_port_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``check-port ARGS`` in a child that drops to uid/gid 65534 first."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from typer.testing import CliRunner
        from jdxmail.cli.app import app
        runner = CliRunner()
        args = ["check-port", *{list(args)!r}]
        # warm up every import as root: after setuid the interpreter's own files may
        # be unreadable
        runner.invoke(app, args)
        os.setgid(65534)
        os.setuid(65534)
        result = runner.invoke(app, args)
        sys.stdout.write(result.stdout)
        sys.exit(result.exit_code)
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


needs_root = pytest.mark.skipif(
    not hasattr(os, "setuid") or os.geteuid() != 0, reason="needs root to drop privileges"
)


@needs_root
def test_privileged_port_as_nobody_exits_2_a2() -> None:
    """Run as uid 65534, a port below 1024 exits 2 naming CAP_NET_BIND_SERVICE and fixes."""
    port = _free_privileged_port()
    done = _check_port_as_nobody("--port", str(port), "--bind", "127.0.0.1")
    out = done.stdout
    if f"unprivileged_port_start is {port}" in out or "free" in out:
        pytest.skip("this host lets every user bind low ports")
    assert done.returncode == PortExit.PRIVILEGE, done.stdout + done.stderr
    assert "JDX-A2" in out
    assert "user id 65534 (not root)" in out
    assert "does not have CAP_NET_BIND_SERVICE" in out
    assert "setcap cap_net_bind_service=+ep" in out
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in out
    assert '"Port": 2525' in out


@needs_root
def test_port_of_another_user_is_held_by_another_process_a1(held_port: int) -> None:
    """Run as uid 65534, a port held by root's socket is in use by "another process"."""
    done = _check_port_as_nobody("--port", str(held_port), "--bind", "127.0.0.1")
    out = done.stdout
    assert done.returncode == PortExit.IN_USE, out + done.stderr
    assert "in use by another process (not permitted to see which" in out
    assert f"sudo ss -ltnp 'sport = :{held_port}'" in out


def test_in_use_fix_per_os(held_port: int) -> None:
    """The stop command fits the OS: kill on macOS, Stop-Process on Windows."""
    mac = check_port("127.0.0.1", held_port, platform="darwin")
    windows = check_port("127.0.0.1", held_port, platform="win32")
    assert mac.status is PortStatus.IN_USE
    assert f"sudo kill {os.getpid()}" in mac.findings[0].fix
    assert f"Stop-Process -Id {os.getpid()}" in windows.findings[0].fix


def test_privilege_fix_on_macos() -> None:
    """On macOS the privilege fix is sudo or port 2525 (no setcap there)."""
    facts = PrivilegeFacts(
        euid=501, cap_net_bind_service=None, unprivileged_port_start=None, platform="darwin"
    )
    fix = privilege_fix(25, facts)
    assert "sudo" in fix
    assert '"Port": 2525' in fix
    assert "setcap" not in fix


def test_privilege_decision_from_facts() -> None:
    """The capability or a low ip_unprivileged_port_start lets a non-root user bind port 25."""
    plain = PrivilegeFacts(euid=1000, cap_net_bind_service=False, unprivileged_port_start=1024)
    capable = PrivilegeFacts(euid=1000, cap_net_bind_service=True, unprivileged_port_start=1024)
    open_sysctl = PrivilegeFacts(euid=1000, cap_net_bind_service=False, unprivileged_port_start=0)
    assert plain.is_privileged_port(25)
    assert not plain.has_privilege
    assert capable.has_privilege
    assert not open_sysctl.is_privileged_port(25)
    assert not plain.is_privileged_port(2525)


def test_address_not_on_host_exits_3(runner: CliRunner) -> None:
    """A BindAddress that is not on this host (TEST-NET-1) exits 3 and lists the choices."""
    code, out, _ = invoke(runner, "check-port", "--port", "2525", "--bind", "192.0.2.1")
    assert code == PortExit.OTHER
    assert "192.0.2.1 is not an address of this host" in out
    assert "0.0.0.0" in out


def test_unreadable_config_exits_3(runner: CliRunner, write_config: WriteConfig) -> None:
    """A config that does not parse exits 3 (other) with the reason, no traceback."""
    path = write_config("{ not json")
    code, _, err = invoke(runner, "check-port", "--config", str(path))
    assert code == PortExit.OTHER
    assert "error:" in err


async def _banner_server(host: str) -> asyncio.Server:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake jdxmail ESMTP ready\r\n")
        await reader.readline()
        writer.close()

    return await asyncio.start_server(greet, host, 0)


async def test_listening_only_on_loopback_prints_firewall_command_b4(runner: CliRunner) -> None:
    """Answering on loopback but not on the network address exits 3 with the firewall fix."""
    server = await _banner_server("127.0.0.1")
    port = server.sockets[0].getsockname()[1]
    try:
        code, out, _ = await asyncio.to_thread(
            invoke,
            runner,
            "check-port",
            "--listening",
            "--port",
            str(port),
            "--bind",
            "0.0.0.0",
            "--network-address",
            "127.0.0.2",
        )
    finally:
        server.close()
        await server.wait_closed()
    assert code == PortExit.OTHER
    assert "JDX-B4" in out
    assert "127.0.0.2" in out
    assert any(cmd.split()[1] in out for cmd in firewall_commands(port))
    assert "✓ banner from 127.0.0.1" in out
    assert "✗ banner from 127.0.0.2" in out


async def test_listening_from_everywhere_exits_0(runner: CliRunner) -> None:
    """A server answering on loopback and the network address exits 0."""
    server = await _banner_server("0.0.0.0")
    port = server.sockets[0].getsockname()[1]
    try:
        code, out, _ = await asyncio.to_thread(
            invoke,
            runner,
            "check-port",
            "--listening",
            "--port",
            str(port),
            "--bind",
            "0.0.0.0",
            "--network-address",
            "127.0.0.2",
        )
    finally:
        server.close()
        await server.wait_closed()
    assert code == PortExit.FREE, out
    assert "220 fake jdxmail ESMTP ready" in out


async def test_listening_nothing_answers_exits_3(runner: CliRunner) -> None:
    """--listening on a port where nothing listens says to start jdxmail serve."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        code, out, _ = await asyncio.to_thread(
            invoke,
            runner,
            "check-port",
            "--listening",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
        )
    assert code == PortExit.OTHER
    assert "jdxmail serve" in out


def test_firewall_commands_per_os() -> None:
    """Each OS gets its own firewall command."""
    assert "New-NetFirewallRule" in firewall_commands(2525, "win32")[0]
    assert "socketfilterfw" in firewall_commands(2525, "darwin")[0]
    linux = " ".join(firewall_commands(2525, "linux"))
    assert "ufw" in linux or "firewall-cmd" in linux


_NETNS_SCRIPT = """
import socket, sys, threading
from typer.testing import CliRunner
from jdxmail.cli.app import app

server = socket.socket()
server.bind(("0.0.0.0", 0))
server.listen()
port = server.getsockname()[1]

def greet():
    while True:
        conn, _ = server.accept()
        conn.sendall(b"220 netns jdxmail ESMTP\\r\\n")
        conn.close()

threading.Thread(target=greet, daemon=True).start()
# the firewall: drop what arrives for this port on the network address
import subprocess
subprocess.run(["nft", "add", "rule", "inet", "jdxtest", "input", "ip", "daddr",
                sys.argv[1], "tcp", "dport", str(port), "drop"], check=True)
result = CliRunner().invoke(app, ["check-port", "--listening", "--port", str(port),
    "--bind", "0.0.0.0", "--network-address", sys.argv[1], "--timeout", "1"])
sys.stdout.write(result.stdout)
sys.exit(result.exit_code)
"""


def test_firewall_drop_in_a_netns_is_reported_b4(netns: NetNs) -> None:
    """With nft dropping the port on the network address, only loopback answers: exit 3, B4."""
    done = netns.run(sys.executable, "-c", _NETNS_SCRIPT, netns.address)
    out = done.stdout
    assert done.returncode == PortExit.OTHER, out + done.stderr
    assert "✓ banner from 127.0.0.1" in out
    assert f"✗ banner from {netns.address}" in out
    assert "no banner within 1 s" in out
    assert "JDX-B4" in out
    assert "a firewall blocks the port" in out
    assert "ufw allow" in out or "firewall-cmd" in out


async def test_listening_on_a_port_another_program_holds_names_it(
    held_port: int, runner: CliRunner
) -> None:
    """--listening on a port held by a program that is not jdxmail names it, not `jdxmail serve`."""
    code, out, _ = await asyncio.to_thread(
        invoke,
        runner,
        "check-port",
        "--listening",
        "--port",
        str(held_port),
        "--bind",
        "127.0.0.1",
        "--timeout",
        "0.2",
    )
    assert code == PortExit.OTHER
    assert f"PID {os.getpid()}" in out
    assert "not jdxmail" in out
    assert "start it with `jdxmail serve`" not in out


async def test_listening_waits_for_a_server_that_is_starting() -> None:
    """check_listening(until=…) keeps trying while the port refuses, and finds the server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started: list[asyncio.Server] = []

    async def start() -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 late ESMTP\r\n")
            await reader.readline()
            writer.close()

        started.append(await asyncio.start_server(greet, "127.0.0.1", port))

    # a server that starts after the first try; nothing to await in between
    asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(start()))
    try:
        report = await check_listening("127.0.0.1", port, until=30)
    finally:
        for server in started:
            server.close()
    assert report.ok, report.findings
    assert "220 late ESMTP" in report.probes[0].detail


@pytest.mark.parametrize(
    "args",
    [["--port", "0"], ["--port", "x"], ["--timeout", "5000"], ["--bogus"]],
)
def test_bad_arguments_exit_3_as_the_help_says(args: list[str]) -> None:
    """Bad arguments exit 3 ("other", as --help says), never 2, which means "no privilege"."""
    result = subprocess.run(
        [JDXMAIL, "check-port", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == PortExit.OTHER, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["exit_code"] == PortExit.OTHER
    assert "Traceback" not in result.stderr
