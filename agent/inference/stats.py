"""Serving telemetry: latency histograms, error and cache counters, throughput, per model version.

Owns bounded-memory statistics (a fixed log-bucketed histogram, ~5% resolution, no per-request
storage) and the flat ``dict[str, float]`` snapshot the daemon puts into telemetry records on the
Sync stream. Time comes from an injected clock. Does not capture input samples (`capture`) and does not
send anything anywhere.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

Clock = Callable[[], float]

_MIN_S = 1e-6
_GROWTH = 1.1
_BUCKETS = int(math.log(1e3 / _MIN_S, _GROWTH)) + 2
BUCKET_BOUNDS: tuple[float, ...] = tuple(_MIN_S * _GROWTH**k for k in range(_BUCKETS))
BUCKET_COUNT = len(BUCKET_BOUNDS) + 1
"""Buckets per histogram: one per bound, plus the overflow above the last."""
_BOUNDS = np.asarray(BUCKET_BOUNDS)


class LatencyHistogram:
    """Log-spaced buckets from 1 µs to ~1000 s; quantiles are the bucket's geometric midpoint."""

    def __init__(self) -> None:
        self.counts = [0] * BUCKET_COUNT
        self.total = 0

    def record(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKET_BOUNDS, seconds)] += 1
        self.total += 1

    def record_many(self, seconds: np.ndarray) -> None:
        """`record` of each value, binned by numpy (searchsorted 'left' is bisect_left)."""
        idx = np.searchsorted(_BOUNDS, seconds, side="left")
        added = np.bincount(idx, minlength=len(self.counts)).tolist()
        self.counts = [a + b for a, b in zip(self.counts, added, strict=True)]
        self.total += int(seconds.shape[0])

    def add_buckets(self, buckets: Iterable[tuple[int, int]]) -> None:
        """Add (bucket index, count) pairs, e.g. another histogram's non-zero buckets."""
        for index, n in buckets:
            self.counts[index] += n
            self.total += n

    def quantile(self, q: float) -> float:
        """Latency in seconds at quantile `q` (0..1); 0.0 when empty."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                upper = BUCKET_BOUNDS[min(index, len(BUCKET_BOUNDS) - 1)]
                return upper / math.sqrt(_GROWTH) if index else upper
        return BUCKET_BOUNDS[-1]


@dataclass
class ModelStats:
    """Counters of one model version over the current window (plus lifetime totals)."""

    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    requests: int = 0
    samples: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    restarts: int = 0
    requests_total: int = 0


class ServingStats:
    """Thread-safe registry of `ModelStats` keyed by ``name@version``."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[str, ModelStats] = {}
        self._window_start = clock()

    def _get(self, model: str) -> ModelStats:
        stats = self._models.get(model)
        if stats is None:
            stats = self._models[model] = ModelStats()
        return stats

    def record_success(self, model: str, seconds: float, samples: int) -> None:
        with self._lock:
            stats = self._get(model)
            stats.latency.record(seconds)
            stats.requests += 1
            stats.requests_total += 1
            stats.samples += samples

    def record_error(self, model: str, kind: str) -> None:
        with self._lock:
            errors = self._get(model).errors
            errors[kind] = errors.get(kind, 0) + 1

    def record_cache(self, model: str, *, hit: bool) -> None:
        with self._lock:
            stats = self._get(model)
            if hit:
                stats.cache_hits += 1
            else:
                stats.cache_misses += 1

    def record_restart(self, model: str) -> None:
        with self._lock:
            self._get(model).restarts += 1

    def snapshot(self, *, reset: bool = False) -> dict[str, float]:
        """Flat metrics, e.g. ``inference.digits@3.latency_p95_ms``; `reset` starts a new window."""
        with self._lock:
            now = self._clock()
            window = max(now - self._window_start, 1e-9)
            out: dict[str, float] = {"inference.window_s": window}
            for model, stats in sorted(self._models.items()):
                out.update(_flatten(f"inference.{model}", stats, window))
            if reset:
                self._window_start = now
                for model, stats in self._models.items():
                    self._models[model] = ModelStats(requests_total=stats.requests_total)
            return out


def _flatten(prefix: str, stats: ModelStats, window: float) -> dict[str, float]:
    out = {
        f"{prefix}.latency_p50_ms": stats.latency.quantile(0.50) * 1e3,
        f"{prefix}.latency_p95_ms": stats.latency.quantile(0.95) * 1e3,
        f"{prefix}.latency_p99_ms": stats.latency.quantile(0.99) * 1e3,
        f"{prefix}.requests": float(stats.requests),
        f"{prefix}.requests_total": float(stats.requests_total),
        f"{prefix}.throughput_rps": stats.requests / window,
        f"{prefix}.samples_per_s": stats.samples / window,
        f"{prefix}.errors": float(sum(stats.errors.values())),
        f"{prefix}.cache_hits": float(stats.cache_hits),
        f"{prefix}.cache_misses": float(stats.cache_misses),
        f"{prefix}.restarts": float(stats.restarts),
    }
    for kind, count in sorted(stats.errors.items()):
        out[f"{prefix}.errors.{kind}"] = float(count)
    return out
