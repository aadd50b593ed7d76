"""Chaos: failures injected on purpose, so an application's retry handling can be tested.

Off by default. Turned on through the console or ``PUT /api/v1/chaos``: for each of
``MAIL``, ``RCPT``, ``DATA`` and ``AUTH`` a reply code (451, 452, 535 or 421) and a
probability in percent. The session asks :meth:`Chaos.reply` at the start of those
commands; when chaos is off that is one attribute test.

The rules are also written to ``<spool>/chaos.json``, and every server process sharing
the spool (``serve --workers``) reads that small file once a second, so
chaos set in the console reaches the workers that do not run it. The process that
runs the inbox removes the file when it starts: chaos is off after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from jdxmail import replies
from jdxmail.replies import Reply

__all__ = ["CHAOS_CODES", "STAGES", "Chaos", "ChaosCommand", "ChaosRule"]

logger = logging.getLogger("jdxmail.smtp")

#: seconds between two looks at the shared rules file
POLL_INTERVAL = 1.0

#: the commands a chaos rule can answer with a failure (called stages in the console)
ChaosCommand = Literal["MAIL", "RCPT", "DATA", "AUTH"]
STAGES: tuple[ChaosCommand, ...] = get_args(ChaosCommand)
CHAOS_CODES: dict[int, Reply] = {
    451: replies.CHAOS_451,
    452: replies.CHAOS_452,
    535: replies.CHAOS_535,
    421: replies.CHAOS_421,
}


@dataclass(frozen=True, slots=True)
class ChaosRule:
    """At one command: answer *code* with *probability* percent (0 to 100)."""

    code: int
    probability: float

    def __post_init__(self) -> None:
        if self.code not in CHAOS_CODES:
            codes = ", ".join(str(c) for c in CHAOS_CODES)
            raise ValueError(f"code must be one of {codes}, not {self.code}")
        if not 0 <= self.probability <= 100:
            raise ValueError(f"probability must be 0 to 100 (percent), not {self.probability}")


class Chaos:
    """The current chaos rules of a server; shared by its sessions (see the module)."""

    def __init__(self, shared: Path | None = None) -> None:
        """*shared* is the rules file of the processes sharing a spool (None: none)."""
        self.rules: dict[str, ChaosRule] = {}
        #: True when any rule may fire (the sessions' fast test)
        self.active = False
        self._random = random.Random()  # noqa: S311 (not for security)
        self._shared = shared
        #: the shared file's text as last read or written (None: no file)
        self._seen: str | None = None
        self._poller: asyncio.Task[None] | None = None

    def configure(self, rules: dict[str, ChaosRule]) -> None:
        """Replace the rules (an empty dict turns chaos off) here and in the shared file."""
        self._apply(rules)
        if self._shared is None:
            return
        text = json.dumps(
            {s: {"code": r.code, "probability": r.probability} for s, r in self.rules.items()}
        )
        tmp = self._shared.with_name(f".{self._shared.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self._shared)
            self._seen = text
        except OSError as exc:
            logger.warning("chaos: could not share the rules with other workers: %s", exc)

    def _apply(self, rules: dict[str, ChaosRule]) -> None:
        self.rules = {stage: rule for stage, rule in rules.items() if rule.probability > 0}
        self.active = bool(self.rules)
        if self.active:
            shown = ", ".join(f"{s} {r.code} at {r.probability:g}%" for s, r in self.rules.items())
            logger.warning("chaos is on: %s", shown)

    def refresh(self) -> None:
        """Take the rules of the shared file when it changed (another process set them)."""
        if self._shared is None:
            return
        try:
            text = self._shared.read_text(encoding="utf-8")
        except FileNotFoundError:
            if self._seen is not None or self.active:
                self._seen = None
                self._apply({})
            return
        except (OSError, ValueError):
            return
        if text == self._seen:
            return
        self._seen = text
        try:
            data = json.loads(text)
            rules = {
                stage: ChaosRule(int(value["code"]), float(value["probability"]))
                for stage, value in data.items()
                if stage in STAGES
            }
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning("chaos: ignoring %s: %s", self._shared, exc)
            return
        self._apply(rules)

    async def start(self, *, reset: bool) -> None:
        """Follow the shared file (after removing it when *reset*)."""
        if self._shared is None:
            return
        if reset:
            with contextlib.suppress(OSError):
                self._shared.unlink()
        self._poller = asyncio.create_task(self._poll(), name="jdxmail-chaos")

    async def stop(self) -> None:
        """Stop following the shared file."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def _poll(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(POLL_INTERVAL)

    def reply(self, stage: str) -> Reply | None:
        """The reply to send instead of handling the command, or None (the usual case)."""
        rule = self.rules.get(stage)
        if rule is None or self._random.random() * 100 >= rule.probability:
            return None
        return CHAOS_CODES[rule.code]
