"""A staged check: named steps, each with its outcome, timing and what was seen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["StageResult"]


@dataclass(slots=True)
class StageResult:
    """One step of a staged check (``DNS``, ``TCP``, ``TLS``…).

    ``ok`` is None for a step that was skipped; ``detail`` is what was seen (addresses,
    the reply), ``facts`` extra values for ``--json`` (never a secret).
    """

    name: str
    ok: bool | None
    elapsed_ms: float | None = None
    detail: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "stage": self.name,
            "ok": self.ok,
            "ms": None if self.elapsed_ms is None else round(self.elapsed_ms, 1),
            "detail": self.detail,
            **({"facts": self.facts} if self.facts else {}),
        }
