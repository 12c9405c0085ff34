"""Benchmark streams: synthetic d=5 Gaussians, river's bundled NASA Shuttle data (offline), and
the issue-17 inputs: wide sensor rows (d=20, d=64), a daily cycle, a constant reference feature.

Every stream comes from numpy.random.SeedSequence([20251127, scenario_index, rep]) so runs are
bit-reproducible. Stream length 4,000, change at t0 = 2,000, reference of 1,000 rows drawn
separately from the pre-change distribution (the daily family: a 3-day reference sampled every
60 s, 4,320 rows, and a stream of the 2.8 days after it, with timestamps).

Issue-17 generators: "wide" rows are 3 shared factors plus noise, one column log-normal and one
integer-valued; the change is +0.5 sd on one column (x[13] of 20, x[41] of 64). "daily" rows have
a daily cycle of 3, 2.2 and 4 sd in three of four columns; the change is +0.5 sd on the fourth.
"const" rows have a column that is 0 throughout the reference; after t0 it is 1 every 10th row.
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
    "wide20_ctrl",
    "wide20_one",
    "wide64_ctrl",
    "wide64_one",
    "daily_ctrl",
    "daily_shift",
    "const_ctrl",
    "const_change",
)
DAY, STEP = 86_400.0, 60.0


@dataclass(frozen=True)
class Stream:
    scenario: str
    reference: np.ndarray
    data: np.ndarray
    change_at: int | None  # None: no-change control
    window: int  # detection window after the change (1,000; 2,000 for gradual)
    t_ref: np.ndarray | None = None  # seconds, the daily family only
    t: np.ndarray | None = None

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


def _wide_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    loadings = np.random.default_rng(d).normal(size=(3, d)) * 0.5
    x = rng.normal(size=(n, 3)) @ loadings + rng.normal(size=(n, d))
    x[:, 1] = np.exp(x[:, 1])
    x[:, 2] = np.round(x[:, 2] * 2)
    return x


def _wide(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d = 20 if name.startswith("wide20") else 64
    ref, x = _wide_rows(rng, N_REF, d), _wide_rows(rng, T, d)
    if name.endswith("_one"):
        j = 13 if d == 20 else 41
        x[T0:, j] += 0.5 * ref[:, j].std()
    return ref, x


def _daily_rows(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    phase = 2 * np.pi * t / DAY
    x = rng.normal(size=(t.size, 4))
    x[:, 0] += 3.0 * np.sin(phase)
    x[:, 1] += 2.0 * np.cos(phase) + np.sin(2 * phase)
    x[:, 2] = 10.0 + 4.0 * np.sin(phase - 1.0) + 0.5 * x[:, 2]
    return x


def _daily(name: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    t_ref = np.arange(0, 3 * DAY, STEP) + rng.uniform(0, STEP, int(3 * DAY / STEP))
    t = 3 * DAY + rng.uniform(0, DAY) + STEP * np.arange(T)
    ref, x = _daily_rows(rng, t_ref), _daily_rows(rng, t)
    if name == "daily_shift":
        x[T0:, 3] += 0.5
    return ref, x, t_ref, t


def _const(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ref, x = rng.normal(size=(N_REF, 5)), rng.normal(size=(T, 5))
    ref[:, 2] = x[:, 2] = 0.0
    if name == "const_change":
        x[T0::10, 2] = 1.0
    return ref, x


def make_stream(scenario: str, rep: int) -> Stream:
    rng = np.random.default_rng(np.random.SeedSequence([20251127, SCENARIOS.index(scenario), rep]))
    change = None if scenario.endswith("ctrl") else T0
    window = 2000 if scenario == "syn_gradual" else 1000
    if scenario.startswith("daily"):
        ref, x, t_ref, t = _daily(scenario, rng)
        return Stream(scenario, ref, x, change, window, t_ref, t)
    if scenario.startswith("wide"):
        ref, x = _wide(scenario, rng)
    elif scenario.startswith("const"):
        ref, x = _const(scenario, rng)
    else:
        ref, x = _synthetic(scenario, rng) if scenario.startswith("syn") else _shuttle(scenario, rng)
    return Stream(scenario, ref, x, change, window)
