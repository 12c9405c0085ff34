"""Reference profile: what "normal" looks like for one model, built once from calibration data.

Owns `build_reference()` (the function the compiler calls with its calibration/validation data),
the `ReferenceProfile` it returns, and its byte form (`to_bytes`/`from_bytes`, numpy-safe JSON with a
format version) that ships inside a model bundle. The profile holds:

* per monitored feature: 64-knot quantile sketch -> normal scores, score moments, raw moments and
  deciles (for the mergeable fleet sketches), the largest atom (for stuck detection);
* the correlation precision of the normal scores (joint/Mahalanobis channel);
* every input feature gets its own channels up to `max_features` (64) columns, named after the
  feature (`x[17]` when the model has no names), so evidence says which input moved; features
  constant in the reference get a channel that sees any other value;
* only wider inputs (images, embeddings) are watched through a low-dimensional view: the top
  `pca_dims` principal axes, each named after the inputs that load on it most, plus the
  reconstruction residual norm;
* optionally a seasonal baseline (seasonal.py): the monitor then watches residuals from the
  reference's per-phase mean, for inputs with a known cycle such as time of day;
* output class frequencies and confidence sketch; the reference error rate when labels exist;
* thresholds calibrated to `budget_per_10k` (calibrate.py): the expected number of false drift
  episodes per 10,000 monitored samples, the one knob users set (`DEFAULT_BUDGET_PER_10K`).

Numpy only. Does not read files or model bundles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agent.drift.calibrate import (
    BankConfig,
    CalibrationPlan,
    calibrate_bank,
    constant_thresholds,
    group_count,
    stuck_runs,
)
from agent.drift.reference_codec import profile_from_dict, profile_to_dict
from agent.drift.seasonal import SeasonalBaseline, Seasonality, fit_seasonal
from agent.drift.sketch import FloatArray
from agent.drift.stats import (
    ChannelModel,
    InputModel,
    OutputModel,
    covariance,
    error_channels,
    fit_input_model,
    fit_output_model,
    quadratic_form,
    refit_moments,
)

SEASONAL_MARGIN = 0.1
DEFAULT_BUDGET_PER_10K = CalibrationPlan().budget_per_10k
"""Default false-alarm budget: expected false drift episodes per 10,000 monitored samples."""


@dataclass(frozen=True)
class Projection:
    """Centre and principal axes (d_in, k) of wide inputs; monitored = [x_c @ axes, |residual|]."""

    center: FloatArray
    axes: FloatArray

    def apply(self, x: FloatArray) -> FloatArray:
        xc = x - self.center
        proj = xc @ self.axes
        resid = np.linalg.norm(xc - proj @ self.axes.T, axis=1)
        return np.concatenate([proj, resid[:, None]], axis=1)


@dataclass(frozen=True)
class Calibration:
    budget_per_10k: float
    bank: BankConfig
    input_thresholds: dict[str, float]
    output_thresholds: dict[str, float]
    error_thresholds: dict[str, float]
    stuck_runs: tuple[int, ...]


@dataclass(frozen=True)
class ReferenceProfile:
    input_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    n_rows: int
    inputs: InputModel
    deciles: FloatArray
    raw_mean: FloatArray
    raw_std: FloatArray
    calibration: Calibration
    projection: Projection | None = None
    outputs: OutputModel | None = None
    class_freq: FloatArray | None = None
    errors: ChannelModel | None = None
    meta: dict[str, str] = field(default_factory=dict)
    seasonal: SeasonalBaseline | None = None

    @property
    def budget_per_10k(self) -> float:
        """The false-alarm budget the thresholds were calibrated to (false episodes per 10k samples)."""
        return self.calibration.budget_per_10k

    def monitored(self, x: FloatArray, t: FloatArray | None = None) -> FloatArray:
        """Raw input rows (n, d_in) (and their times in seconds when seasonal) -> monitored rows (n, d)."""
        if self.seasonal is not None:
            if t is None:
                raise ValueError("this reference is seasonal: pass the rows' timestamps")
            x = self.seasonal.apply(x, t)
        return self.project(x)

    def project(self, x: FloatArray) -> FloatArray:
        """Deseasonalised rows (n, d_in) -> monitored rows (n, d): the PCA view of wide inputs."""
        return x if self.projection is None else self.projection.apply(x)

    def to_bytes(self) -> bytes:
        return json.dumps(profile_to_dict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceProfile:
        """Raises ValueError on bytes that are not a profile of a known format version."""
        try:
            raw: dict[str, Any] = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a drift reference profile: {err}") from err
        profile = profile_from_dict(raw)
        if not isinstance(profile, cls):
            raise TypeError("profile codec returned the wrong type")
        return profile


def build_reference(
    inputs: FloatArray,
    *,
    feature_names: tuple[str, ...] | None = None,
    outputs: FloatArray | None = None,
    errors: FloatArray | None = None,
    plan: CalibrationPlan | None = None,
    budget_per_10k: float | None = None,
    seasonality: Seasonality | None = None,
    timestamps: FloatArray | None = None,
    seed: int = 0,
    max_features: int = 64,
    pca_dims: int = 8,
    meta: dict[str, str] | None = None,
) -> ReferenceProfile:
    """Build and calibrate a reference profile.

    Args:
        inputs: (n, d_in) calibration inputs; rows with NaN/inf are dropped. n >= 50 (>= 100 when wide).
        feature_names: one name per input column (default x[0], x[1], ...).
        outputs: optional (n_out, K) class probabilities of the model on calibration data.
        errors: optional 0/1 per labelled calibration sample (1 = wrong prediction).
        plan: budget and simulation effort (default: `DEFAULT_BUDGET_PER_10K` false episodes per 10k).
        budget_per_10k: the false-alarm budget (overrides the plan's): expected false drift episodes
            per 10,000 monitored samples. At one sample a second, 0.5 is about one a week.
        seasonality: model a known period (e.g. `Seasonality(86_400, 24)`: hourly bins of a day);
            needs `timestamps`, and the monitor then needs a timestamp per row too.
        timestamps: (n,) seconds at which each input row was taken (seasonal references only).
        seed: seed of the bootstrap, so a bundle build is reproducible.
        max_features: inputs up to this width get per-feature channels; wider ones are monitored
            through a PCA view of `pca_dims` axes + residual.
        pca_dims: number of principal axes kept for wide inputs.
        meta: free-form strings stored with the profile (model name, version, ...).

    Returns:
        The calibrated profile.

    Raises:
        ValueError: too few finite rows, arrays of the wrong shape, a budget that is not a positive
            number, or a seasonal reference that does not cover its period.
    """
    plan = plan or CalibrationPlan()
    if budget_per_10k is not None:
        plan = replace(plan, budget_per_10k=float(budget_per_10k))
    if not (plan.budget_per_10k > 0 and np.isfinite(plan.budget_per_10k)):
        raise ValueError(f"budget_per_10k must be a positive number, got {plan.budget_per_10k}")
    raw = np.asarray(inputs, dtype=np.float64)
    keep = _finite_mask(raw)
    x = raw[keep]
    names = feature_names or tuple(f"x[{i}]" for i in range(x.shape[1]))
    if len(names) != x.shape[1]:
        raise ValueError(f"{len(names)} feature names for {x.shape[1]} columns")
    seasonal = None
    if seasonality is not None:
        if timestamps is None:
            raise ValueError("a seasonal reference needs the timestamps of its rows")
        t = np.asarray(timestamps, dtype=np.float64).ravel()
        if t.shape[0] != raw.shape[0]:
            raise ValueError(f"{t.shape[0]} timestamps for {raw.shape[0]} rows")
        seasonal = fit_seasonal(x, t[keep], seasonality)
        x = seasonal.apply(x, t[keep])
        # The bootstrap draws rows without their phase, so it cannot see the error of the per-bin
        # baseline, which a window of consecutive rows does see: calibrate with 10x more margin.
        plan = replace(plan, safety=plan.safety * SEASONAL_MARGIN)
    rng = np.random.default_rng(seed)
    projection, mx, mnames = None, x, tuple(names)
    if x.shape[1] > max_features:
        # Axes from one half, sketches from the other: in-sample PCA overstates the variance of the
        # kept axes and understates the residual, which new data would read as drift.
        half = rng.permutation(x.shape[0])
        projection = _projection(x[half[: x.shape[0] // 2]], pca_dims)
        mx = projection.apply(x[half[x.shape[0] // 2 :]])
        mnames = (*_axis_names(projection, names), "residual(all inputs)")
    inputs_model = fit_input_model(mx, mnames)
    out_model = fit_output_model(_probs(outputs)) if outputs is not None else None
    err = np.asarray(errors, dtype=np.float64).ravel() if errors is not None else None
    calibration = _calibrate(
        mx, names=mnames, outputs=outputs, errors=err, model=inputs_model, plan=plan, rng=rng
    )
    return ReferenceProfile(
        input_names=tuple(names),
        feature_names=tuple(mnames),
        n_rows=int(mx.shape[0]),
        inputs=inputs_model,
        deciles=np.quantile(mx, np.linspace(0.1, 0.9, 9), axis=0).T.copy(),
        raw_mean=mx.mean(axis=0),
        raw_std=mx.std(axis=0),
        calibration=calibration,
        projection=projection,
        outputs=out_model,
        class_freq=out_model.channels.mean[:-1].copy() if out_model else None,
        errors=error_channels(err) if err is not None and err.size else None,
        meta=dict(meta or {}),
        seasonal=seasonal,
    )


def _axis_names(projection: Projection, names: tuple[str, ...]) -> list[str]:
    """Name each principal axis after the (up to 3) inputs with the largest loadings on it."""
    out = []
    for i in range(projection.axes.shape[1]):
        top = np.argsort(-np.abs(projection.axes[:, i]))[:3]
        out.append(f"axis{i}({','.join(names[j] for j in top)})")
    return out


def _finite_mask(x: FloatArray) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"inputs must be 2-D (rows, features), got shape {x.shape}")
    keep = np.isfinite(x).all(axis=1)
    if int(keep.sum()) < 50:
        raise ValueError(f"need at least 50 finite reference rows, got {int(keep.sum())}")
    return np.asarray(keep)


def _finite_rows(x: FloatArray) -> FloatArray:
    if x.ndim != 2:
        raise ValueError(f"inputs must be 2-D (rows, features), got shape {x.shape}")
    x = x[np.isfinite(x).all(axis=1)]
    if x.shape[0] < 50:
        raise ValueError(f"need at least 50 finite reference rows, got {x.shape[0]}")
    return x


def _probs(outputs: FloatArray) -> FloatArray:
    p = np.asarray(outputs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"outputs must be (rows, classes >= 2), got shape {p.shape}")
    return _finite_rows(p)


def _projection(x: FloatArray, k: int) -> Projection:
    center = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - center, full_matrices=False)
    return Projection(center=center, axes=vt[:k].T.copy())


def _calibrate(
    mx: FloatArray,
    *,
    names: tuple[str, ...],
    outputs: FloatArray | None,
    errors: FloatArray | None,
    model: InputModel,
    plan: CalibrationPlan,
    rng: np.random.Generator,
) -> Calibration:
    groups = group_count(model.channels.kinds, plan.bank) + 1  # + stuck
    if outputs is not None:
        groups += 2 * len(plan.bank.windows)

    # Channel values of the reference rows, computed once: a replicate draws its "reference" and
    # its stream from them, so the refitted channel moments carry the reference's estimation error
    # without re-running the score maps (what keeps calibration at d=64 within seconds). The joint
    # channel is recomputed with a precision refitted on the resample: with many features the
    # in-sample Mahalanobis distance is markedly smaller than on new rows, and the null must see that.
    values = model.values(mx)
    scores = model.scores(mx)
    n, dv = scores.shape

    def joint(s: FloatArray, precision: FloatArray) -> FloatArray:
        return np.asarray(np.cbrt(np.maximum(quadratic_form(s, precision), 0.0) / max(1, dv)))

    def sim_inputs(r: np.random.Generator, rows: int) -> tuple[FloatArray, ChannelModel]:
        ref_idx, stream_idx = r.integers(0, n, n), r.integers(0, n, rows)
        ref, stream = values[ref_idx], values[stream_idx]
        if dv:
            s = scores[ref_idx]
            corr = covariance(s) + 1e-3 * np.eye(dv)
            precision = np.asarray(
                np.linalg.inv(corr), dtype=np.float64
            )  # SPD thanks to the ridge; pinv (SVD) is 40x slower
            every = joint(scores, precision)  # both draws are reference rows: score each once
            ref[:, -1], stream[:, -1] = every[ref_idx], every[stream_idx]
        return stream, refit_moments(model.channels, ref)

    input_h = calibrate_bank(sim_inputs, plan, rng, groups)
    input_h.update(constant_thresholds(model.channels, plan, groups))
    output_h: dict[str, float] = {}
    if outputs is not None:
        p = _probs(outputs)

        def sim_outputs(r: np.random.Generator, rows: int) -> tuple[FloatArray, ChannelModel]:
            fitted = fit_output_model(p[r.integers(0, p.shape[0], p.shape[0])])
            return fitted.values(p[r.integers(0, p.shape[0], rows)]), fitted.channels

        output_h = calibrate_bank(sim_outputs, plan, rng, groups)
    error_h = _calibrate_errors(errors, plan, rng) if errors is not None and errors.size else {}
    return Calibration(
        plan.budget_per_10k, plan.bank, input_h, output_h, error_h, stuck_runs(model.max_atom, plan, groups)
    )


def _calibrate_errors(
    errors: FloatArray, plan: CalibrationPlan, rng: np.random.Generator
) -> dict[str, float]:
    def sim(r: np.random.Generator, rows: int) -> tuple[FloatArray, ChannelModel]:
        resample = errors[r.integers(0, errors.size, errors.size)]
        p = float(errors.mean())
        return (r.random((rows, 1)) < p).astype(np.float64), error_channels(resample)

    return calibrate_bank(sim, plan, rng, len(plan.bank.windows))
