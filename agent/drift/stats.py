"""Drift statistics: channel values and windowed two-sample z statistics (numpy only, sans-IO).

Owns the fitted models that turn rows into *channel values* (one column per channel) and the
block-sum window bank that compares the recent mean of every channel with its reference mean:

* inputs: per-feature location (normal score s), per-feature scale ((s^2 - 1)/sqrt 2), for
  features constant in the reference the indicator of any other value, and one joint channel
  (cube root of the Mahalanobis distance of s over d, Wilson-Hilferty), which sees correlation
  changes with unchanged marginals;
* outputs: predicted-class indicators and the normal score of the top-class confidence;
* labels: the 0/1 error indicator (concept drift once late labels arrive).

The z statistic of a window of w rows is (mean - mu) / (sd * sqrt(1/w + 1/n_ref)): a two-sample
test, so the reference's own estimation error is part of the null. Memory is a ring of block sums,
never raw rows. Does not pick thresholds (calibrate.py) or decide episodes (episodes.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt

from agent.drift.sketch import FloatArray, ScoreMap, ScoreTable, fit_score_map, max_atom_probability

INPUT_KINDS = ("location", "scale", "constant", "joint")
OUTPUT_KINDS = ("class", "confidence")
ERROR_KINDS = ("error",)
_SQRT2 = float(np.sqrt(2.0))


@dataclass(frozen=True)
class ChannelModel:
    """Channel names/kinds and each channel's reference mean, sd and sample size."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    mean: FloatArray
    std: FloatArray
    n_ref: int

    def kind_index(self) -> dict[str, np.ndarray]:
        kinds = np.asarray(self.kinds)
        return {k: np.flatnonzero(kinds == k) for k in dict.fromkeys(self.kinds)}


@dataclass(frozen=True)
class InputModel:
    """Normal-score maps, standardisation and precision of the monitored features.

    `constant` holds, per feature, the single value it took in the reference (NaN: the feature
    varies). A constant feature has no location/scale channel (its score is always 0) but a
    "constant" channel: the 0/1 indicator of a value other than the reference constant, so any
    later change is seen. Profiles of format 1 have no constant features (all NaN).
    """

    maps: tuple[ScoreMap, ...]
    score_mean: FloatArray
    score_std: FloatArray
    precision: FloatArray  # over the varying features
    max_atom: FloatArray
    channels: ChannelModel
    constant: FloatArray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        d = len(self.maps)
        const = self.constant if self.constant.size == d else np.full(d, np.nan)
        object.__setattr__(self, "constant", const)
        var = np.flatnonzero(np.isnan(const))
        table = ScoreTable.pack(tuple(self.maps[j] for j in var), self.score_mean[var], self.score_std[var])
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_var", var)
        object.__setattr__(self, "_const", np.flatnonzero(~np.isnan(const)))
        object.__setattr__(self, "_const_values", const[~np.isnan(const)].copy())

    @property
    def varying(self) -> npt.NDArray[np.intp]:
        return cast("npt.NDArray[np.intp]", self.__dict__["_var"])

    @property
    def constant_index(self) -> npt.NDArray[np.intp]:
        return cast("npt.NDArray[np.intp]", self.__dict__["_const"])

    def scores(self, x: FloatArray) -> FloatArray:
        """Standardised normal scores (n, d_varying) of finite rows `x` (n, d)."""
        var = self.varying
        table: ScoreTable = self.__dict__["_table"]
        if var.size == 0:
            return np.zeros((x.shape[0], 0))
        return table.transform(x[:, var]) if var.size < len(self.maps) else table.transform(x)

    def values(self, x: FloatArray) -> FloatArray:
        """Channel values (n, channels) of finite rows `x` (n, d): location, scale, constant, joint.

        Written column group by column group into one array, each group one numpy call over all
        features (the monitor's per-block cost is the number of calls, not their size).
        """
        s = self.scores(x)
        n, dv = s.shape
        const = self.constant_index
        out = np.empty((n, 2 * dv + const.size + 1))
        out[:, :dv] = s
        scale = out[:, dv : 2 * dv]
        np.multiply(s, s, out=scale)
        scale -= 1.0
        scale /= _SQRT2
        if const.size:
            np.not_equal(x[:, const], self.__dict__["_const_values"], out=out[:, 2 * dv : -1])
        maha = quadratic_form(s, self.precision)
        np.maximum(maha, 0.0, out=maha)
        maha /= max(1, dv)
        np.cbrt(maha, out=out[:, -1])
        return out


