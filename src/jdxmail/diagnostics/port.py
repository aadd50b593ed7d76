"""check-port: can this process listen on the SMTP port, and if not, why (rows A1, A2, B4, H1).

``check_port`` tries the bind for real and explains a failure: the port is in use (by
which process), it is privileged and this process has no privilege, or the address is
not on this host. ``check_listening`` connects to a running server from loopback and
from a non-loopback local address and reads its banner.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from jdxmail.diagnostics.stages import StageResult
from jdxmail.findings import Finding, KeyPath, Severity

__all__ = [
    "PortHolder",
    "PortReport",
    "PortStatus",
    "PrivilegeFacts",
    "check_listening",
    "check_port",
    "connect_address",
    "find_holder",
    "firewall_commands",
    "holder_is_jdxmail",
    "network_address",
    "privilege_facts",
    "privilege_fix",
]

PORT_KEY: KeyPath = ("SmtpServer", "Port")
BIND_KEY: KeyPath = ("SmtpServer", "BindAddress")
_CAP_NET_BIND_SERVICE = 10
_UNPRIVILEGED_SYSCTL = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
#: process names of mail servers and the service to stop for each
_SERVICES = {
    "master": "postfix",
    "postfix": "postfix",
    "exim4": "exim4",
    "exim": "exim",
    "sendmail": "sendmail",
    "opensmtpd": "opensmtpd",
    "smtpd": "opensmtpd",
    "dma": "dma",
}


class PortStatus(enum.StrEnum):
    """The answer of check-port."""

    FREE = "free"
    IN_USE = "in-use"
    PRIVILEGE = "privilege"
    ADDRESS = "address-not-local"
    OTHER = "other"
    ANSWERING = "answering"
    LOOPBACK_ONLY = "loopback-only"
    NOT_ANSWERING = "not-answering"


@dataclass(frozen=True, slots=True)
class PortHolder:
    """The process that holds a port; any field may be unknown (not permitted to see)."""

    pid: int | None = None
    name: str | None = None
    user: str | None = None
    cmdline: str | None = None

    def describe(self) -> str:
        """``postfix (PID 812, user root): /usr/lib/postfix/sbin/master -w``."""
        if self.pid is None:
            return "another process (not permitted to see which; run as root to find out)"
        who = f"{self.name or 'process'} (PID {self.pid}"
        who += f", user {self.user})" if self.user else ")"
        return f"{who}: {self.cmdline}" if self.cmdline else who


@dataclass(frozen=True, slots=True)
class PrivilegeFacts:
    """What decides whether this process may listen on a port below 1024."""

    euid: int | None
    #: CAP_NET_BIND_SERVICE in the effective set (None: not Linux / unknown)
    cap_net_bind_service: bool | None
    #: net.ipv4.ip_unprivileged_port_start (None: not Linux / unknown)
    unprivileged_port_start: int | None
    platform: str = sys.platform

    def is_privileged_port(self, port: int) -> bool:
        """True when binding *port* needs privilege on this host."""
        if self.platform == "win32":
            return False
        start = self.unprivileged_port_start
        return port < (start if start is not None else 1024)

    @property
    def has_privilege(self) -> bool:
        """True when this process may bind privileged ports (root or the capability)."""
        return self.euid == 0 or bool(self.cap_net_bind_service)

    def describe(self, port: int) -> str:
        """The facts as one sentence for the report."""
        parts = [f"user id {self.euid}" + (" (root)" if self.euid == 0 else " (not root)")]
        if self.cap_net_bind_service is not None:
            has = "has" if self.cap_net_bind_service else "does not have"
            parts.append(f"this process {has} CAP_NET_BIND_SERVICE")
        if self.unprivileged_port_start is not None:
            parts.append(f"net.ipv4.ip_unprivileged_port_start is {self.unprivileged_port_start}")
        return "; ".join(parts)


@dataclass(slots=True)
class PortReport:
    """What check-port found: the status, the findings with fixes, and what was probed."""

    address: str
    port: int
    status: PortStatus
    findings: list[Finding] = field(default_factory=list)
    holder: PortHolder | None = None
    privilege: PrivilegeFacts | None = None
    probes: list[StageResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the port is free (or the server answers from everywhere it should)."""
        return self.status in (PortStatus.FREE, PortStatus.ANSWERING)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: status, who holds the port, privileges, probes, findings."""
        facts = self.privilege
        return {
            "address": self.address,
            "port": self.port,
            "status": self.status.value,
            "ok": self.ok,
            "holder": None
            if self.holder is None
            else {
                "pid": self.holder.pid,
                "name": self.holder.name,
                "user": self.holder.user,
                "cmdline": self.holder.cmdline,
            },
            "privilege": None
            if facts is None
            else {
                "euid": facts.euid,
                "cap_net_bind_service": facts.cap_net_bind_service,
                "unprivileged_port_start": facts.unprivileged_port_start,
            },
            "probes": [p.to_json() for p in self.probes],
            "findings": [f.to_json() for f in self.findings],
        }


def privilege_facts() -> PrivilegeFacts:
    """Read this process's privilege facts from the OS (``/proc`` on Linux)."""
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    cap: bool | None = None
    start: int | None = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                cap = bool(int(line.split()[1], 16) >> _CAP_NET_BIND_SERVICE & 1)
    except (OSError, ValueError, IndexError):
        cap = None
    try:
        start = int(_UNPRIVILEGED_SYSCTL.read_text().strip())
    except (OSError, ValueError):
        start = None
    return PrivilegeFacts(euid, cap, start)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def connect_address(bind_address: str) -> str:
    """Where a client on this machine connects to reach a server bound to *bind_address*."""
    if bind_address in ("0.0.0.0", "", "*", "localhost"):
        return "127.0.0.1"
    if bind_address == "::":
        return "::1"
    return bind_address


