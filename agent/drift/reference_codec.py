"""Numpy-safe JSON form of a ReferenceProfile (plain dicts of lists; a format version up front).

Owns only the mapping between the dataclasses and plain data. Does not validate statistics.
Format 2 (written now) adds `inputs.constant` (per feature: its constant reference value or null)
and a nullable top-level `seasonal` baseline. Format 1 documents (written before) still load:
they have no constant-feature channels and no seasonal baseline, and behave as they did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from agent.drift.calibrate import BankConfig
from agent.drift.seasonal import SeasonalBaseline
from agent.drift.sketch import FloatArray, ScoreMap
from agent.drift.stats import ChannelModel, InputModel, OutputModel

if TYPE_CHECKING:
    from agent.drift.reference import ReferenceProfile

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def _arr(value: Any) -> FloatArray:
    return np.asarray(value, dtype=np.float64)


def _channels_to(ch: ChannelModel) -> dict[str, Any]:
    return {
        "names": list(ch.names),
        "kinds": list(ch.kinds),
        "mean": ch.mean.tolist(),
        "std": ch.std.tolist(),
        "n_ref": ch.n_ref,
    }


def _channels_from(raw: dict[str, Any]) -> ChannelModel:
    return ChannelModel(
        tuple(raw["names"]), tuple(raw["kinds"]), _arr(raw["mean"]), _arr(raw["std"]), int(raw["n_ref"])
    )


def _map_to(m: ScoreMap) -> list[list[float]]:
    return [m.knots.tolist(), m.scores.tolist()]


def _map_from(raw: list[list[float]]) -> ScoreMap:
    return ScoreMap(_arr(raw[0]), _arr(raw[1]))


def _constant_from(raw: list[float | None] | None, d: int) -> FloatArray:
    if raw is None:
        return np.full(d, np.nan)
    if len(raw) != d:
        raise ValueError(f"malformed drift reference profile: {len(raw)} constant flags for {d} features")
    return np.array([np.nan if v is None else float(v) for v in raw])


def _seasonal_from(raw: dict[str, Any] | None) -> SeasonalBaseline | None:
    if raw is None:
        return None
    mean, std = np.atleast_2d(_arr(raw["mean"])), np.atleast_2d(_arr(raw["std"]))
    if mean.shape != std.shape or not float(raw["period"]) > 0 or not (std > 0).all():
        raise ValueError("malformed drift reference profile: bad seasonal baseline")
    return SeasonalBaseline(float(raw["period"]), mean, std)


def profile_to_dict(p: ReferenceProfile) -> dict[str, Any]:
    cal = p.calibration
    return {
        "format_version": FORMAT_VERSION,
        "input_names": list(p.input_names),
        "feature_names": list(p.feature_names),
        "n_rows": p.n_rows,
        "inputs": {
            "maps": [_map_to(m) for m in p.inputs.maps],
            "score_mean": p.inputs.score_mean.tolist(),
            "score_std": p.inputs.score_std.tolist(),
            "precision": p.inputs.precision.tolist(),
            "max_atom": p.inputs.max_atom.tolist(),
            "channels": _channels_to(p.inputs.channels),
            "constant": [None if np.isnan(v) else float(v) for v in p.inputs.constant.tolist()],
        },
        "deciles": p.deciles.tolist(),
        "raw_mean": p.raw_mean.tolist(),
        "raw_std": p.raw_std.tolist(),
        "calibration": {
            "budget_per_10k": cal.budget_per_10k,
            "block": cal.bank.block,
            "windows": list(cal.bank.windows),
            "input": cal.input_thresholds,
            "output": cal.output_thresholds,
            "error": cal.error_thresholds,
            "stuck_runs": list(cal.stuck_runs),
        },
        "projection": None
        if p.projection is None
        else {"center": p.projection.center.tolist(), "axes": p.projection.axes.tolist()},
        "outputs": None
        if p.outputs is None
        else {
            "n_classes": p.outputs.n_classes,
            "confidence": _map_to(p.outputs.confidence),
            "channels": _channels_to(p.outputs.channels),
        },
        "class_freq": None if p.class_freq is None else p.class_freq.tolist(),
        "errors": None if p.errors is None else _channels_to(p.errors),
        "meta": p.meta,
        "seasonal": None
        if p.seasonal is None
        else {
            "period": p.seasonal.period,
            "mean": p.seasonal.mean.tolist(),
            "std": p.seasonal.std.tolist(),
        },
    }


def profile_from_dict(raw: dict[str, Any]) -> ReferenceProfile:
    """Raises ValueError for an unknown format version or a malformed document."""
    from agent.drift.reference import Calibration, Projection, ReferenceProfile

    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"unsupported drift reference format version {version!r} "
            f"(this agent reads {', '.join(map(str, READABLE_VERSIONS))}): rebuild the reference "
            "with this release's compiler or update the agent"
        )
    try:
        inp, cal = raw["inputs"], raw["calibration"]
        inputs = InputModel(
            tuple(_map_from(m) for m in inp["maps"]),
            _arr(inp["score_mean"]),
            _arr(inp["score_std"]),
            np.atleast_2d(_arr(inp["precision"])),
            _arr(inp["max_atom"]),
            _channels_from(inp["channels"]),
            _constant_from(inp.get("constant") if version >= 2 else None, len(inp["maps"])),
        )
        calibration = Calibration(
            float(cal["budget_per_10k"]),
            BankConfig(int(cal["block"]), tuple(int(w) for w in cal["windows"])),
            {k: float(v) for k, v in cal["input"].items()},
            {k: float(v) for k, v in cal["output"].items()},
            {k: float(v) for k, v in cal["error"].items()},
            tuple(int(r) for r in cal["stuck_runs"]),
        )
        proj, out = raw["projection"], raw["outputs"]
        return ReferenceProfile(
            input_names=tuple(raw["input_names"]),
            feature_names=tuple(raw["feature_names"]),
            n_rows=int(raw["n_rows"]),
            inputs=inputs,
            deciles=np.atleast_2d(_arr(raw["deciles"])),
            raw_mean=_arr(raw["raw_mean"]),
            raw_std=_arr(raw["raw_std"]),
            calibration=calibration,
            projection=None
            if proj is None
            else Projection(_arr(proj["center"]), np.atleast_2d(_arr(proj["axes"]))),
            outputs=None
            if out is None
            else OutputModel(
                int(out["n_classes"]), _map_from(out["confidence"]), _channels_from(out["channels"])
            ),
            class_freq=None if raw["class_freq"] is None else _arr(raw["class_freq"]),
            errors=None if raw["errors"] is None else _channels_from(raw["errors"]),
            meta={str(k): str(v) for k, v in raw.get("meta", {}).items()},
            seasonal=_seasonal_from(raw.get("seasonal") if version >= 2 else None),
        )
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"malformed drift reference profile: {err}") from err
