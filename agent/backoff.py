"""Exponential backoff with jitter (sans-IO: randomness is injected)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float
    max_s: float
    multiplier: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """Delay before the next attempt; grows until `max_s`, jittered by +/- `jitter`."""
        base = min(self.max_s, self.initial_s * self.multiplier**self.attempt)
        self.attempt += 1
        spread = base * self.jitter
        return max(0.0, min(self.max_s, base + self.rng.uniform(-spread, spread)))

    def reset(self) -> None:
        self.attempt = 0