def find_holder(port: int) -> PortHolder:
    """The process listening on TCP *port* (empty PortHolder when it cannot be seen)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return PortHolder()
    for conn in connections:
        laddr = conn.laddr
        if not laddr or laddr.port != port or conn.status != psutil.CONN_LISTEN:
            continue
        if conn.pid is None:
            return PortHolder()
        name = user = cmdline = None
        try:
            process = psutil.Process(conn.pid)
            name = process.name()
            user = process.username()
            cmdline = " ".join(" ".join(process.cmdline()).split())[:300] or None
        except (psutil.Error, OSError):
            pass
        return PortHolder(conn.pid, name, user, cmdline)
    return PortHolder()


def holder_is_jdxmail(holder: PortHolder) -> bool:
    """True when the holder runs the jdxmail command (``jdxmail serve``, ``-m jdxmail``)."""
    text = f"{holder.name or ''} {holder.cmdline or ''}"
    return re.search(r"(?:^|[\s/])jdxmail(?:\s|$)", text) is not None


def _in_use_fix(holder: PortHolder, port: int, platform: str) -> str:
    if holder_is_jdxmail(holder):
        return (
            f"jdxmail is already running (PID {holder.pid}): stop it first, or check it "
            f"with `jdxmail check-port --listening`; or run this one on another port: "
            f'"Port": 2525'
        )
    service = _SERVICES.get(holder.name or "")
    if platform == "win32":
        stop = f"`Stop-Process -Id {holder.pid}`" if holder.pid else "stop the other server"
    elif platform == "darwin":
        stop = (
            "`sudo postfix stop`"
            if service == "postfix"
            else (f"`sudo kill {holder.pid}`" if holder.pid else "stop the other server")
        )
    elif service:
        stop = f"`sudo systemctl stop {service} && sudo systemctl disable {service}`"
    elif holder.pid:
        stop = f"stop {holder.name or 'it'} (`sudo kill {holder.pid}`)"
    else:
        stop = f"find it with `sudo ss -ltnp 'sport = :{port}'` and stop it"
    alternative = "2525" if port != 2525 else "2526"
    return f'{stop}; or give jdxmail another port: "Port": {alternative}'


def privilege_fix(port: int, facts: PrivilegeFacts, interpreter: str | None = None) -> str:
    """The ways to let jdxmail listen on privileged *port* on this OS."""
    if facts.platform == "darwin":
        return f'run it with sudo, or use an unprivileged port: "Port": 2525 (not {port})'
    real = interpreter or os.path.realpath(sys.executable)
    return (
        f"one of: (1) `sudo setcap cap_net_bind_service=+ep {real}` (the real interpreter, "
        "not a symlink; every script it runs gains the right); (2) run it from systemd with "
        "`AmbientCapabilities=CAP_NET_BIND_SERVICE` (see examples/jdxmail.service); "
        f"(3) `sudo sysctl -w net.ipv4.ip_unprivileged_port_start={port}`; "
        f'(4) use an unprivileged port: "Port": 2525'
    )


def local_addresses() -> list[str]:
    """The IP addresses of this host's interfaces (loopback included)."""
    found = ["127.0.0.1", "::1"]
    try:
        interfaces = psutil.net_if_addrs()
    except (psutil.Error, OSError):
        return found
    for entries in interfaces.values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                address = entry.address.split("%")[0]
                if address not in found:
                    found.append(address)
    return found


