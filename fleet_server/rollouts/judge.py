"""Canary vs control on live model metrics: device window sums -> sketches -> `gates.py` verdicts.

Pure given its inputs (the engine reads the sums from the database through the `MetricsSource`
port and stores what this returns). Owns which gates run on which fields of a device's summed
windows, the family-wise alpha split (Bonferroni over the enabled gates), the running always-valid
p of each mSPRT gate between looks (`state`), and skipping a gate that cannot apply (no control
cohort, no classifier output). Does not own the statistics (gates.py) or when a look happens
(engine.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from fleet_server.rollouts.gates import (
    GateResult,
    MeanSketch,
    RateSketch,
    Verdict,
    Worse,
    histogram_gtest,
    mean_msprt,
    rate_msprt,
)
from fleet_server.rollouts.schemas import GateConfig


class WindowSums(Protocol):
    """One device's metric windows summed (fleet_server.rollouts.metrics.DeviceWindowSums)."""

    @property
    def device_id(self) -> str: ...
    @property
    def model_sha256(self) -> str: ...
    @property
    def windows(self) -> int: ...
    @property
    def predictions(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def confidence_hist(self) -> tuple[int, ...]: ...
    @property
    def class_counts(self) -> tuple[int, ...]: ...
    @property
    def confidence_sum(self) -> float: ...
    @property
    def confidence_sum_sq(self) -> float: ...
    @property
    def latency_sum_ms(self) -> float: ...
    @property
    def latency_sum_sq_ms(self) -> float: ...
    @property
    def latency_count(self) -> int: ...
    @property
    def drift_score_mean(self) -> float: ...


def _skip(name: str, why: str) -> GateResult:
    return GateResult(name, Verdict.PASS, 0.0, 1.0, None, 0.0, 0.0, (0, 0), (0, 0), f"skipped: {why}")


def no_control() -> GateResult:
    """The canary-vs-control verdict when no matching device is left on the previous model."""
    return _skip("canary_vs_control", "no control cohort: no matching device is left on the previous model")


def _pad(hists: Sequence[Sequence[int]], bins: int) -> list[list[int]]:
    return [list(h) + [0] * (bins - len(h)) for h in hists]


def evaluate(  # noqa: PLR0915
    cfg: GateConfig,
    canary: Sequence[WindowSums],
    control: Sequence[WindowSums],
    *,
    look: int,
    state: Mapping[str, float],
    cohorts: tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[list[GateResult], dict[str, float]]:
    """Every enabled metric gate at look `look` (1-based); returns the results and the new state
    (running always-valid p per mSPRT gate). `cohorts`: how many devices are in the canary and the
    control cohort (reported or not; default: those with sums). `min_devices` is capped at the
    cohorts' sizes so a small fleet is judged on what it has (never below one device per arm)."""
    gates = list(dict.fromkeys(cfg.metrics))
    if not gates:
        return [], dict(state)
    n_canary, n_control = cohorts if cohorts is not None else (len(canary), len(control))
    if not n_control:
        return [no_control()], dict(state)
    alpha = cfg.alpha / len(gates)
    live_canary = [s for s in canary if s.windows > 0]
    live_control = [s for s in control if s.windows > 0]
    min_dev = max(1, min(cfg.min_devices, n_canary, n_control))
    common = {"min_devices": min_dev, "min_samples": cfg.min_samples}
    out: list[GateResult] = []
    new_state = dict(state)
    classifier = any(sum(s.confidence_hist) for s in [*live_canary, *live_control])
    for gate in gates:
        prev = float(state.get(gate, 1.0))
        if gate == "confidence_mean":
            if not classifier:
                out.append(_skip(gate, "no classifier output reported"))
                continue
            a = [
                MeanSketch(sum(s.confidence_hist), s.confidence_sum, s.confidence_sum_sq) for s in live_canary
            ]
            b = [
                MeanSketch(sum(s.confidence_hist), s.confidence_sum, s.confidence_sum_sq)
                for s in live_control
            ]
            r = mean_msprt(
                a,
                b,
                name=gate,
                worse=Worse.LOWER,
                margin=cfg.confidence_margin,
                alpha=alpha,
                prev_p=prev,
                **common,
            )
        elif gate == "error_rate":
            a2 = [RateSketch(s.errors, s.predictions + s.errors) for s in live_canary]
            b2 = [RateSketch(s.errors, s.predictions + s.errors) for s in live_control]
            r = rate_msprt(
                a2,
                b2,
                name=gate,
                worse=Worse.HIGHER,
                margin=cfg.error_margin,
                alpha=alpha,
                prev_p=prev,
                **common,
            )
        elif gate == "latency_mean":
            a = [MeanSketch(s.latency_count, s.latency_sum_ms, s.latency_sum_sq_ms) for s in live_canary]
            b = [MeanSketch(s.latency_count, s.latency_sum_ms, s.latency_sum_sq_ms) for s in live_control]
            n_b = sum(x.count for x in b)
            base = sum(x.total for x in b) / n_b if n_b else 0.0
            r = mean_msprt(
                a,
                b,
                name=gate,
                worse=Worse.HIGHER,
                margin=cfg.latency_margin * base,
                tau=max(base * 0.1, 1e-3),
                alpha=alpha,
                prev_p=prev,
                **common,
            )
        elif gate == "drift_score":
            a = [
                MeanSketch(1, s.drift_score_mean, s.drift_score_mean**2)
                for s in live_canary
                if s.drift_score_mean >= 0
            ]
            b = [
                MeanSketch(1, s.drift_score_mean, s.drift_score_mean**2)
                for s in live_control
                if s.drift_score_mean >= 0
            ]
            if not a and not b:
                out.append(_skip(gate, "no drift score reported"))
                continue
            r = mean_msprt(
                a,
                b,
                name=gate,
                worse=Worse.HIGHER,
                margin=cfg.drift_margin,
                alpha=alpha,
                prev_p=prev,
                min_devices=min_dev,
                min_samples=min_dev,
            )
        else:  # confidence_hist, class_mix
            field = "confidence_hist" if gate == "confidence_hist" else "class_counts"
            ha = [tuple(getattr(s, field)) for s in live_canary]
            hb = [tuple(getattr(s, field)) for s in live_control]
            bins = max((len(h) for h in [*ha, *hb]), default=0)
            if bins < 2 or not classifier:
                out.append(_skip(gate, "no classifier output reported"))
                continue
            ha2, hb2 = [h for h in _pad(ha, bins) if sum(h)], [h for h in _pad(hb, bins) if sum(h)]
            if not ha2 or not hb2:
                r = GateResult(
                    gate,
                    Verdict.NOT_ENOUGH_DATA,
                    0.0,
                    1.0,
                    None,
                    alpha,
                    0.0,
                    (0, 0),
                    (len(ha2), len(hb2)),
                    "not enough data: no histogram in one arm",
                )
            else:
                r = histogram_gtest(
                    ha2,
                    hb2,
                    name=gate,
                    look=look,
                    max_looks=cfg.max_looks,
                    alpha=alpha,
                    min_effect=cfg.hist_min_effect,
                    permutations=cfg.permutations,
                    seed=seed,
                    **common,
                )
        if gate in ("confidence_mean", "error_rate", "latency_mean", "drift_score"):
            new_state[gate] = r.p_value
        out.append(r)
    return out, new_state


def combined(results: Sequence[GateResult]) -> Verdict:
    """FAIL if any gate failed, PASS if every gate passed, NOT_ENOUGH_DATA if any gate lacks data,
    else INCONCLUSIVE (every gate had its data; some showed neither harm nor safety)."""
    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if verdicts <= {Verdict.PASS}:
        return Verdict.PASS
    if Verdict.NOT_ENOUGH_DATA in verdicts:
        return Verdict.NOT_ENOUGH_DATA
    return Verdict.INCONCLUSIVE
