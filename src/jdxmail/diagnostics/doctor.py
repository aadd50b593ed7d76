"""doctor: every check in one report, a row per TROUBLESHOOTING-MAP id.

Runs validate-config, check-port (or, when jdxmail is already running, the listening
check), test-relay for each relay (no message is sent), the config file's writability
(F1), the log directory and today's ERROR lines, and the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from jdxmail.diagnostics.port import (
    PortStatus,
    check_listening,
    check_port,
    connect_address,
    holder_is_jdxmail,
)
from jdxmail.diagnostics.relay_probe import RelayReport, probe_relay, target_from_relay
from jdxmail.findings import Severity
from jdxmail.health import readiness
from jdxmail.logview import parse_line
from jdxmail.queue.spool import spool_stats
from jdxmail.settings.model import Settings
from jdxmail.stats import collect

__all__ = ["DoctorReport", "DoctorRow", "run_doctor"]

_MAX_ERROR_LINES = 3
#: a queued message older than this means delivery is stuck
_STUCK_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class DoctorRow:
    """One line of the report: ``JDX-A1 ✓ port 2525 free``.

    ``ok`` is True (passed), False (failed: the doctor exits non-zero) or None (a
    warning worth reading).
    """

    label: str
    ok: bool | None
    summary: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"id": self.label, "ok": self.ok, "summary": self.summary, "fix": self.fix or None}


@dataclass(slots=True)
class DoctorReport:
    """Every row, and the relay reports behind the relay rows."""

    config_name: str
    rows: list[DoctorRow] = field(default_factory=list)
    relays: list[RelayReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no row failed."""
        return all(row.ok is not False for row in self.rows)

    def add(self, row_id: str | None, ok: bool | None, summary: str, fix: str = "") -> None:
        """Append a row; *row_id* is a map id (``A1``) or a plain label (``config``)."""
        label = f"JDX-{row_id}" if row_id and re.fullmatch(r"[A-H]\d", row_id) else row_id
        self.rows.append(DoctorRow(label or "check", ok, summary, fix))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (never holds a secret)."""
        return {
            "config": self.config_name,
            "ok": self.ok,
            "rows": [r.to_json() for r in self.rows],
            "relays": [r.to_json() for r in self.relays],
        }


async def run_doctor(
    config: Path | None,
    *,
    relay_timeout: float | None = None,
    network_address: str | None = None,
    today: date | None = None,
) -> DoctorReport:
    """Run every check for the config *config* (None: the usual lookup) and report.

    Never raises for what it finds; an unreadable config is a failed row.
    """
    from jdxmail.settings.checks import check_settings  # noqa: PLC0415
    from jdxmail.settings.files import (  # noqa: PLC0415
        ConfigError,
        apply_environment,
        builtin_source,
        find_config,
        inspect_source,
        read_source,
    )

    path = find_config(config)
    report = DoctorReport(str(path) if path is not None else "built-in defaults")
    try:
        source = apply_environment(builtin_source() if path is None else read_source(path))
    except ConfigError as error:
        report.add("config", False, str(error), getattr(error, "fix", "") or "")
        _check_writable(report, path)
        return report
    settings, findings = inspect_source(source)
    if settings is not None:
        settings = settings.with_environment().with_base_dir(source.base_dir)
        findings += check_settings(settings, source)
    errors = 0
    for finding in findings:
        if finding.severity is Severity.INFO:
            continue
        failed = finding.severity is Severity.ERROR
        errors += failed
        where = f"{finding.key}: " if finding.key else ""
        line = f" (line {finding.line})" if finding.line else ""
        report.add(
            finding.row or "config",
            False if failed else None,
            f"{where}{finding.message}{line}",
            finding.fix,
        )
    if settings is None:
        _check_writable(report, path)
        return report
    if not errors:
        report.add("config", True, f"{source.name}: valid ({source.format})")
    running = await _check_port(report, settings, network_address)
    await _check_relays(report, settings, relay_timeout)
    _check_writable(report, path)
    _check_logs(report, settings, today or date.today())
    _check_spool(report, settings)
    _check_space(report, settings)
    await _check_ready(report, settings, running)
    return report


#: a file system is (nearly) full below this much space *and* this share of its size
_LOW_SPACE_BYTES = 16 * 1024 * 1024
_LOW_SPACE_SHARE = 0.05


def _check_space(report: DoctorReport, settings: Settings) -> None:
    """Free space (and inodes) where the spool, mailboxes and logs are written: a full
    disk makes serve answer 452 4.3.1 to every message."""
    paths = settings.paths
    seen: dict[int, list[str]] = {}
    stats: dict[int, os.statvfs_result] = {}
    for label, folder in (("spool", paths.spool), ("mailbox", paths.mailbox), ("logs", paths.logs)):
        existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
        try:
            device = existing.stat().st_dev
            stats.setdefault(device, os.statvfs(existing))
        except OSError:
            continue
        seen.setdefault(device, []).append(f"{label} ({folder})")
    for device, where in seen.items():
        vfs = stats[device]
        free = vfs.f_bavail * vfs.f_frsize
        total = vfs.f_blocks * vfs.f_frsize
        names = ", ".join(where)
        low = free < _LOW_SPACE_BYTES and free < total * _LOW_SPACE_SHARE
        if free == 0 or low or (vfs.f_files and vfs.f_favail == 0):
            what = "no free inodes" if vfs.f_files and vfs.f_favail == 0 else "full"
            report.add(
                "disk",
                False,
                f"the file system of {names} is {what}: {_size(free)} free of {_size(total)}; "
                "serve answers 452 4.3.1 to every message until there is room",
                "free space there (old mail in the mailbox folders, old logs), or set "
                "Paths.* to a larger file system; serve recovers by itself",
            )
        else:
            report.add("disk", True, f"{_size(free)} free for {names}")


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.0f} TiB"


async def _check_port(report: DoctorReport, settings: Settings, network: str | None) -> bool:
    """The port rows (A1, A2, B4...); True when jdxmail is running on the port."""
    smtp = settings.smtp_server
    port_report = check_port(smtp.bind_address, smtp.port)
    holder = port_report.holder
    if port_report.status is PortStatus.IN_USE and holder is not None and holder_is_jdxmail(holder):
        report.add("A1", True, f"port {smtp.port}: jdxmail is running (PID {holder.pid})")
        listening = await check_listening(smtp.bind_address, smtp.port, other_address=network)
        for finding in listening.findings:
            if finding.severity is Severity.ERROR:
                report.add(finding.row, False, finding.message, finding.fix)
            elif finding.code == "port.answering":
                report.add(finding.row, True, finding.message)
        return True
    if port_report.status is PortStatus.FREE:
        report.add("A1", True, f"port {smtp.port} free ({smtp.bind_address})")
        facts = port_report.privilege
        if facts is not None and facts.is_privileged_port(smtp.port):
            report.add("A2", True, f"port {smtp.port} is privileged: {facts.describe(smtp.port)}")
        return False
    for finding in port_report.findings:
        report.add(finding.row or "port", False, finding.message, finding.fix)
    return False


async def _check_ready(report: DoctorReport, settings: Settings, running: bool) -> None:
    """The ``ready`` rows: what /readyz of the running server would say (health.readiness),
    judged from outside: each SMTP port accepts a connection, the spool, delivery."""
    smtp = settings.smtp_server
    host = connect_address(smtp.bind_address)
    ports = [smtp.port, smtp.tls.implicit_tls_port, smtp.proxy_port]
    listeners = []
    if running:
        for port in ports:
            if port is not None:
                shown = f"[{host}]" if ":" in host else host
                listeners.append((f"{shown}:{port}", await _accepts(host, port)))
    delivery = await asyncio.to_thread(_delivery_state, settings) if running else None
    result = await asyncio.to_thread(
        readiness,
        settings.paths.spool,
        settings.health.min_free_bytes,
        listeners=listeners,
        delivery=delivery,
    )
    for check in result.checks:
        if check.name == "listener" and not running:
            report.add("ready", None, "serve is not running: not ready for traffic yet")
        else:
            report.add("ready", check.ok, f"{check.name}: {check.detail}", check.fix)


async def _accepts(host: str, port: int) -> bool:
    """Whether *host*:*port* accepts a TCP connection within a few seconds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _delivery_state(settings: Settings) -> tuple[bool, str] | None:
    """Whether a delivery engine relays for the running server, as the stats files of
    the processes sharing its spool say (None: no relay configured)."""
    if not settings.relays:
        return None
    engines = [p for p in collect(settings.paths.spool).processes if p["running"] and p["relaying"]]
    if not engines:
        return False, "no process relays the queue (no running delivery process)"
    engine = engines[0]
    what = "the delivery process" if engine["role"] == "delivery" else "the server process"
    return True, f"{what} (PID {engine['pid']}) relays the queue"


