"""Gate statistics on metric sketches, pure: is the canary batch worse than its control cohort?

Owns the install gate and the mixture SPRTs; does not own the result types and sketches
(verdicts.py), the histogram G-test (histogram_gate.py), where sketches come from (agent reports,
the engine) or what happens on a verdict (machine.py). It re-exports the public names of
verdicts.py and histogram_gate.py, so importers are unchanged. Every test returns a `GateResult`:
statistic, p-value (and e-value where there is one), samples and devices per arm, verdict
``pass | fail | inconclusive | not_enough_data`` and a one-line detail for people. ``pass`` is
evidence the canary is no worse (non-inferiority within the margin for the mSPRT gates, a small
observed effect for the G-tests); ``inconclusive`` is enough data but neither harm nor safety shown
yet, so the engine keeps looking (it promotes after `max_looks` such looks, never on the first).

Devices are the unit of replication. Canary and control are *different devices*, whose inputs
differ (sites, cameras, time of day), so predictions of one device are not independent draws: a
test that pooled predictions as i.i.d. would halt good models whenever the canary's devices see
other inputs than the control's. Each test therefore uses the cluster-robust (sandwich) variance
of a ratio estimator over devices, floored at the i.i.d. variance.

- `install_gate`: failed + silent-past-timeout installs over the batch size, against a maximum rate.
- `rate_msprt`, `mean_msprt`: one-sided mixture SPRT (Johari, Koomen, Pekelis, Walsh, "Peeking at
  A/B tests", KDD 2017; normal approximation with a half-normal mixture over harmful effects beyond
  a non-inferiority `margin`). The always-valid p-value is the running minimum of 1/Lambda, so the
  gate may be evaluated after every report window without inflating false halts; the caller keeps
  the previous p (`prev_p`).
- `histogram_gtest` (histogram_gate.py): G-test of homogeneity on binned histograms with a
  permutation reference over devices and alpha spending over a fixed number of looks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleet_server.errors import InvalidRequestError
from fleet_server.rollouts.histogram_gate import (
    _assignments,
    _counts,
    _g_rows,
    _xlogx,
    histogram_gtest,
    spent_alpha,
)
from fleet_server.rollouts.verdicts import GateResult, MeanSketch, RateSketch, Verdict, Worse, _check_alpha

__all__ = [
    "GateResult",
    "MeanSketch",
    "RateSketch",
    "Verdict",
    "Worse",
    "histogram_gtest",
    "install_gate",
    "mean_msprt",
    "msprt_log_e",
    "rate_msprt",
    "spent_alpha",
    # the G-test's private helpers, moved to histogram_gate.py and still importable from here
    "_assignments",
    "_counts",
    "_g_rows",
    "_xlogx",
]


# ------------------------------------------------------------------ install failures


def install_gate(
    *,
    batch_size: int,
    committed: int,
    failed: int,
    silent: int,
    max_failure_rate: float,
    name: str = "install_failures",
) -> GateResult:
    """Failed and silent (past the install timeout) devices both count as failures.

    Fails as soon as the failures exceed the budget for the whole batch (no need to wait for the
    rest); passes only when every device of the batch has settled (committed, failed or silent).
    """
    if batch_size < 1 or min(committed, failed, silent) < 0 or committed + failed + silent > batch_size:
        raise InvalidRequestError("install counts must be non-negative and add up to at most the batch size")
    failures, settled = failed + silent, committed + failed + silent
    rate = failures / settled if settled else 0.0
    budget = max_failure_rate * batch_size
    detail = (
        f"{failures}/{settled} failed ({failed} failed, {silent} silent) of {batch_size}; "
        f"max {max_failure_rate:.1%}"
    )
    if failures > budget:
        verdict = Verdict.FAIL
    elif settled < batch_size:
        verdict = Verdict.NOT_ENOUGH_DATA
    else:
        verdict = Verdict.PASS
    return GateResult(
        name, verdict, rate, rate, None, max_failure_rate, rate, (settled, 0), (settled, 0), detail,
        canary_value=rate,
    )  # fmt: skip


# ------------------------------------------------------------------ mixture SPRT


@dataclass(frozen=True)
class _Arm:
    mean: float
    var: float  # variance of the mean (cluster-robust, floored at i.i.d.)
    n: int
    devices: int


def _ratio(nums: np.ndarray, dens: np.ndarray, iid_var_unit: float) -> _Arm:
    """Ratio estimator sum(nums)/sum(dens) over devices with its sandwich variance."""
    n_total = float(dens.sum())
    m = int((dens > 0).sum())
    mean = float(nums.sum()) / n_total
    resid = nums - mean * dens
    cluster = m / max(m - 1, 1) * float((resid * resid).sum()) / (n_total * n_total)
    return _Arm(mean, max(cluster, iid_var_unit / n_total, 1e-18), int(n_total), m)


def _rate_arm(arm: Sequence[RateSketch]) -> _Arm | None:
    ev = np.array([s.events for s in arm if s.trials > 0], dtype=float)
    tr = np.array([s.trials for s in arm if s.trials > 0], dtype=float)
    if tr.size == 0:
        return None
    n = tr.sum()
    p = min(max(ev.sum() / n, 0.5 / n), 1 - 0.5 / n)  # keeps the i.i.d. floor above zero
    return _ratio(ev, tr, p * (1 - p))


def _mean_arm(arm: Sequence[MeanSketch]) -> _Arm | None:
    live = [s for s in arm if s.count > 0]
    if not live:
        return None
    cnt = np.array([s.count for s in live], dtype=float)
    tot = np.array([s.total for s in live], dtype=float)
    n, mean = cnt.sum(), tot.sum() / cnt.sum()
    within = max((sum(s.total_sq for s in live) - n * mean * mean) / max(n - 1, 1), 0.0)
    return _ratio(tot, cnt, within)


def _log_norm_cdf(z: float) -> float:
    value = 0.5 * math.erfc(-z / math.sqrt(2))
    return math.log(value) if value > 0 else -math.inf


def msprt_log_e(diff: float, var: float, tau: float) -> float:
    """log Lambda of the one-sided mixture SPRT for H0: effect <= 0, with a half-normal(tau)
    mixture over harmful effects, given the estimate `diff` ~ N(effect, var)."""
    t2 = tau * tau
    z = diff * tau / math.sqrt(var * (var + t2))
    return (
        math.log(2)
        + 0.5 * math.log(var / (var + t2))
        + diff * diff * t2 / (2 * var * (var + t2))
        + _log_norm_cdf(z)
    )


def _msprt(
    name: str,
    canary: _Arm | None,
    control: _Arm | None,
    *,
    worse: Worse,
    margin: float,
    tau: float,
    alpha: float,
    min_devices: int,
    min_samples: int,
    prev_p: float,
) -> GateResult:
    _check_alpha(alpha)
    if tau <= 0 or margin < 0 or not (0 < prev_p <= 1):
        raise InvalidRequestError("tau must be > 0, margin >= 0 and prev_p in (0, 1]")
    samples = (canary.n if canary else 0, control.n if control else 0)
    devices = (canary.devices if canary else 0, control.devices if control else 0)
    if canary is None or control is None or min(devices) < min_devices or min(samples) < min_samples:
        detail = (
            f"not enough data: devices {devices} (min {min_devices}), samples {samples} (min {min_samples})"
        )
        return GateResult(
            name, Verdict.NOT_ENOUGH_DATA, 0.0, prev_p, None, alpha, 0.0, samples, devices, detail
        )
    effect = canary.mean - control.mean
    sign = 1.0 if worse is Worse.HIGHER else -1.0
    var = canary.var + control.var
    log_e = msprt_log_e(sign * effect - margin, var, tau)
    p = min(prev_p, math.exp(-log_e) if log_e > -700 else 1.0, 1.0)
    # Not rejecting "harmless" is not evidence of safety: a canary far worse than a noisy control
    # (0.17 vs 0.69 mean confidence, p=0.22 at the first look, found by the demo) must not pass on
    # it. PASS needs non-inferiority, the mirrored always-valid test of H0': harm >= margin.
    log_ok = msprt_log_e(margin - sign * effect, var, tau)
    p_ok = min(math.exp(-log_ok) if log_ok > -700 else 1.0, 1.0)
    verdict = Verdict.FAIL if p <= alpha else Verdict.PASS if p_ok <= alpha else Verdict.INCONCLUSIVE
    detail = (
        f"canary {canary.mean:.4g} vs control {control.mean:.4g} (diff {effect:+.4g}, margin {margin:g}, "
        f"se {math.sqrt(var):.3g}); always-valid p={p:.3g} (harm), {p_ok:.3g} (non-inferiority) "
        f"alpha={alpha:g}"
    )
    z = (sign * effect - margin) / math.sqrt(var)
    return GateResult(
        name, verdict, z, p, math.exp(min(log_e, 700.0)), alpha, effect, samples, devices, detail,
        canary_value=canary.mean, control_value=control.mean,
    )  # fmt: skip


def rate_msprt(
    canary: Sequence[RateSketch],
    control: Sequence[RateSketch],
    *,
    name: str = "error_rate",
    worse: Worse = Worse.HIGHER,
    margin: float = 0.0,
    tau: float = 0.02,
    alpha: float = 0.05,
    min_devices: int = 5,
    min_samples: int = 100,
    prev_p: float = 1.0,
) -> GateResult:
    """Canary vs control on a rate (inference errors, install failures), valid under repeated looks."""
    return _msprt(
        name,
        _rate_arm(canary),
        _rate_arm(control),
        worse=worse,
        margin=margin,
        tau=tau,
        alpha=alpha,
        min_devices=min_devices,
        min_samples=min_samples,
        prev_p=prev_p,
    )


def mean_msprt(
    canary: Sequence[MeanSketch],
    control: Sequence[MeanSketch],
    *,
    name: str = "confidence_mean",
    worse: Worse = Worse.LOWER,
    margin: float = 0.0,
    tau: float = 0.05,
    alpha: float = 0.05,
    min_devices: int = 5,
    min_samples: int = 100,
    prev_p: float = 1.0,
) -> GateResult:
    """Canary vs control on a mean (confidence, latency p95 per device, drift score)."""
    return _msprt(
        name,
        _mean_arm(canary),
        _mean_arm(control),
        worse=worse,
        margin=margin,
        tau=tau,
        alpha=alpha,
        min_devices=min_devices,
        min_samples=min_samples,
        prev_p=prev_p,
    )
