"""Fleet-level drift judgement: population shift vs single-device anomaly, per cohort (pure).

Owns the decision rule over episodes and exposures already loaded from the database:

* **Null.** A device calibrated to `budget_per_10k` false episodes per 10k samples that has
  monitored n samples produces false episodes at rate lambda = budget * n / 10k, spread over
  its K = n_features + 2 channel keys (each feature, "joint", outputs/labels). So the chance that it
  alarms falsely on one given key is p = 1 - exp(-lambda / K).
* **Population shift.** For each key, k devices of the cohort alarm on it; under the null k is
  Poisson-binomial, approximated by Poisson(sum p). A key is shifted when P(K >= k) < alpha / m
  (Bonferroni over the m keys that alarmed) and k >= min_devices. The cohort's shift is the union
  of shifted keys and the devices alarming on them.
* **Device anomaly.** A device with a stuck-sensor or bad-input episode (its feeder sends rows
  of the wrong shape or type), or a strong (severity >= anomaly_severity) single-feature episode
  on a key the fleet does not share, is a device problem: maintain it and keep its data out of
  training. Stuck and bad-input episodes never count toward a shift (three mis-wired devices are
  not a population that moved); weak lone episodes are "within budget".

Does not query (crud.py) or act (policy.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from fleet_server.drift.models import DriftEpisodeRow

_DEVICE_FAULTS = ("stuck", "bad_input")  # episode signatures that are the device's own fault, by priority


@dataclass(frozen=True, order=True)
class CohortKey:
    profile: str
    model_name: str
    model_version: str
    label: str = ""  # value of the grouping label, when grouping by one


@dataclass(frozen=True)
class Exposure:
    samples: int
    budget_per_10k: float
    n_features: int


@dataclass(frozen=True)
class ClassifyConfig:
    alpha: float = 1e-3
    min_devices: int = 3
    anomaly_severity: float = 2.0


@dataclass(frozen=True)
class PopulationShift:
    keys: tuple[str, ...]
    devices: tuple[str, ...]
    p_value: float
    expected_false_devices: float


@dataclass(frozen=True)
class DeviceAnomaly:
    device_id: str
    signature: str
    features: tuple[str, ...]
    episode_ids: tuple[int, ...]
    severity: float


@dataclass
class CohortReport:
    key: CohortKey
    devices: int
    alarming_devices: int
    population_shift: PopulationShift | None
    anomalies: list[DeviceAnomaly]
    classification: dict[int, str] = field(default_factory=dict)  # episode row id -> verdict


def episode_keys(ep: DriftEpisodeRow) -> set[str]:
    if ep.stream != "inputs":
        return {ep.stream}
    return {str(e["feature"]) or str(e["kind"]) for e in ep.evidence}


def poisson_tail(k: int, mu: float) -> float:
    """P(X >= k) for X ~ Poisson(mu)."""
    if k <= 0:
        return 1.0
    term, cdf = math.exp(-mu), 0.0
    for j in range(k):
        cdf += term
        term *= mu / (j + 1)
    return max(0.0, 1.0 - cdf)


def _false_prob(exp: Exposure) -> float:
    lam = exp.budget_per_10k * exp.samples / 10_000
    return 1.0 - math.exp(-lam / max(1, exp.n_features + 2))


def classify_cohort(
    key: CohortKey,
    episodes: list[DriftEpisodeRow],
    exposures: dict[str, Exposure],
    config: ClassifyConfig | None = None,
) -> CohortReport:
    """Classify every episode of one cohort; `exposures` has one entry per reporting device."""
    config = config or ClassifyConfig()
    by_key: dict[str, set[str]] = defaultdict(set)
    for ep in episodes:
        if ep.signature in _DEVICE_FAULTS:  # a sensor or feeder fault is never evidence of a shift
            continue
        for k in episode_keys(ep):
            by_key[k].add(ep.device_id)
    mu = sum(_false_prob(e) for e in exposures.values())
    m = max(1, len(by_key))
    shifted: dict[str, float] = {}
    for k, devs in by_key.items():
        p = poisson_tail(len(devs), mu)
        if len(devs) >= config.min_devices and p < config.alpha / m:
            shifted[k] = p
    shift = None
    if shifted:
        devices = sorted(set().union(*(by_key[k] for k in shifted)))
        shift = PopulationShift(tuple(sorted(shifted)), tuple(devices), min(shifted.values()), mu)
    report = CohortReport(key, len(exposures), len({e.device_id for e in episodes}), shift, [])
    _classify_episodes(report, episodes, set(shifted), config)
    return report


def _classify_episodes(
    report: CohortReport, episodes: list[DriftEpisodeRow], shifted: set[str], config: ClassifyConfig
) -> None:
    anomalous: dict[str, list[DriftEpisodeRow]] = defaultdict(list)
    for ep in episodes:
        assert ep.id is not None
        keys = episode_keys(ep)
        if ep.signature in _DEVICE_FAULTS or (
            ep.signature == "single_feature" and ep.severity >= config.anomaly_severity and not keys & shifted
        ):
            report.classification[ep.id] = "device_anomaly"
            anomalous[ep.device_id].append(ep)
        elif keys & shifted:
            report.classification[ep.id] = "population_shift"
        else:
            report.classification[ep.id] = "within_budget"
    for device_id, eps in sorted(anomalous.items()):
        report.anomalies.append(
            DeviceAnomaly(
                device_id=device_id,
                signature=next(
                    (f for f in _DEVICE_FAULTS if any(e.signature == f for e in eps)), "single_feature"
                ),
                features=tuple(sorted({f for e in eps for f in e.features})),
                episode_ids=tuple(int(e.id or 0) for e in eps),
                severity=max(e.severity for e in eps),
            )
        )


def psi(actual: list[int], expected: list[float]) -> float:
    """Population stability index of bin counts against expected bin shares (empty bins floored at 1e-4)."""
    total = sum(actual)
    if total == 0:
        return 0.0
    out = 0.0
    for count, share in zip(actual, expected, strict=True):
        a, e = max(count / total, 1e-4), max(share, 1e-4)
        out += (a - e) * math.log(a / e)
    return out


@dataclass(frozen=True)
class FeatureComparison:
    """One feature of one device: PSI of its merged sketch vs the reference deciles and vs its cohort."""

    feature: str
    device_samples: int
    psi_vs_reference: float
    psi_vs_cohort: float
    cohort_psi_vs_reference: float


def compare_sketches(device: dict[str, list[int]], cohort: dict[str, list[int]]) -> list[FeatureComparison]:
    """Device-vs-fleet distance from mergeable decile sketches (bins are reference deciles: 10 % each)."""
    out = []
    for feature, bins in sorted(device.items()):
        others = cohort.get(feature, [0] * len(bins))
        total = sum(others)
        shares = [c / total for c in others] if total else [0.1] * len(bins)
        uniform = [1.0 / len(bins)] * len(bins)
        out.append(
            FeatureComparison(feature, sum(bins), psi(bins, uniform), psi(bins, shares), psi(others, uniform))
        )
    return out