def network_address() -> str | None:
    """A non-loopback IPv4 address of this host (how other machines reach it), or None."""
    for address in local_addresses():
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
            return address
    return None


def check_port(
    address: str, port: int, *, facts: PrivilegeFacts | None = None, platform: str | None = None
) -> PortReport:
    """Try to bind *address*:*port* now, as the server would, and explain a failure.

    Never raises for a bind failure; every outcome is a PortReport.
    """
    platform = platform or sys.platform
    facts = facts or privilege_facts()
    bind = connect_address(address) if address == "localhost" else address
    report = PortReport(address, port, PortStatus.FREE, privilege=facts)
    try:
        with socket.socket(_family(bind), socket.SOCK_STREAM) as sock:
            if platform != "win32":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind, port))
            sock.listen(1)
    except PermissionError:
        return _privilege_report(report, facts)
    except OSError as exc:
        return _bind_error_report(report, exc, platform)
    where = f"{address}:{port}"
    message = f"port {port} is free: this process can listen on {where}"
    if facts.is_privileged_port(port):
        message += f" (a privileged port; allowed because {facts.describe(port)})"
    report.findings.append(Finding(Severity.INFO, "port.free", message, path=PORT_KEY, row="A1"))
    return report


def _privilege_report(report: PortReport, facts: PrivilegeFacts) -> PortReport:
    port = report.port
    report.status = PortStatus.PRIVILEGE
    report.findings.append(
        Finding(
            Severity.ERROR,
            "port.privileged",
            f"port {port} is privileged and this process may not listen on it: "
            f"{facts.describe(port)}. Root, CAP_NET_BIND_SERVICE or a lower "
            "net.ipv4.ip_unprivileged_port_start would allow it",
            privilege_fix(port, facts),
            PORT_KEY,
            row="A2",
        )
    )
    return report


def _bind_error_report(report: PortReport, exc: OSError, platform: str) -> PortReport:
    port, address = report.port, report.address
    if exc.errno == errno.EADDRINUSE:
        holder = find_holder(port)
        report.status, report.holder = PortStatus.IN_USE, holder
        report.findings.append(
            Finding(
                Severity.ERROR,
                "port.in-use",
                f"port {port} is already in use by {holder.describe()}",
                _in_use_fix(holder, port, platform),
                PORT_KEY,
                row="A1",
            )
        )
    elif exc.errno == errno.EADDRNOTAVAIL:
        report.status = PortStatus.ADDRESS
        others = ", ".join(a for a in local_addresses() if ":" not in a)
        report.findings.append(
            Finding(
                Severity.ERROR,
                "port.address-not-local",
                f"{address} is not an address of this host, so nothing can listen on it",
                f'set "BindAddress" to 127.0.0.1 (this machine only), 0.0.0.0 (every '
                f"interface) or one of: {others}",
                BIND_KEY,
            )
        )
    else:
        report.status = PortStatus.OTHER
        report.findings.append(
            Finding(
                Severity.ERROR,
                "port.bind-failed",
                f"cannot listen on {address}:{port}: {exc.strerror or exc}",
                "check BindAddress and Port",
                PORT_KEY,
            )
        )
    return report


def firewall_commands(port: int, platform: str | None = None) -> list[str]:
    """The commands that open TCP *port* in this OS's firewall."""
    platform = platform or sys.platform
    if platform == "win32":
        return [
            f'New-NetFirewallRule -DisplayName "jdxmail SMTP {port}" -Direction Inbound '
            f"-Protocol TCP -LocalPort {port} -Action Allow"
        ]
    if platform == "darwin":
        tool = "/usr/libexec/ApplicationFirewall/socketfilterfw"
        real = os.path.realpath(sys.executable)
        return [f"sudo {tool} --add {real}", f"sudo {tool} --unblockapp {real}"]
    ufw = f"sudo ufw allow {port}/tcp"
    firewalld = f"sudo firewall-cmd --permanent --add-port={port}/tcp && sudo firewall-cmd --reload"
    nft = f"sudo nft add rule inet filter input tcp dport {port} accept"
    if shutil.which("ufw"):
        return [ufw]
    if shutil.which("firewall-cmd"):
        return [firewalld]
    return [ufw, firewalld, nft]


