"""Quantile sketches and the normal-score transform (numpy only, sans-IO).

Owns the per-feature map from raw values to standard-normal scores built on reference quantile knots
(tie-aware: repeated knot values collapse to one mid-probability knot, so integer and heavy-tailed
sensors get honest scores), a vectorised inverse normal CDF, and the two batch forms the monitor
runs every block: `ScoreTable` (the score maps of all features by table lookup) and `EdgeCounts`
(values per decile bin, the fleet's mergeable sketch). Does not decide what is drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Acklam's rational approximation of the inverse normal CDF (relative error < 1.2e-9).
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02)
_A2 = (-3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01)
_B2 = -1.328068155288572e01
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00)
_C2 = (4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


def norm_ppf(p: npt.ArrayLike) -> FloatArray:
    """Inverse standard-normal CDF for probabilities strictly inside (0, 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    out = np.empty_like(p)
    low, high = p < _P_LOW, p > 1 - _P_LOW
    mid = ~(low | high)
    q = p[mid] - 0.5
    r = q * q
    num = ((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A2[0]) * r + _A2[1]
    den = ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B2) * r + 1.0
    out[mid] = q * num / den
    for mask, sign in ((low, 1.0), (high, -1.0)):
        tail = p[mask] if sign > 0 else 1.0 - p[mask]
        s = np.sqrt(-2.0 * np.log(tail))
        num = ((((_C[0] * s + _C[1]) * s + _C[2]) * s + _C[3]) * s + _C2[0]) * s + _C2[1]
        den = (((_D[0] * s + _D[1]) * s + _D[2]) * s + _D[3]) * s + 1.0
        out[mask] = sign * num / den
    return out


@dataclass(frozen=True)
class ScoreMap:
    """Piecewise-linear map from raw values to normal scores through reference quantile knots."""

    knots: FloatArray
    scores: FloatArray

    def transform(self, values: FloatArray) -> FloatArray:
        """Normal scores of `values`; values beyond the reference range get the end scores."""
        return np.interp(values, self.knots, self.scores)

    @property
    def nbytes(self) -> int:
        return int(self.knots.nbytes + self.scores.nbytes)


def fit_score_map(values: FloatArray, *, n_knots: int = 64) -> ScoreMap:
    """Fit knots at `n_knots` mid-quantiles of finite `values` (at least two values).

    Equal knots (atoms of a discrete sensor) merge into one knot whose score is the normal score of
    the middle of the probability range they cover, i.e. a mid-rank score for ties.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    probs = (np.arange(n_knots, dtype=np.float64) + 0.5) / n_knots
    knots = np.quantile(values, probs)
    uniq, inverse = np.unique(knots, return_inverse=True)
    mid = np.bincount(inverse, weights=probs) / np.bincount(inverse)
    # Keep extreme scores inside what n reference rows can support.
    mid = np.clip(mid, 0.5 / n, 1.0 - 0.5 / n)
    return ScoreMap(knots=uniq.astype(np.float64), scores=norm_ppf(mid))


def max_atom_probability(values: FloatArray) -> float:
    """Largest share of a single repeated value, smoothed (count + 1) / (n + 1); 1/(n+1) if all differ."""
    _, counts = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    return float((counts.max() + 1) / (values.size + 1))


_MAX_CELLS = 4096  # cells per feature at most in ScoreTable (one knot per cell on the bench's sensors)
_TOTAL_CELLS = 32_768  # cells of all features at most (64 kB of int16): heavy tails cost steps, not memory


@dataclass(frozen=True)
class ScoreTable:
    """Score maps of d features evaluated by table lookup: a fixed dozen numpy calls per batch.

    Feature j's knot range is cut into G_j equal cells and mapped onto its own stretch
    [base_j, base_j + G_j] of one cell axis t (one multiply-add and a clip for all features). A
    value's cell gives how many knots lie in lower cells; at most `steps` comparisons with the next
    knots' t give how many are at or below it, that is its segment (knots' t come from the same
    floating-point steps, which are monotone, so the count is exact but for ties in t, where the
    map is continuous). The score is then one multiply-add from per-segment tables, flat beyond
    the end knots like `ScoreMap.transform`. Scores are stored standardised, (score - center) /
    spread. Cells are sized so that most hold one knot: `steps` is 1 on smooth sensors.
    """

    scale: FloatArray  # cells per unit of x, per feature
    shift: FloatArray  # base_j - knot_0 * scale
    low: FloatArray  # base_j
    high: FloatArray  # base_j + G_j
    first: npt.NDArray[np.signedinteger[Any]]  # per cell: the segment of a value at the cell's start
    t_start: FloatArray  # per segment: t where it starts; then +inf, where the next feature's begin
    y_start: FloatArray  # per segment: standardised score there
    slope: FloatArray  # per segment: score per unit of t (0 beyond the end knots)
    steps: int

    @classmethod
    def pack(cls, maps: tuple[ScoreMap, ...], center: FloatArray, spread: FloatArray) -> ScoreTable:
        if not maps:
            none = np.zeros(0)
            return cls(none, none, none, none, *_empty_segments(), 0)
        lo = np.array([m.knots[0] for m in maps])
        hi = np.array([m.knots[-1] for m in maps])
        span = np.where(hi > lo, hi - lo, 1.0)
        cells = np.array([_cell_count(m.knots, float(w)) for m, w in zip(maps, span, strict=True)])
        if cells.sum() > _TOTAL_CELLS:
            cells = np.maximum(1, cells * _TOTAL_CELLS // cells.sum())
        base = np.concatenate([[0], np.cumsum(cells + 1)[:-1]]).astype(np.float64)
        scale = cells / span
        table = cls(scale, base - lo * scale, base, base + cells, *_empty_segments(), 0)
        first, t_start, y_start, slope, steps = [], [], [], [], 0
        seg_base = 0
        for j, m in enumerate(maps):
            tk = table._axis(m.knots, j)
            ys = (m.scores - center[j]) / spread[j]
            cell = tk.astype(np.intp)
            own = np.arange(int(base[j]), int(base[j] + cells[j]) + 1)
            first.append(seg_base + np.searchsorted(cell, own, side="left"))
            steps = max(steps, int(np.bincount(cell - int(base[j])).max()))
            # segments 0..m and a sentinel, so that segment c ends where segment c + 1 starts
            t_start.append(np.concatenate([tk[:1], tk, [np.inf]]))
            y_start.append(np.concatenate([ys[:1], ys, [0.0]]))
            width = np.diff(tk)
            inner = np.divide(np.diff(ys), width, out=np.zeros_like(width), where=width > 0)
            slope.append(np.concatenate([[0.0], inner, [0.0, 0.0]]))
            seg_base += tk.size + 2
        return cls(
            table.scale,
            table.shift,
            table.low,
            table.high,
            np.concatenate(first).astype(np.int16 if seg_base < 2**15 else np.int32),
            np.concatenate(t_start),
            np.concatenate(y_start),
            np.concatenate(slope),
            steps,
        )

    def _axis(self, x: FloatArray, j: int | slice = slice(None)) -> FloatArray:
        """Position on the cell axis of values `x` of feature(s) j (the same steps for knots and rows)."""
        t = x * self.scale[j]
        t += self.shift[j]
        np.maximum(t, self.low[j], out=t)
        np.minimum(t, self.high[j], out=t)
        return np.asarray(t)

    def transform(self, x: FloatArray) -> FloatArray:
        """Standardised normal scores (n, d) of rows `x` (n, d), piecewise linear, flat beyond the knots."""
        t = self._axis(x)
        seg = self.first.take(t.astype(np.intp))
        for _ in range(self.steps):
            seg += t >= self.t_start[1:].take(seg)  # at or past the start of the next segment
        y = t - self.t_start.take(seg)
        y *= self.slope.take(seg)
        y += self.y_start.take(seg)
        return y


def _cell_count(knots: FloatArray, span: float) -> int:
    """Cells over the knot range so that the closest two knots fall in different cells (capped)."""
    if knots.size < 2:
        return 1
    gap = float(np.diff(knots).min())
    return int(min(_MAX_CELLS, max(1, np.ceil(span / gap) + 1)))


def _empty_segments() -> tuple[npt.NDArray[np.signedinteger[Any]], FloatArray, FloatArray, FloatArray]:
    z = np.zeros(1)
    return np.zeros(1, dtype=np.int16), z, z, z


class EdgeCounts:
    """Per feature, how many values fell in each bin between fixed edges (e.g. the reference deciles).

    Kept as counts of values at or above each edge, one comparison of a batch against all edges
    of all features in one numpy call; `take()` turns them into counts per bin (a mergeable sketch).
    A value equal to an edge counts in the bin above it.
    """

    def __init__(self, edges: FloatArray) -> None:
        """`edges` (d, k): k increasing edges per feature, k + 1 bins."""
        e = np.asarray(edges, dtype=np.float64).reshape(len(edges), -1)
        self._edges = np.maximum.accumulate(e, axis=1).T.copy()  # (k, d); quantiles are sorted already
        self._above: npt.NDArray[np.int32] = np.zeros(self._edges.shape, dtype=np.int32)
        self._rows = 0

    def add(self, x: FloatArray) -> None:
        """Count finite rows `x` (n, d)."""
        self._above += (x[:, None, :] >= self._edges).sum(axis=0, dtype=np.int32)
        self._rows += x.shape[0]

    def take(self) -> FloatArray:
        """Counts (d, k + 1) per feature and bin since the last call; starts counting afresh."""
        above = self._above.astype(np.float64)
        total = np.full((1, self._above.shape[1]), float(self._rows))
        cum = np.concatenate([total, above, np.zeros_like(total)])  # values >= each lower bin edge
        self._above[:] = 0
        self._rows = 0
        return np.asarray((cum[:-1] - cum[1:]).T)

    @property
    def nbytes(self) -> int:
        return int(self._above.nbytes)
