"""Bucketing before a robust rule (Karimireddy, He, Jaggi, ICLR 2022, arXiv 2006.09365).

Devices are shuffled into buckets of `s` and each bucket is replaced by its weighted mean; the
robust rule (Krum, median, trimmed mean, centered clipping) then runs on the bucket means. Mixing
makes honest non-IID updates look alike, so distance-based rules stop singling out the honest
devices whose data differs most, while an attacker's update is diluted inside its bucket. Pure
numpy; the permutation comes from the caller's generator.
"""

from __future__ import annotations

import numpy as np


def buckets(
    updates: np.ndarray, weights: np.ndarray, s: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Bucket means (rows) and bucket weights (sum of members' weights)."""
    n = len(updates)
    if s <= 1 or n == 0:
        return updates, weights
    order = rng.permutation(n)
    means, totals = [], []
    for start in range(0, n, s):
        idx = order[start : start + s]
        wsum = float(weights[idx].sum())
        coef = weights[idx] / wsum if wsum > 0 else np.full(len(idx), 1.0 / len(idx))
        means.append(coef @ updates[idx])
        totals.append(wsum)
    return np.stack(means), np.array(totals)
