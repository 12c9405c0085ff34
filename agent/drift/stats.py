"""Drift statistics: channel values and windowed two-sample z statistics (numpy only, sans-IO).

Owns the fitted models that turn rows into *channel values* (one column per channel) and the
block-sum window bank that compares the recent mean of every channel with its reference mean:

* inputs: per-feature location (normal score s), per-feature scale ((s^2 - 1)/sqrt 2) and one
  joint channel (cube root of the Mahalanobis distance of s over d, Wilson-Hilferty), which sees
  correlation changes with unchanged marginals;
* outputs: predicted-class indicators and the normal score of the top-class confidence;
* labels: the 0/1 error indicator (concept drift once late labels arrive).

The z statistic of a window of w rows is (mean - mu) / (sd * sqrt(1/w + 1/n_ref)): a two-sample
test, so the reference's own estimation error is part of the null. Memory is a ring of block sums,
never raw rows. Does not pick thresholds (calibrate.py) or decide episodes (episodes.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.drift.sketch import FloatArray, ScoreMap, fit_score_map, max_atom_probability

INPUT_KINDS = ("location", "scale", "joint")
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
    """Normal-score maps, standardisation and precision of the monitored features."""

    maps: tuple[ScoreMap, ...]
    score_mean: FloatArray
    score_std: FloatArray
    precision: FloatArray
    max_atom: FloatArray
    channels: ChannelModel

    def values(self, x: FloatArray) -> FloatArray:
        """Channel values (n, 2d+1) of finite rows `x` (n, d)."""
        z = np.empty_like(x)
        for j, m in enumerate(self.maps):
            z[:, j] = m.transform(x[:, j])
        s = (z - self.score_mean) / self.score_std
        maha = ((s @ self.precision) * s).sum(axis=1)
        joint = np.cbrt(np.maximum(maha, 0.0) / s.shape[1])
        return np.concatenate([s, (s * s - 1.0) / _SQRT2, joint[:, None]], axis=1)


def fit_input_model(x: FloatArray, names: tuple[str, ...], *, n_knots: int = 64) -> InputModel:
    """Fit the input channels on reference rows `x` (n, d), all finite."""
    d = x.shape[1]
    maps = tuple(fit_score_map(x[:, j], n_knots=n_knots) for j in range(d))
    z = np.column_stack([m.transform(x[:, j]) for j, m in enumerate(maps)])
    mean, std = z.mean(axis=0), z.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)  # a constant feature keeps score 0 and a dead channel
    s = (z - mean) / std
    corr = np.atleast_2d(np.cov(s, rowvar=False))
    precision = np.asarray(np.linalg.pinv(corr + 1e-3 * np.eye(d), hermitian=True), dtype=np.float64)
    atoms = np.array([max_atom_probability(x[:, j]) for j in range(d)])
    model = InputModel(maps, mean, std, precision, atoms, _placeholder(d))
    return _with_channels(model, model.values(x), names)


def _placeholder(d: int) -> ChannelModel:
    zeros = np.zeros(2 * d + 1)
    return ChannelModel((), (), zeros, zeros, 1)


def _with_channels(model: InputModel, values: FloatArray, names: tuple[str, ...]) -> InputModel:
    ch_names = (*(f"location:{n}" for n in names), *(f"scale:{n}" for n in names), "joint")
    kinds = ("location",) * len(names) + ("scale",) * len(names) + ("joint",)
    channels = channel_model(values, ch_names, kinds)
    return InputModel(
        model.maps, model.score_mean, model.score_std, model.precision, model.max_atom, channels
    )


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
