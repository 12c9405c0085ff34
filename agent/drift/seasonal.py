"""Seasonal baseline: a reference that models a known period (numpy only, sans-IO).

Owns the optional deseasonalising step in front of the input channels. Most sensors follow a
daily (or weekly) cycle; a monitor that compares a window of a few hundred rows with a reference
pooled over the whole cycle sees the cycle itself as drift, and keeps an episode open forever.
With a `Seasonality(period, bins)` the reference learns, per feature, the mean and spread in each
of `bins` phase bins of the period (e.g. 24 hourly bins of 86,400 s) and the monitor watches the
*residual* `(x - mean(phase)) / spread(phase)`, linearly interpolated between bin centres around the
circle. A change in a feature is still a change of its residual, so detection is kept.

Timestamps (seconds, any epoch; only `t mod period` is used) come from the caller with each row:
this module reads no clock. Does not decide drift (stats.py, bank.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.drift.sketch import FloatArray

MIN_ROWS_PER_BIN = 10


@dataclass(frozen=True)
class Seasonality:
    """A known period in seconds (86,400 for a daily cycle) and how many phase bins model it."""

    period: float = 86_400.0
    bins: int = 24

    def __post_init__(self) -> None:
        if not (self.period > 0 and np.isfinite(self.period)):
            raise ValueError(f"seasonal period must be a positive number of seconds, got {self.period}")
        if not 2 <= self.bins <= 1024:
            raise ValueError(f"seasonal bins must be in [2, 1024], got {self.bins}")


@dataclass(frozen=True)
class SeasonalBaseline:
    """Per phase bin and feature: the reference mean and standard deviation."""

    period: float
    mean: FloatArray  # (bins, d)
    std: FloatArray  # (bins, d), > 0

    @property
    def bins(self) -> int:
        return int(self.mean.shape[0])

    def _weights(self, t: FloatArray) -> tuple[np.ndarray, np.ndarray, FloatArray]:
        pos = np.mod(np.asarray(t, dtype=np.float64), self.period) / self.period * self.bins - 0.5
        lo = np.floor(pos)
        frac = pos - lo
        lo_i = np.mod(lo.astype(np.int64), self.bins)
        return lo_i, np.mod(lo_i + 1, self.bins), frac

    def apply(self, x: FloatArray, t: FloatArray) -> FloatArray:
        """Residual rows (n, d) of rows `x` (n, d) observed at times `t` (n,) in seconds."""
        lo, hi, frac = self._weights(t)
        f = frac[:, None]
        mean = self.mean[lo] * (1 - f) + self.mean[hi] * f
        std = self.std[lo] * (1 - f) + self.std[hi] * f
        return np.asarray((x - mean) / std)


def fit_seasonal(x: FloatArray, t: FloatArray, season: Seasonality) -> SeasonalBaseline:
    """Fit the per-bin baseline on reference rows `x` (n, d) taken at times `t` (n,).

    Raises:
        ValueError: a timestamp per row is missing, or a phase bin has fewer than
            MIN_ROWS_PER_BIN reference rows (use fewer bins or a reference covering the whole period).
    """
    t = np.asarray(t, dtype=np.float64).ravel()
    if t.shape[0] != x.shape[0] or not np.isfinite(t).all():
        raise ValueError(f"a seasonal reference needs one finite timestamp per row ({x.shape[0]} rows)")
    idx = np.floor(np.mod(t, season.period) / season.period * season.bins).astype(np.int64)
    idx = np.minimum(idx, season.bins - 1)
    counts = np.bincount(idx, minlength=season.bins)
    if counts.min() < MIN_ROWS_PER_BIN:
        empty = int(np.argmin(counts))
        raise ValueError(
            f"seasonal bin {empty} of {season.bins} has {int(counts[empty])} reference rows "
            f"(need >= {MIN_ROWS_PER_BIN}): the reference must cover the whole period"
        )
    mean = np.stack([x[idx == b].mean(axis=0) for b in range(season.bins)])
    std = np.stack([x[idx == b].std(axis=0) for b in range(season.bins)])
    pooled = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    std = np.where(std > 1e-9 * pooled, std, pooled)  # a flat bin keeps the pooled spread
    return SeasonalBaseline(season.period, mean, std)
