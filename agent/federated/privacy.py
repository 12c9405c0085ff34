"""Client-side DP: clip the update, add Gaussian noise, and keep a per-device epsilon ledger.

Accounting is Rényi DP of the Gaussian mechanism composed over rounds (Mironov 2017), converted
to (epsilon, delta) with eps = min_a RDP(a) + log(1/delta) / (a - 1). The unit of privacy is the
device's whole local dataset (local DP, no trusted server): two datasets can move the clipped
update by up to 2C, so a round with noise std sigma*C costs RDP(a) = a * (2C)^2 / (2 sigma^2 C^2)
= 2a / sigma^2. No subsampling amplification is claimed. The ledger persists the summed RDP per
order so the budget holds across restarts and runs; a round that would exceed it is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from agent.fsutil import atomic_write

ORDERS = (1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0, 256.0)


def round_rdp(noise_multiplier: float) -> list[float]:
    return [2.0 * a / noise_multiplier**2 for a in ORDERS]


def epsilon(rdp: list[float], delta: float) -> float:
    return min(r + math.log(1.0 / delta) / (a - 1.0) for a, r in zip(ORDERS, rdp, strict=True))


def clip_and_noise(
    old: list[np.ndarray],
    new: list[np.ndarray],
    *,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], float]:
    """Returns the privatised model (old + clipped, noised delta) and the pre-clip delta norm."""
    deltas = [n.astype(np.float64) - o for o, n in zip(old, new, strict=True)]
    norm = float(math.sqrt(sum(float(np.sum(d * d)) for d in deltas)))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    out = []
    for o, d in zip(old, deltas, strict=True):
        noisy = d * scale + rng.normal(0.0, noise_multiplier * clip, size=d.shape)
        out.append((o + noisy).astype(o.dtype))
    return out, norm


class PrivacyLedger:
    """Summed RDP of every noised release this device made; persisted atomically as JSON."""

    def __init__(self, path: Path, *, budget_epsilon: float, delta: float) -> None:
        self._path = path
        self.budget_epsilon = budget_epsilon
        self.delta = delta
        self.rdp = [0.0] * len(ORDERS)
        self.rounds = 0
        if path.exists():
            data = json.loads(path.read_text())
            self.rdp = [float(v) for v in data["rdp"]]
            self.rounds = int(data["rounds"])

    def spent(self) -> float:
        return epsilon(self.rdp, self.delta) if self.rounds else 0.0

    def would_exceed(self, noise_multiplier: float) -> bool:
        after = [a + b for a, b in zip(self.rdp, round_rdp(noise_multiplier), strict=True)]
        return epsilon(after, self.delta) > self.budget_epsilon

    def charge(self, noise_multiplier: float) -> float:
        """Record one release; returns the epsilon spent so far (including it)."""
        self.rdp = [a + b for a, b in zip(self.rdp, round_rdp(noise_multiplier), strict=True)]
        self.rounds += 1
        atomic_write(self._path, json.dumps({"rdp": self.rdp, "rounds": self.rounds}).encode())
        return self.spent()
