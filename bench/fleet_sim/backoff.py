"""Reconnect delays: exponential backoff with full jitter (sans-IO, randomness injected).

Full jitter (delay uniform in [0, min(max, initial * 2**attempt)]) rather than the agent's
+/-20 % (agent/backoff.py): after a server restart ten thousand devices that lost their session
at the same instant spread their retries over the whole window instead of arriving in waves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class FullJitterBackoff:
    initial_s: float
    max_s: float
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.max_s, self.initial_s * self.multiplier ** min(self.attempt, 64))

    def next_delay(self) -> float:
        ceiling = self.ceiling()
        self.attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