async def _check_relays(
    report: DoctorReport, settings: Settings, relay_timeout: float | None
) -> None:
    relays = settings.relays
    if not relays:
        report.add("relay", True, "no relay configured: mail for other domains is kept locally")
        return
    default = float(settings.smtp_server.time_out)
    for index, relay in enumerate(relays):
        key = (settings.relay_key,) if settings.relay_server else (settings.relay_key, index)
        target = target_from_relay(relay, key, default)
        if relay_timeout is not None:
            target = replace(target, timeout=relay_timeout)
        result = await probe_relay(target)
        report.relays.append(result)
        name = f"relay {target.label}"
        total = sum(s.elapsed_ms or 0.0 for s in result.stages)
        if result.ok:
            login = next((s.detail for s in result.stages if s.name == "AUTH" and s.ok), "")
            extra = f", {login.split(':')[0]}" if login else ""
            report.add("C1", True, f"{name}: every stage passed in {total:.0f} ms{extra}")
        for finding in result.findings:
            if finding.severity is Severity.ERROR:
                report.add(finding.row or "C2", False, f"{name}: {finding.message}", finding.fix)
            elif finding.severity is Severity.WARNING:
                report.add(finding.row, None, f"{name}: {finding.message}", finding.fix)


def _check_writable(report: DoctorReport, path: Path | None) -> None:
    """Row F1: can ``jdxmail user add`` and the other editing commands save the config?"""
    if path is None:
        folder = Path.cwd()
        if os.access(folder, os.W_OK | os.X_OK):
            report.add("F1", True, f"no config file yet; {folder} is writable for a new one")
        else:
            report.add(
                "F1",
                False,
                f"no config file, and {folder} is not writable to create one",
                "run from a folder you own, or pass --config PATH",
            )
        return
    if not path.exists():
        return
    folder = path.resolve().parent
    if not os.access(path, os.W_OK):
        owner = _owner(path)
        me = _user_name(os.geteuid()) if hasattr(os, "geteuid") else owner
        fix = (
            f"`chmod u+w {path}`"
            if owner == me
            else f"`sudo chown {me} {path}` (the user who runs jdxmail owns its config), "
            f"or run the command as {owner}"
        )
        report.add(
            "F1",
            False,
            f"{path} is not writable by this user ({me}; owner {owner}, mode "
            f"{path.stat().st_mode & 0o777:o}): `jdxmail user add` cannot save it",
            fix,
        )
    elif not os.access(folder, os.W_OK | os.X_OK):
        report.add(
            "F1",
            False,
            f"{folder} is not writable: the config is saved by writing a new file beside it",
            f"give this user write access to {folder}",
        )
    else:
        report.add("F1", True, f"{path} is writable")


