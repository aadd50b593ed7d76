"""Readiness: may a load balancer or orchestrator send this server traffic?

One core function, :func:`readiness`, answers for ``/readyz`` (the running server's
own view) and for ``jdxmail doctor`` (from outside, probing the ports). It checks
that the SMTP listeners are up, that the spool can be written with more than
``Health.MinFreeBytes`` free, and that the delivery process (when there is one)
runs. ``/healthz`` only says the process answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HealthCheck", "Readiness", "readiness", "spool_check"]


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One condition of readiness: its name, whether it holds, what was seen, the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"check": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix or None}


@dataclass(frozen=True, slots=True)
class Readiness:
    """Every check; ready when all hold."""

    checks: tuple[HealthCheck, ...]

    @property
    def ready(self) -> bool:
        """True when every check holds."""
        return all(c.ok for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        """What keeps the server from being ready, one text per failed check."""
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``ready``, ``reasons`` and every check."""
        return {
            "ready": self.ready,
            "reasons": self.reasons,
            "checks": [c.to_json() for c in self.checks],
        }


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover - the loop always returns


def spool_check(spool: Path, min_free: int) -> HealthCheck:
    """Whether *spool* can be written (a file made and removed) with > *min_free* bytes free.

    A spool that does not exist yet is judged by the nearest folder above it (serve
    makes it). Blocking: call it in a thread.
    """
    folder = spool
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    probe = folder / f".jdxmail-ready.{os.getpid()}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ready\n")
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as exc:
        return HealthCheck(
            "spool",
            False,
            f"{spool} is not writable: {exc.strerror or exc}",
            f"give the user that runs jdxmail write access to {folder}, or set Paths.Spool",
        )
    free = shutil.disk_usage(folder).free
    if free <= min_free:
        return HealthCheck(
            "spool",
            False,
            f"only {_size(free)} free under {spool}, at most Health.MinFreeBytes "
            f"({_size(min_free)})",
            "free disk space (old logs, failed/ messages) or move Paths.Spool to a larger disk",
        )
    return HealthCheck("spool", True, f"{spool} writable, {_size(free)} free")


def readiness(
    spool: Path,
    min_free: int,
    *,
    listeners: Sequence[tuple[str, bool]],
    delivery: tuple[bool, str] | None,
) -> Readiness:
    """Readiness from the listeners' states (name, up), the spool and the delivery
    process (alive, what was seen; None when there is none to check).

    Blocking (the spool check writes a file): call it in a thread.
    """
    checks = [
        HealthCheck(
            "listener",
            up,
            f"{name} {'accepts connections' if up else 'does not accept connections'}",
            "" if up else "start `jdxmail serve`, or wait until it has started",
        )
        for name, up in listeners
    ]
    if not listeners:
        checks.append(HealthCheck("listener", False, "no SMTP listener", "start `jdxmail serve`"))
    checks.append(spool_check(spool, min_free))
    if delivery is not None:
        alive, seen = delivery
        checks.append(
            HealthCheck(
                "delivery",
                alive,
                seen,
                "" if alive else "see the log (grep Queue) for why it ended; restart serve",
            )
        )
    return Readiness(tuple(checks))
