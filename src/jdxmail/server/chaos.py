"""Chaos: failures injected on purpose, so an application's retry handling can be tested.

Off by default. Turned on through the console or ``PUT /api/v1/chaos``: for each of
``MAIL``, ``RCPT``, ``DATA`` and ``AUTH`` a reply code (451, 452, 535 or 421) and a
probability in percent. The session asks :meth:`Chaos.reply` at the start of those
commands; when chaos is off that is one attribute test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, get_args

from jdxmail import replies
from jdxmail.replies import Reply

__all__ = ["CHAOS_CODES", "STAGES", "Chaos", "ChaosRule", "Stage"]

Stage = Literal["MAIL", "RCPT", "DATA", "AUTH"]
STAGES: tuple[Stage, ...] = get_args(Stage)
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
    """The current chaos rules of a server; shared by its sessions."""

    def __init__(self) -> None:
        self.rules: dict[str, ChaosRule] = {}
        #: True when any rule may fire (the sessions' fast test)
        self.active = False
        self._random = random.Random()  # noqa: S311 (not for security)

    def configure(self, rules: dict[Stage, ChaosRule]) -> None:
        """Replace the rules (an empty dict turns chaos off)."""
        self.rules = {stage: rule for stage, rule in rules.items() if rule.probability > 0}
        self.active = bool(self.rules)

    def reply(self, stage: str) -> Reply | None:
        """The reply to send instead of handling the command, or None (the usual case)."""
        rule = self.rules.get(stage)
        if rule is None or self._random.random() * 100 >= rule.probability:
            return None
        return CHAOS_CODES[rule.code]
