"""serve notices config file changes itself, and tells editors which config it runs.

A :class:`ConfigWatcher` runs beside the listeners: every ``interval`` seconds it
``stat``\\ s the config file (cheap; an edit replaces the file by rename, which a
stat sees as a new inode or mtime) and, when the bytes changed, reloads as SIGHUP
does. After each load it writes a small state file, ``run/serve-PID.json`` beside
the spool folder, with the SHA-256 of the config bytes it loaded.

Commands that edit the config (``jdxmail user add`` …, the web console) call
:func:`wait_for_pickup` with the digest of what they wrote: it reads the state files
of the live serve processes for that config and says whether they loaded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jdxmail.settings.model import Settings

__all__ = [
    "ConfigWatcher",
    "Pickup",
    "PickupReport",
    "config_digest",
    "describe_changes",
    "state_dir",
    "wait_for_pickup",
]

logger = logging.getLogger("jdxmail.smtp")

#: seconds between two looks at the config file
POLL_INTERVAL = 1.0


def state_dir(settings: Settings) -> Path:
    """Where serve processes keep their state files: ``run/`` beside the spool."""
    return settings.paths.spool.parent / "run"


def config_digest(data: bytes) -> str:
    """The SHA-256 (hex) of a config file's bytes: its generation."""
    return hashlib.sha256(data).hexdigest()


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_dev, info.st_mtime_ns, info.st_size)


def describe_changes(old: Settings, new: Settings) -> list[str]:
    """What differs between two settings, for the log (never a password or hash)."""
    changes: list[str] = []
    before = {u.user_name.casefold(): u for u in old.smtp_server.users}
    after = {u.user_name.casefold(): u for u in new.smtp_server.users}
    added = [after[k].user_name for k in after if k not in before]
    removed = [before[k].user_name for k in before if k not in after]
    changed = [
        after[k].user_name
        for k in after
        if k in before
        and (
            after[k].password.get_secret_value() != before[k].password.get_secret_value()
            or after[k].model_dump(exclude={"password"})
            != before[k].model_dump(exclude={"password"})
        )
    ]
    for label, names in (
        ("users added", added),
        ("users removed", removed),
        ("users changed", changed),
    ):
        if names:
            changes.append(f"{label}: {', '.join(names)}")
    old_server = old.smtp_server.model_dump(exclude={"users"})
    new_server = new.smtp_server.model_dump(exclude={"users"})
    keys = [
        f"SmtpServer.{_pascal(key)}" for key in new_server if new_server[key] != old_server.get(key)
    ]
    for section in ("relay_server", "relay_servers", "delivery", "paths"):
        if getattr(old, section) != getattr(new, section):
            keys.append(_pascal(section))
    if keys:
        changes.append("changed: " + ", ".join(keys))
    return changes


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


class ConfigWatcher:
    """Reload the server when its config file changes; record what it loaded.

    *reload* is the server's SIGHUP action (True when the new settings were taken).
    """

    def __init__(
        self,
        config_path: Path,
        run_dir: Path,
        reload: Callable[[], bool],
        *,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.config_path = Path(os.path.realpath(config_path))
        self.run_dir = run_dir
        self._reload_server = reload
        self.interval = interval
        self.state_file = run_dir / "serve-unstarted.json"
        self._identity = _identity(self.config_path)
        self._digest = self._read_digest()
        self._task: asyncio.Task[None] | None = None

    def _read_digest(self) -> str | None:
        try:
            return config_digest(self.config_path.read_bytes())
        except OSError:
            return None

    async def start(self) -> None:
        """Record the loaded generation and start watching."""
        # the PID of the process that runs the server (a forked worker's own)
        self.state_file = self.run_dir / f"serve-{os.getpid()}.json"
        self._write_state(ok=True)
        self._task = asyncio.create_task(self._watch(), name="config-watcher")

    async def stop(self, grace: float) -> None:
        """Stop watching and remove the state file (no server runs this config now)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError):
            self.state_file.unlink()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def check(self) -> bool:
        """Reload when the file's bytes changed since the last look; True if reloaded."""
        identity = _identity(self.config_path)
        if identity is None or identity == self._identity:
            return False
        self._identity = identity
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        logger.info("%s changed on disk, reloading", self.config_path)
        ok = self._reload_server()
        if not ok:
            self._write_state(ok=False)  # on success reload() below has written it
        return ok

    def reload(self, settings: Settings) -> None:
        """The server took new settings (SIGHUP or this watcher): note the file as loaded,
        so that a SIGHUP after an edit does not make the next look reload it again."""
        self._identity = _identity(self.config_path)
        self._digest = self._read_digest()
        self._write_state(ok=True)

    def _write_state(self, *, ok: bool) -> None:
        state = {
            "pid": os.getpid(),
            "config": str(self.config_path),
            "digest": self._digest,
            "ok": ok,
            "loaded_at": time.time(),
        }
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            temp = self.state_file.with_suffix(".tmp")
            temp.write_text(json.dumps(state), encoding="utf-8")
            os.replace(temp, self.state_file)
        except OSError as exc:
            logger.warning("cannot write the state file %s: %s", self.state_file, exc)


class Pickup(enum.Enum):
    """Whether running servers loaded a config edit."""

    #: no live serve process runs this config
    NO_SERVER = "no-server"
    #: every live serve process of this config loaded the edit
    LOADED = "loaded"
    #: a serve process tried and refused the edit (it keeps its old settings)
    REFUSED = "refused"
    #: not within the wait (a server may still pick it up; SIGHUP forces it)
    PENDING = "pending"


@dataclass(frozen=True)
class PickupReport:
    """The outcome of wait_for_pickup and the serve processes it concerns."""

    pickup: Pickup
    pids: tuple[int, ...] = ()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _states(run_dir: Path, config: Path) -> list[dict[str, object]]:
    states = []
    for file in run_dir.glob("serve-*.json"):
        try:
            state = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        pid = state.get("pid")
        if not isinstance(pid, int) or state.get("config") != str(config):
            continue
        if not _alive(pid):
            with contextlib.suppress(OSError):
                file.unlink()  # left by a server that was killed
            continue
        states.append(state)
    return states


def wait_for_pickup(
    config_path: Path, run_dir: Path, digest: str, *, wait: float = POLL_INTERVAL * 4
) -> PickupReport:
    """Wait up to *wait* seconds for every live serve of *config_path* to load *digest*.

    Blocking (a CLI helper; the web console calls it in a thread).
    """
    config = Path(os.path.realpath(config_path))
    deadline = time.monotonic() + wait
    while True:
        states = _states(run_dir, config)
        pids = tuple(int(str(s["pid"])) for s in states)
        if not states:
            return PickupReport(Pickup.NO_SERVER)
        current = [s for s in states if s.get("digest") == digest]
        if any(s.get("ok") is False for s in current):
            return PickupReport(Pickup.REFUSED, pids)
        if len(current) == len(states):
            return PickupReport(Pickup.LOADED, pids)
        if time.monotonic() >= deadline:
            return PickupReport(Pickup.PENDING, pids)
        time.sleep(0.05)