async def _read_banner(host: str, port: int, wait: float) -> StageResult:
    """Connect to *host*:*port* and read the first reply line."""
    name = f"banner from {host}:{port}"
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port)
            line = await reader.readline()
            writer.write(b"QUIT\r\n")
    except TimeoutError:
        return StageResult(name, False, _ms(started), f"no banner within {wait:g} s")
    except OSError as exc:
        facts = {"errno": errno.errorcode.get(exc.errno or 0)} if exc.errno else {}
        return StageResult(name, False, _ms(started), exc.strerror or str(exc), facts)
    finally:
        if writer is not None:
            writer.close()
    text = line.decode("utf-8", "replace").strip()
    if not text.startswith("220"):
        shown = text or "the connection closed without a banner"
        return StageResult(name, False, _ms(started), f"not an SMTP greeting: {shown[:120]}")
    return StageResult(name, True, _ms(started), text[:200])


async def _first_banner(host: str, port: int, wait: float, until: float) -> StageResult:
    """The banner of *host*:*port*, trying again while the connection is refused."""
    deadline = time.monotonic() + until
    while True:
        result = await _read_banner(host, port, wait)
        refused = result.facts.get("errno") == "ECONNREFUSED"
        if result.ok or not refused or time.monotonic() >= deadline:
            return result
        # the server is still starting: nothing to await but the next try
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _not_answering(host: str, port: int, detail: str, holder: PortHolder) -> Finding:
    """Why nothing SMTP answers on *host*:*port*, and the fix that fits who holds it."""
    message = f"no SMTP server answers on {host}:{port}: {detail}"
    if holder.pid is not None and not holder_is_jdxmail(holder):
        message += f"; the port is held by {holder.describe()}"
        fix = (
            "that program is not jdxmail: stop it, or give jdxmail another port "
            f'("Port": {2525 if port != 2525 else 2526})'
        )
    elif holder.pid is not None:
        fix = f"jdxmail (PID {holder.pid}) holds the port but does not answer: check its log"
    else:
        fix = "start it with `jdxmail serve` (and check its log), or check Port and BindAddress"
    return Finding(Severity.ERROR, "port.not-answering", message, fix, PORT_KEY, row="H1")


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


async def check_listening(
    address: str,
    port: int,
    *,
    other_address: str | None = None,
    wait: float = 5.0,
    until: float = 0.0,
    platform: str | None = None,
) -> PortReport:
    """Check that an SMTP server answers on *port*, from loopback and from the network.

    *other_address* is the non-loopback address of this host to connect to (default: the
    first one found on the interfaces). When only loopback answers, the report names the
    firewall command of the OS (row B4). *until* (seconds) keeps trying to connect while
    nothing listens yet: for a server that is still starting.
    """
    report = PortReport(address, port, PortStatus.ANSWERING)
    wildcard = address in ("0.0.0.0", "::", "", "*")
    local = _is_loopback(address)
    first = connect_address(address)
    report.probes.append(await _first_banner(first, port, wait, until))
    network = other_address if other_address is not None else network_address()
    if (wildcard or not local) and network and network != first:
        report.probes.append(await _read_banner(network, port, wait))
    elif local:
        report.probes.append(
            StageResult(
                f"from the network ({network or 'no other address'})",
                None,
                detail=f"BindAddress is {address}: only this machine can connect, by design",
            )
        )
    primary = report.probes[0]
    if not primary.ok:
        report.status = PortStatus.NOT_ANSWERING
        holder = find_holder(port)
        report.holder = holder if holder.pid is not None else None
        report.findings.append(_not_answering(first, port, primary.detail, holder))
        return report
    second = report.probes[1]
    if second.ok is False:
        report.status = PortStatus.LOOPBACK_ONLY
        commands = " or ".join(f"`{c}`" for c in firewall_commands(port, platform))
        report.findings.append(
            Finding(
                Severity.ERROR,
                "port.firewalled",
                f"the server answers on {first}:{port} but not on {network}:{port} "
                f"({second.detail}): a firewall blocks the port, so other machines "
                "cannot connect",
                f"open the port: {commands}",
                PORT_KEY,
                row="B4",
            )
        )
        return report
    report.findings.append(
        Finding(
            Severity.INFO,
            "port.answering",
            f"the server answers on port {port}: {primary.detail}",
            path=PORT_KEY,
            row="B4" if second.ok else "H1",
        )
    )
    if local:
        report.findings.append(
            Finding(
                Severity.INFO,
                "port.loopback-bind",
                f"BindAddress is {address}: other machines cannot connect",
                'to take mail from the network set "BindAddress": "0.0.0.0" (with TLS and Users)',
                BIND_KEY,
            )
        )
    return report
