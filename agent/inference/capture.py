"""Opt-in, rate-limited capture of input/output samples for the drift monitor.

Owns a bounded ring of recent (inputs, outputs) pairs filled through a token bucket (at most
`per_second` captures per second, bursts up to `burst`), so capture can never grow memory or cost more
than a copy per admitted request. Time comes from an injected clock. Does not compute drift
statistics or persist anything.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

Clock = Callable[[], float]


@dataclass(frozen=True)
class Sample:
    """One captured prediction (copies, safe to keep)."""

    model: str
    at: float
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


class SampleCapture:
    """Token-bucket-limited ring buffer of samples; thread-safe."""

    def __init__(
        self, *, capacity: int = 256, per_second: float = 1.0, burst: int = 4, clock: Clock = time.monotonic
    ) -> None:
        if capacity < 1 or per_second <= 0 or burst < 1:
            raise ValueError("capacity and burst must be >= 1 and per_second > 0")
        self._ring: deque[Sample] = deque(maxlen=capacity)
        self._rate = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()
        self.offered = 0
        self.captured = 0

    def offer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> bool:
        """Keep a copy of this prediction if the rate limit allows; returns whether it was kept."""
        with self._lock:
            self.offered += 1
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            self.captured += 1
            self._ring.append(
                Sample(
                    model=model,
                    at=now,
                    inputs={k: np.array(v, copy=True) for k, v in inputs.items()},
                    outputs={k: np.array(v, copy=True) for k, v in outputs.items()},
                )
            )
            return True

    def drain(self) -> list[Sample]:
        """Remove and return everything captured so far (oldest first)."""
        with self._lock:
            samples = list(self._ring)
            self._ring.clear()
            return samples
