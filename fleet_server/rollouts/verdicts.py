"""What every rollout gate takes and gives: per-device metric sketches in, a `GateResult` out.

Owns the vocabulary shared by the gates: `Verdict` (``pass | fail | inconclusive |
not_enough_data``), `Worse` (which direction of the canary-minus-control difference is harmful),
`GateResult` (statistic, p-value, e-value, samples and devices per arm, verdict, detail) and the
per-device sketches `RateSketch` and `MeanSketch`. Does not own any test statistic (gates.py: the
install gate and the mixture SPRTs; histogram_gate.py: the G-test) or what happens on a verdict
(machine.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from fleet_server.errors import InvalidRequestError


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    FAIL = "fail"
    NOT_ENOUGH_DATA = "not_enough_data"
    # Enough data, no harm shown, and no evidence of safety either (a mean gate whose
    # non-inferiority is not yet shown): keep looking; the engine promotes only after max_looks.
    INCONCLUSIVE = "inconclusive"


class Worse(StrEnum):
    """Which direction of the canary-minus-control difference is harmful."""

    HIGHER = "higher"  # error rate, latency, drift score
    LOWER = "lower"  # mean confidence, shadow agreement


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    statistic: float
    p_value: float  # always-valid p (mSPRT), per-look p (G-test), observed rate (install gate)
    e_value: float | None
    threshold: float  # alpha at this look (or the max failure rate)
    effect: float  # canary - control (mSPRT), total variation distance (G-test), failure rate
    samples: tuple[int, int]  # (canary, control) predictions / installs
    devices: tuple[int, int]
    detail: str
    # What the console plots per look, canary against control: the arms' means (mSPRT), the
    # shares of the bin whose share moved most (G-test), the failure rate (install gate, canary only).
    canary_value: float | None = None
    control_value: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            **self.__dict__,
            "verdict": self.verdict.value,
            "samples": list(self.samples),
            "devices": list(self.devices),
        }


@dataclass(frozen=True)
class RateSketch:
    """One device's events out of trials over the window (inference errors / inferences)."""

    events: int
    trials: int


@dataclass(frozen=True)
class MeanSketch:
    """One device's count, sum and sum of squares of a metric (confidence, latency p95, drift)."""

    count: int
    total: float
    total_sq: float

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanSketch:
        arr = np.asarray(values, dtype=float)
        return cls(int(arr.size), float(arr.sum()), float((arr * arr).sum()))


def _check_alpha(alpha: float) -> None:
    if not (0 < alpha < 1):
        raise InvalidRequestError(f"alpha must be in (0, 1), got {alpha}")
