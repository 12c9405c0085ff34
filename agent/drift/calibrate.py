"""Threshold calibration to a false-alarm budget by bootstrap simulation (numpy only, sans-IO).

Owns the one knob users set, `budget_per_10k` (expected false drift episodes per 10,000 samples),
and turns it into a threshold per (channel kind, window) group:

1. Refit the channel model on a bootstrap resample of the reference and run the window bank over a
   stream resampled from the reference. The refit-vs-stream gap reproduces the reference's own
   estimation error, the main source of false alarms for long windows.
2. Take the maximum statistic of every group over fixed segments of the stream and fit a Gumbel law
   to those maxima (method of moments), then read off the level whose exceedance probability per
   segment equals the group's share of the budget (times a safety factor).

Stuck-sensor run lengths are analytic: a run of L equal values has probability <= p_atom^(L-1).
Randomness comes in as a `numpy.random.Generator`. Does not touch files or clocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.drift.sketch import FloatArray
from agent.drift.stats import ChannelModel, group_max, window_z

Simulator = Callable[[np.random.Generator, int], tuple[FloatArray, ChannelModel]]
"""(rng, stream_rows) -> (channel values of a simulated null stream, channel model refitted on a resample)."""

EULER_GAMMA = 0.5772156649015329


@dataclass(frozen=True)
class BankConfig:
    """Shape of the window bank: rows per block and window lengths in blocks.

    A window of w blocks is tested every `stride(w) = max(1, w // 8)` blocks, so every window is
    held as at most 8 sums (of `stride` blocks each): the 32-block window is tested every 4 blocks
    (100 rows) from 8 sums of 4 blocks, which keeps the state of 64 features within 16 kB.
    """

    block: int = 25
    windows: tuple[int, ...] = (2, 8, 32)

    @property
    def warmup_blocks(self) -> int:
        return max(self.windows)

    @staticmethod
    def stride(w: int) -> int:
        return max(1, w // 8)


@dataclass(frozen=True)
class CalibrationPlan:
    """How hard to simulate (defaults: ~0.3 s per profile at d=5, ~0.5 s at d=9 on a shared x86 core).

    `safety` aims the calibration at a fraction of the budget: the Gumbel extrapolation is an
    estimate, and bench/drift measured 0.25-0.44 false episodes per 10k at 0.6 for a 0.5 budget.
    """

    budget_per_10k: float = 0.5
    safety: float = 0.6
    replicates: int = 96
    stream_rows: int = 4000
    segment_blocks: int = 128
    floor: float = 3.0
    bank: BankConfig = field(default_factory=BankConfig)


def window_series(values: FloatArray, channels: ChannelModel, bank: BankConfig) -> dict[str, FloatArray]:
    """Per group "kind@w": max |z| at every block after warm-up (vectorised streaming bank)."""
    nb = values.shape[0] // bank.block
    sums = values[: nb * bank.block].reshape(nb, bank.block, -1).sum(axis=1)
    cs = np.concatenate([np.zeros((1, sums.shape[1])), np.cumsum(sums, axis=0)])
    start = bank.warmup_blocks
    out: dict[str, FloatArray] = {}
    for w in bank.windows:
        step = bank.stride(w)
        first = -(-start // step) * step  # tested after a multiple of `step` blocks only
        ends = np.arange(first, nb + 1, step)
        window = cs[ends] - cs[ends - w]
        for kind, series in group_max(window_z(window, w * bank.block, channels), channels).items():
            out[f"{kind}@{w}"] = series
    return out


def gumbel_level(maxima: FloatArray, exceed_prob: float) -> float:
    """Level a Gumbel law fitted to `maxima` exceeds with probability `exceed_prob`."""
    beta = max(float(np.std(maxima)) * math.sqrt(6.0) / math.pi, 1e-6)
    mu = float(np.mean(maxima)) - EULER_GAMMA * beta
    return mu - beta * math.log(-math.log1p(-exceed_prob))


def calibrate_bank(
    simulate: Simulator, plan: CalibrationPlan, rng: np.random.Generator, groups: int
) -> dict[str, float]:
    """Thresholds per group for one bank; `groups` is the number of groups sharing the budget."""
    maxima: dict[str, list[float]] = {}
    seg = plan.segment_blocks
    for _ in range(plan.replicates):
        values, channels = simulate(rng, plan.stream_rows)
        for key, series in window_series(values, channels, plan.bank).items():
            per_seg = seg // plan.bank.stride(int(key.rpartition("@")[2]))
            usable = series[: series.size // per_seg * per_seg].reshape(-1, per_seg)
            maxima.setdefault(key, []).extend(usable.max(axis=1).tolist())
    seg_rows = seg * plan.bank.block
    exceed = plan.budget_per_10k * plan.safety * seg_rows / 10_000 / groups
    return {key: max(plan.floor, gumbel_level(np.asarray(m), exceed)) for key, m in maxima.items()}


def stuck_runs(max_atom: FloatArray, plan: CalibrationPlan, groups: int) -> tuple[int, ...]:
    """Run length per feature at which a repeated value is a stuck sensor (0 = never: constant feature)."""
    per_sample = plan.budget_per_10k * plan.safety / 10_000 / groups / max(1, max_atom.size)
    runs = []
    for p in max_atom.tolist():
        if p >= 0.999:
            runs.append(0)
            continue
        runs.append(1 + math.ceil(math.log(per_sample) / math.log(p)))
    return tuple(runs)


def constant_thresholds(channels: ChannelModel, plan: CalibrationPlan, groups: int) -> dict[str, float]:
    """Exact thresholds of the "constant" group: binomial tails of other values at the assumed rate.

    A window is tested every `stride` blocks, so a group's share of the budget is split over
    10,000 / (block * stride) tests per 10k samples and over the constant features (union bound).
    """
    idx = channels.kind_index().get("constant")
    if idx is None or idx.size == 0:
        return {}
    p0, sd = float(channels.mean[idx[0]]), float(channels.std[idx[0]])
    per_block = plan.budget_per_10k * plan.safety * plan.bank.block / 10_000 / groups / idx.size
    out = {}
    for w in plan.bank.windows:
        rows = w * plan.bank.block
        k = _binomial_quantile(rows, p0, per_block * plan.bank.stride(w))
        se = sd * math.sqrt(1.0 / rows + 1.0 / channels.n_ref)
        out[f"constant@{w}"] = ((k - 0.5) / rows - p0) / se
    return out


def _binomial_quantile(n: int, p: float, tail: float) -> int:
    """Smallest k with P(Binomial(n, p) >= k) <= tail."""
    log_pmf = [
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
        for k in range(n + 1)
    ]
    survival = 0.0
    for k in range(n, -1, -1):
        survival += math.exp(log_pmf[k])
        if survival > tail:
            return k + 1
    return 0


def group_count(kinds: tuple[str, ...], bank: BankConfig) -> int:
    return len(dict.fromkeys(kinds)) * len(bank.windows)