# OpenBLAS runs a product of at most 4 x 65,536 multiply-adds on one thread (its default
# GEMM_MULTITHREAD_THRESHOLD). Larger ones wake every BLAS thread, which on a busy machine costs
# 5-50x the CPU (a 1000 x 64 covariance: 0.2-2.5 s of calibration at d=64 instead of 0.15 s).
_BLAS_ONE_THREAD = 4 * 65_536
_CHUNK = 25  # rows per product at least (one block)


def _chunk_rows(k: int) -> int:
    """Rows per product with a (k, k) matrix that stay on one BLAS thread."""
    return max(_CHUNK, _BLAS_ONE_THREAD // max(1, k * k))


def quadratic_form(s: FloatArray, precision: FloatArray) -> FloatArray:
    """Row-wise s P s^T, in row chunks small enough for single-threaded BLAS."""
    chunk = _chunk_rows(precision.shape[0])
    if s.shape[0] <= chunk:
        sp = s @ precision
        sp *= s
        return np.asarray(sp.sum(axis=1))
    out = np.empty(s.shape[0])
    for i in range(0, s.shape[0], chunk):
        part = s[i : i + chunk]
        out[i : i + chunk] = ((part @ precision) * part).sum(axis=1)
    return out


def covariance(s: FloatArray) -> FloatArray:
    """Sample covariance (k, k) of the columns of `s` (n, k), summed over single-threaded row chunks."""
    n, k = s.shape
    centred = s - s.mean(axis=0)
    out = np.zeros((k, k))
    chunk = _chunk_rows(k)
    for i in range(0, n, chunk):
        part = centred[i : i + chunk]
        out += part.T @ part
    out /= max(1, n - 1)
    return out


def constant_values(x: FloatArray) -> FloatArray:
    """Per column: its value when every reference row has the same one, else NaN."""
    same = (x == x[:1]).all(axis=0)
    return np.where(same, x[0], np.nan)


def fit_input_model(
    x: FloatArray,
    names: tuple[str, ...],
    *,
    n_knots: int = 64,
    constant: FloatArray | None = None,
    atoms: bool = True,
) -> InputModel:
    """Fit the input channels on reference rows `x` (n, d), all finite.

    Args:
        constant: which features count as constant (default: the ones constant in `x`); the
            calibration refits on resamples with the mask of the full reference.
        atoms: compute the largest atom per feature (stuck detection); calibration skips it.
    """
    d = x.shape[1]
    const = constant_values(x) if constant is None else constant
    maps = tuple(fit_score_map(x[:, j], n_knots=n_knots) for j in range(d))
    z = np.column_stack([m.transform(x[:, j]) for j, m in enumerate(maps)]) if d else x
    mean, std = z.mean(axis=0), z.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    var = np.flatnonzero(np.isnan(const))
    s = (z[:, var] - mean[var]) / std[var]
    dv = var.size
    corr = covariance(s)
    precision = np.asarray(np.linalg.pinv(corr + 1e-3 * np.eye(dv), hermitian=True), dtype=np.float64)
    max_atom = np.array([max_atom_probability(x[:, j]) for j in range(d)]) if atoms else np.zeros(d)
    model = InputModel(maps, mean, std, precision, max_atom, _placeholder(0), const)
    return _with_channels(model, model.values(x), names)


def _placeholder(d: int) -> ChannelModel:
    zeros = np.zeros(2 * d + 1)
    return ChannelModel((), (), zeros, zeros, 1)


def constant_rate(n_ref: int) -> float:
    """Assumed rate of other values for a feature constant over n_ref rows (rule of three)."""
    return min(0.5, 3.0 / max(1, n_ref))


def _with_channels(model: InputModel, values: FloatArray, names: tuple[str, ...]) -> InputModel:
    var = [names[j] for j in model.varying]
    const = [names[j] for j in model.constant_index]
    ch_names = (
        *(f"location:{n}" for n in var),
        *(f"scale:{n}" for n in var),
        *(f"constant:{n}" for n in const),
        "joint",
    )
    kinds = ("location",) * len(var) + ("scale",) * len(var) + ("constant",) * len(const) + ("joint",)
    channels = channel_model(values, ch_names, kinds)
    if const:
        # A constant reference says nothing about how often another value is normal: assume the
        # rule-of-three upper rate, so rare values stay quiet and a real change is still seen at once.
        idx = np.arange(2 * len(var), 2 * len(var) + len(const))
        p0 = constant_rate(channels.n_ref)
        mean, std = channels.mean.copy(), channels.std.copy()
        mean[idx], std[idx] = p0, np.sqrt(p0 * (1 - p0))
        channels = ChannelModel(channels.names, channels.kinds, mean, std, channels.n_ref)
    return InputModel(
        model.maps,
        model.score_mean,
        model.score_std,
        model.precision,
        model.max_atom,
        channels,
        model.constant,
    )


def refit_moments(channels: ChannelModel, values: FloatArray) -> ChannelModel:
    """The same channels with mean and sd re-estimated from `values` (constant channels kept)."""
    fresh = channel_model(values, channels.names, channels.kinds)
    idx = channels.kind_index().get("constant")
    if idx is not None and idx.size:
        fresh.mean[idx], fresh.std[idx] = channels.mean[idx], channels.std[idx]
    return fresh


def channel_model(values: FloatArray, names: tuple[str, ...], kinds: tuple[str, ...]) -> ChannelModel:
    std = values.std(axis=0)
    std = np.where(std > 1e-9, std, 0.0)
    return ChannelModel(names, kinds, values.mean(axis=0), std, int(values.shape[0]))


@dataclass(frozen=True)
class OutputModel:
    """Class indicators and a confidence score map fitted on reference model outputs."""

    n_classes: int
    confidence: ScoreMap
    channels: ChannelModel

    def values(self, probs: FloatArray) -> FloatArray:
        """Channel values (n, K+1) of class-probability rows (n, K)."""
        onehot = np.zeros((probs.shape[0], self.n_classes))
        onehot[np.arange(probs.shape[0]), probs.argmax(axis=1)] = 1.0
        conf = self.confidence.transform(probs.max(axis=1))
        return np.concatenate([onehot, conf[:, None]], axis=1)


def fit_output_model(probs: FloatArray, *, n_knots: int = 64) -> OutputModel:
    k = probs.shape[1]
    model = OutputModel(k, fit_score_map(probs.max(axis=1), n_knots=n_knots), _placeholder(0))
    names = (*(f"class:{i}" for i in range(k)), "confidence")
    kinds = ("class",) * k + ("confidence",)
    return OutputModel(k, model.confidence, channel_model(model.values(probs), names, kinds))


def error_channels(errors: FloatArray) -> ChannelModel:
    """Channel model of a 0/1 error stream (1 = the model was wrong)."""
    return channel_model(errors.reshape(-1, 1).astype(np.float64), ("error",), ("error",))


def window_z(sums: FloatArray, rows: float, channels: ChannelModel) -> FloatArray:
    """Two-sample z of window sums (..., c) over `rows` rows against the reference; dead channels 0."""
    se = channels.std * np.sqrt(1.0 / rows + 1.0 / channels.n_ref)
    safe = np.where(se > 0, se, 1.0)
    return np.where(se > 0, (sums / rows - channels.mean) / safe, 0.0)


def group_max(z: FloatArray, channels: ChannelModel) -> dict[str, FloatArray]:
    """Max |z| per channel kind over the last axis."""
    return {k: np.abs(z[..., idx]).max(axis=-1) for k, idx in channels.kind_index().items()}
