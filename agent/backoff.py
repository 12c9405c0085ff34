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
        delay = base + self.rng.uniform(-spread, spread)
        if delay > self.max_s:  # jitter downward at the cap, so a fleet does not retry in lockstep
            delay = self.max_s - self.rng.uniform(0, spread)
        return max(0.0, delay)

    def reset(self) -> None:
        self.attempt = 0