def _user_name(uid: int) -> str:
    try:
        import pwd  # noqa: PLC0415 - POSIX only

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def _owner(path: Path) -> str:
    try:
        return path.owner()
    except (KeyError, OSError, NotImplementedError):
        return f"uid {path.stat().st_uid}"


def _check_logs(report: DoctorReport, settings: Settings, today: date) -> None:
    logs = settings.paths.logs
    if not logs.exists():
        parent = next((p for p in logs.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK | os.X_OK):
            report.add("G1", True, f"log folder {logs} does not exist yet; it will be created")
        else:
            report.add(
                "G1",
                False,
                f"log folder {logs} does not exist and {parent} is not writable",
                f"create it: `mkdir -p {logs}` as a user who may, and give jdxmail write access",
            )
        return
    if not os.access(logs, os.W_OK | os.X_OK):
        report.add(
            "G1",
            False,
            f"log folder {logs} is not writable",
            f"give the user that runs jdxmail write access to {logs}",
        )
        return
    log_file = logs / "jdxmail.log"
    errors = _error_lines(log_file, today)
    if errors:
        shown = " | ".join(line[:160] for line in errors[-_MAX_ERROR_LINES:])
        report.add(
            "G1",
            None,
            f"{len(errors)} ERROR line(s) in today's {log_file}; last: {shown}",
            f"read them: `grep ERROR {log_file}`",
        )
    else:
        report.add("G1", True, f"logs in {logs}; no ERROR lines today")


def _error_lines(log_file: Path, today: date) -> list[str]:
    """ERROR lines of *log_file* written *today* (lines without a date count as today's)."""
    day = today.isoformat()
    found: list[str] = []
    try:
        with log_file.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if "ERROR" not in line:
                    continue
                parsed = parse_line(line.rstrip("\n"))  # text or JSON lines
                if parsed.level != "ERROR":
                    continue
                if not parsed.time or parsed.time.startswith(day):
                    found.append(line.rstrip("\n"))
    except OSError:
        return []
    return found


def _check_spool(report: DoctorReport, settings: Settings) -> None:
    spool = settings.paths.spool
    if not spool.exists():
        report.add("queue", True, f"spool {spool} is empty (not created yet)")
        return
    try:
        stats = spool_stats(spool)
    except OSError as exc:
        report.add(
            "queue",
            False,
            f"spool {spool} cannot be read: {exc.strerror or exc}",
            f"give the user that runs jdxmail access to {spool}",
        )
        return
    summary = f"spool: {stats.queued} queued, {stats.failed} failed"
    if stats.oldest_queued_age is not None:
        summary += f", oldest waiting {_age(stats.oldest_queued_age)}"
    if stats.corrupt:
        summary += f", {stats.corrupt} corrupt"
    stuck = stats.oldest_queued_age is not None and stats.oldest_queued_age > _STUCK_SECONDS
    if stats.failed or stats.corrupt or stuck:
        report.add(
            "queue",
            None,
            summary,
            "see why with `jdxmail queue` (the relay's reply is kept with each message)",
        )
    else:
        report.add("queue", True, summary)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
