"""Per-round and median figures of the probes: messages/s and CPU per message."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class CpuFigures:
    """Rounds of one probe; each prints as it is added, the median at the end."""

    rates: list[float] = field(default_factory=list)
    users: list[float] = field(default_factory=list)
    systems: list[float] = field(default_factory=list)

    def add(self, rate: float, user: float, system: float) -> None:
        """Record one round (msgs/s, µs user and system CPU per message) and print it."""
        self.rates.append(rate)
        self.users.append(user)
        self.systems.append(system)
        print(f"round {len(self.rates)}: {_line(rate, user, system)}")

    def print_median(self) -> None:
        """Print the median of the rounds so far."""
        median = statistics.median
        print(f"median: {_line(median(self.rates), median(self.users), median(self.systems))}")


def _line(rate: float, user: float, system: float) -> str:
    return f"{rate:,.0f} msgs/s, CPU per message: {user:,.0f} µs user + {system:,.0f} µs system"
