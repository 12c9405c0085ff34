"""Benchmark streams: synthetic d=5 Gaussians and river's bundled NASA Shuttle data (offline).

Every stream comes from numpy.random.SeedSequence([20251127, scenario_index, rep]) so runs are
bit-reproducible. Stream length 4,000, change at t0 = 2,000, reference of 1,000 rows drawn
separately from the pre-change distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

T, T0, N_REF = 4000, 2000, 1000
SCENARIOS = (
    "syn_ctrl",
    "syn_mean_small",
    "syn_mean_large",
    "syn_gradual",
    "syn_variance",
    "syn_correlation",
    "shuttle_ctrl",
    "shuttle_prior",
    "shuttle_stuck",
)


@dataclass(frozen=True)
class Stream:
    scenario: str
    reference: np.ndarray
    data: np.ndarray
    change_at: int | None  # None: no-change control
    window: int  # detection window after the change (1,000; 2,000 for gradual)

    @property
    def family(self) -> str:
        return self.scenario.split("_")[0]


def _cov(rho: float) -> np.ndarray:
    cov = np.eye(5)
    cov[0, 1] = cov[1, 0] = rho
    return cov


def _synthetic(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ref = rng.multivariate_normal(np.zeros(5), _cov(0.8), N_REF)
    x = rng.multivariate_normal(np.zeros(5), _cov(0.8), T)
    post = slice(T0, None)
    if name == "syn_mean_small":
        x[post, 0] += 0.25
    elif name == "syn_mean_large":
        x[post, 0] += 1.0
    elif name == "syn_gradual":
        x[post, 0] += np.minimum(np.arange(T - T0) / 1000.0, 1.0)
    elif name == "syn_variance":
        x[post, 0] *= 1.5
    elif name == "syn_correlation":
        x[post] = rng.multivariate_normal(np.zeros(5), _cov(0.2), T - T0)
    return ref, x


@cache
def shuttle() -> tuple[np.ndarray, np.ndarray]:
    from river import datasets

    rows, labels = [], []
    for x, y in datasets.Shuttle():
        rows.append([float(x[f"f{i}"]) for i in range(1, 10)])
        labels.append(int(y))
    return np.asarray(rows), np.asarray(labels)


def _shuttle(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    data, labels = shuttle()
    order = rng.permutation(len(data))
    ref, x = data[order[:N_REF]].copy(), data[order[N_REF : N_REF + T]].copy()
    if name == "shuttle_prior":
        rest = order[N_REF + T :]
        rare, common = rest[labels[rest] == 1], rest[labels[rest] == 0]
        pick_rare = rng.random(T - T0) < 0.15
        x[T0:][pick_rare] = data[rng.choice(rare, int(pick_rare.sum()), replace=False)]
        x[T0:][~pick_rare] = data[rng.choice(common, int((~pick_rare).sum()), replace=False)]
    elif name == "shuttle_stuck":
        x[T0:, 6] = x[T0 - 1, 6]  # sensor f7
    return ref, x


def make_stream(scenario: str, rep: int) -> Stream:
    rng = np.random.default_rng(np.random.SeedSequence([20251127, SCENARIOS.index(scenario), rep]))
    ref, x = _synthetic(scenario, rng) if scenario.startswith("syn") else _shuttle(scenario, rng)
    change = None if scenario.endswith("ctrl") else T0
    return Stream(scenario, ref, x, change, 2000 if scenario == "syn_gradual" else 1000)
