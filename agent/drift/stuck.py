"""Stuck sensors: per feature, the run of equal values, checked against its calibrated length (sans-IO).

Owns the only per-feature state the check needs (the last value and the length of the run it
ends) and the vectorised run computation over a batch of rows: one comparison with the previous
row and one running maximum of run starts, for all features at once.

A feature whose reference is almost always one value (`NEAR_CONSTANT` of its rows or more, a
border pixel that is nearly always 0) is never called stuck *at that value*: a reference of a
thousand rows with a handful of other values cannot make a long run of its usual value
improbable (its rate of other values could as well be ten times lower), so such a run is no
evidence of a fault. Runs of any other value of that feature still count. Does not pick the run
lengths (calibrate.stuck_runs) or decide episodes (the monitor turns hits into crossings).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.drift.sketch import FloatArray

NEAR_CONSTANT = 0.99
"""Share of reference rows at one value from which a run of that value is not a stuck sensor."""

_BEFORE = -(2**62)  # run start of a row whose run began before it (before any row of the batch)

StuckHit = tuple[int, int, int, int]
"""(block index in the batch, feature, longest run ending in that block, the feature's run limit)."""


class StuckRuns:
    """Runs of equal values per feature across batches; a run reaching its limit is a stuck sensor."""

    def __init__(self, limits: Sequence[int], usual: FloatArray | None = None) -> None:
        """Args:
        limits: run length per feature at which a repeated value is a stuck sensor (0 = never).
        usual: per feature, a value whose runs are never a stuck sensor (NaN: none), see
            `usual_values`.
        """
        self._limit = np.asarray(limits, dtype=np.int64)
        d = self._limit.size
        self._usual = None if usual is None or np.isnan(usual).all() else np.asarray(usual, dtype=np.float64)
        self._last = np.full(d, np.nan)
        self._run = np.zeros(d, dtype=np.int64)
        self._rows = -1
        self._eq = np.zeros((0, d), dtype=np.bool_)
        self._index = np.zeros((0, 1), dtype=np.int64)
        self._reach = np.zeros((0, d), dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of state carried between batches (last value and run length per feature)."""
        return int(self._last.nbytes + self._run.nbytes)

    def _prepare(self, n: int) -> None:
        """Scratch for batches of n rows: row index and the latest start that reaches the limit."""
        self._rows = n
        self._eq = np.empty((n, self._limit.size), dtype=np.bool_)
        self._index = np.arange(n, dtype=np.int64)[:, None]
        # A run through row i reaches the limit L when it started at or before row i + 1 - L.
        reach = self._index + 1 - self._limit
        self._reach = np.where(self._limit > 0, reach, _BEFORE - 1)

    def push(self, x: FloatArray, block: int) -> list[StuckHit]:
        """Add finite rows `x` (n, d), n a multiple of `block`.

        Returns:
            Every (block, feature) where a run reached the feature's limit, with the longest run.
        """
        n = x.shape[0]
        if n != self._rows:
            self._prepare(n)
        eq = self._eq
        np.equal(x[0], self._last, out=eq[0])
        np.equal(x[1:], x[:-1], out=eq[1:])
        if self._usual is not None:
            eq &= x != self._usual  # the usual value of a near-constant feature starts no run
        # Row at which the run through each row started: its own index where the value changed.
        start = np.where(eq, _BEFORE, self._index)
        np.maximum(start[0], -self._run, out=start[0])  # the run carried over began self._run rows back
        np.maximum.accumulate(start, axis=0, out=start)
        self._last = x[-1].copy()
        self._run = n - start[-1]
        if not (start <= self._reach).any():
            return []
        peak = (self._index - start + 1).reshape(n // block, block, -1).max(axis=1)
        hit = (self._limit > 0) & (peak >= self._limit)
        return [
            (int(i), int(j), int(peak[i, j]), int(self._limit[j]))
            for i, j in zip(*np.nonzero(hit), strict=True)
        ]


def usual_values(max_atom: FloatArray, median: FloatArray) -> FloatArray:
    """Per feature: the value taken by at least `NEAR_CONSTANT` of the reference rows, else NaN.

    `max_atom` is the smoothed share of the most frequent value ((count + 1) / (n + 1)) and
    `median` the reference median, which is that value whenever it holds over half the rows.
    """
    return np.where(np.asarray(max_atom) >= NEAR_CONSTANT, median, np.nan)
