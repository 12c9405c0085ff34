"""Quantile sketches and the normal-score transform (numpy only, sans-IO).

Owns the per-feature map from raw values to standard-normal scores built on reference quantile knots
(tie-aware: repeated knot values collapse to one mid-probability knot, so integer and heavy-tailed
sensors get honest scores) and a vectorised inverse normal CDF. Does not decide what is drift.
"""

from __future__ import annotations

from dataclasses import dataclass

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


_SPACING = 4.0  # feature j owns [4j - 1, 4j + 2] of the packed line


def _packed_line(cols: list[FloatArray]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-column affine maps (lo, span) that send each column into its own slot of one line."""
    lo = np.array([c[0] if c.size else 0.0 for c in cols])
    hi = np.array([c[-1] if c.size else 0.0 for c in cols])
    span = np.where(hi > lo, hi - lo, 1.0)
    return lo, span, _SPACING * np.arange(len(cols), dtype=np.float64)


def _slot(x: FloatArray, lo: FloatArray, span: FloatArray, offset: FloatArray) -> FloatArray:
    """Each column mapped affinely into its own slot [offset - 0.5, offset + 1.5] of the line."""
    u = (x - lo) / span
    np.maximum(u, -0.5, out=u)
    np.minimum(u, 1.5, out=u)
    u += offset
    return u


@dataclass(frozen=True)
class ScoreTable:
    """Score maps of d features packed onto one line for a single `np.interp` per batch.

    Feature j's knots are mapped affinely into [4j, 4j + 1] with flat sentinel knots at 4j - 1 and
    4j + 2, and its values are clipped to [4j - 0.5, 4j + 1.5], so one interpolation over the packed
    knots equals `ScoreMap.transform` per feature (the map is continuous, so rounding in the affine
    step cannot move a score by more than float precision).
    """

    lo: FloatArray
    span: FloatArray
    offset: FloatArray
    knots: FloatArray  # packed, with sentinels
    scores: FloatArray

    @classmethod
    def pack(cls, maps: tuple[ScoreMap, ...]) -> ScoreTable:
        lo, span, offset = _packed_line([m.knots for m in maps])
        knots, scores = [], []
        for j, m in enumerate(maps):
            u = (m.knots - lo[j]) / span[j] + offset[j]
            knots += [[offset[j] - 1.0], u, [offset[j] + 2.0]]
            scores += [m.scores[:1], m.scores, m.scores[-1:]]
        if not maps:
            return cls(lo, span, offset, np.zeros(1), np.zeros(1))
        return cls(lo, span, offset, np.concatenate(knots), np.concatenate(scores))

    def transform(self, x: FloatArray) -> FloatArray:
        """Normal scores (n, d) of rows `x` (n, d): piecewise linear between knots, flat beyond."""
        return np.interp(_slot(x, self.lo, self.span, self.offset), self.knots, self.scores)


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
