"""Per-relay daily quotas (the guide's E3: Gmail 500/day, Outlook.com 300...).

Counters live in ``<spool>/quota.json`` (``{"day": "2026-11-30", "sent": {"gmail":
12}}``, days in UTC), so they survive restarts and are shared by every process using
the spool: each change happens under an exclusive ``flock`` on ``quota.lock``. A
message takes a slot *before* it is sent and gives it back if nothing was delivered,
so a relay never gets more than its quota, even with parallel sessions.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jdxmail.queue.state import StateError, read_json, write_json_atomic

__all__ = ["QuotaBook", "next_utc_midnight", "utc_day"]


def utc_day(now: float | None = None) -> str:
    """Today's date in UTC, ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y-%m-%d")


def next_utc_midnight(now: float | None = None) -> float:
    """Epoch seconds of the next 00:00 UTC, when quotas start over."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp()


class QuotaBook:
    """Daily send counters per relay, on disk. Methods are sync: call them in a thread."""

    def __init__(self, spool_dir: Path) -> None:
        self.path = Path(spool_dir) / "quota.json"
        self.lock_path = Path(spool_dir) / "quota.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self, day: str) -> dict[str, int]:
        try:
            data = read_json(self.path)
        except StateError:
            data = None
        if not isinstance(data, dict) or data.get("day") != day:
            return {}
        sent = data.get("sent")
        if not isinstance(sent, dict):
            return {}
        return {str(k): int(v) for k, v in sent.items() if isinstance(v, int)}

    def _save(self, day: str, sent: dict[str, int]) -> None:
        write_json_atomic(self.path, {"day": day, "sent": sent})

    def sent_today(self, now: float | None = None) -> dict[str, int]:
        """Messages handed to each relay today."""
        with self._locked():
            return self._load(utc_day(now))

    def take(self, relay: str, quota: int | None, now: float | None = None) -> bool:
        """Count one message for *relay*; False (nothing counted) when its quota is spent."""
        day = utc_day(now)
        with self._locked():
            sent = self._load(day)
            if quota is not None and sent.get(relay, 0) >= quota:
                return False
            sent[relay] = sent.get(relay, 0) + 1
            self._save(day, sent)
            return True

    def give_back(self, relay: str, now: float | None = None) -> None:
        """Undo one take() whose message was not delivered."""
        day = utc_day(now)
        with self._locked():
            sent = self._load(day)
            if sent.get(relay, 0) > 0:
                sent[relay] -= 1
                self._save(day, sent)
